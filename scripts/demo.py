"""`make demo` (foundation stage): a small RetinaNet on a synthetic batch through forward, loss and postprocess."""
from __future__ import annotations

import time

import torch

from retinanet import build_criterion, build_model, build_postprocess, load_config
from retinanet.types import Target


def main() -> None:
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            "model.backbone.name=resnet18",
            "model.backbone.weights=none",
            "model.backbone.norm=bn",
            "model.fpn.channels=64",
            "model.head.channels=64",
            "model.head.norm=gn",
            "input.min_size=[256]",
            "input.max_size=256",
        ],
    )
    num_classes = 3
    model = build_model(cfg, num_classes)
    criterion = build_criterion(cfg, num_classes)
    postprocess = build_postprocess(cfg)
    images = torch.rand(2, 3, 256, 256)
    targets = [
        Target(torch.tensor([[20.0, 30, 120, 140], [150, 40, 230, 100]]), torch.tensor([0, 2])),
        Target(torch.tensor([[60.0, 60, 200, 220]]), torch.tensor([1])),
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0 = time.time()
    model.train()
    for step in range(1, 31):
        out = model(images)
        losses = criterion(out, targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        if step in (1, 10, 20, 30):
            print(
                f"step {step:2d}  loss {losses['loss'].item():.4f}  cls {losses['loss_cls'].item():.4f}  "
                f"box {losses['loss_box'].item():.4f}  positives {int(losses['num_pos'])}"
            )
    print(f"cls_logits {tuple(out.cls_logits.shape)}  box_deltas {tuple(out.box_deltas.shape)}  anchors {tuple(out.anchors.shape)}")
    model.eval()
    with torch.no_grad():
        dets = postprocess(model(images), [(256, 256)] * 2)
    for i, d in enumerate(dets):
        top = ", ".join(f"{int(l)}:{s:.2f}" for l, s in zip(d.labels[:3], d.scores[:3].tolist()))
        print(f"image {i}: {len(d.scores)} detections, top label:score {top}  (boxes {tuple(d.boxes_xyxy.shape)})")
    print(f"30 training steps in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
