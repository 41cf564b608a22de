"""ONNX export: the trained RetinaNet with its anchors, decoding and NMS inside one graph.

The exported graph (`ExportableDetector`) takes
    images       (N, 3, H, W) float32  normalized, zero-padded batch (`prepare_images`)
    image_sizes  (N, 2) int64          (H, W) of each resized image before padding
and returns a padded layout, D = detections_per_img:
    boxes           (N, D, 4) float32  xyxy in input (network) pixels, clipped to the image's size
    scores          (N, D) float32     descending per image
    labels          (N, D) int64       contiguous 0..K-1
    num_detections  (N,) int64         valid rows per image; rows past it are padding (boxes and
                                       scores 0, labels -1)
It computes what `PostProcess` does with the same `BoxCoder`: per level the top-k candidates, the
score threshold, decoding, clipping to `image_sizes`, class-wise NMS and the per-image cap.
`image_sizes` is an input because clipping happens before NMS: without it the graph could only
clip to the padded size, and NMS would see other boxes than the PyTorch path.

Exporter: the dynamo-based `torch.onnx.export` (onnxscript). NMS is the custom op
`retinanet::class_nms`, translated to ONNX `NonMaxSuppression` over (image, class) with the
candidates of every image in one (N, C) layout, so no boolean indexing reaches the graph and
class-wise NMS needs no coordinate offsets. The file carries `metadata_props` (`ModelMetadata`):
categories, preprocessing, postprocess settings and the run's operating point.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from retinanet.config import Config, ConfigError
from retinanet.deploy.fold import fold_constants
from retinanet.fileio import RunFileError
from retinanet.modeling.model import RetinaNet
from retinanet.modeling.postprocess import PostProcess

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
# 18 is the first opset of the dynamo exporter; the last is the newest that onnxruntime 1.31 runs.
MIN_OPSET, MAX_OPSET = 18, 23
DEFAULT_OPSET = 18
METADATA_FORMAT = "retinanet-onnx/1"
_UNSELECTED = -1.0  # score of a (class, candidate) pair that NMS must not see: below every valid score
# Library log lines known to be harmless here, dropped while exporting; every other warning still shows.
KNOWN_HARMLESS = (
    # torch's translation writes an empty list constant (`Constant value_ints=[]`): INTS is its right type.
    ("onnx_ir._convenience", "Attribute type is ambiguous because it is an empty sequence"),
    # NNCF imports torch's C++ extension builder, which looks for CUDA; OpenVINO quantization needs none.
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
)
CHATTY = ("onnx_ir", "onnxscript")  # their graph passes log INFO lines ("Removed 69 unused nodes") for developers


@torch.library.custom_op("retinanet::class_nms", mutates_args=())
def class_nms(boxes_xyxy: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """ONNX NonMaxSuppression: boxes (N, C, 4), scores (N, K, C) -> kept (S, 3) rows of (image, class, candidate).

    NMS runs per (image, class) over the candidates whose score is > score_threshold.
    """
    image, label, cand = (scores > score_threshold).nonzero(as_tuple=True)
    keep = batched_nms(boxes_xyxy[image, cand], scores[image, label, cand], image * scores.shape[1] + label, iou_threshold)
    return torch.stack([image, label, cand], dim=1)[keep]


@class_nms.register_fake
def _class_nms_fake(boxes_xyxy: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    return boxes_xyxy.new_empty((torch.library.get_ctx().new_dynamic_size(), 3), dtype=torch.int64)


def _class_nms_onnx(boxes_xyxy: Any, scores: Any, iou_threshold: float, score_threshold: float) -> Any:
    """`class_nms` as one ONNX NonMaxSuppression (no cap per class: every candidate may be kept)."""
    from onnxscript import opset18 as op

    max_per_class = op.Shape(boxes_xyxy, start=1, end=2)  # (1,) int64: C
    iou = op.Constant(value_float=iou_threshold)
    score = op.Constant(value_float=score_threshold)
    return op.NonMaxSuppression(boxes_xyxy, scores, max_per_class, iou, score, center_point_box=0)


class ExportableDetector(nn.Module):
    """RetinaNet + anchors + `PostProcess`'s steps in traceable, fixed-layout tensor ops (see the module doc)."""

    def __init__(self, model: RetinaNet, postprocess: PostProcess):
        super().__init__()
        self.model = model
        self.box_coder = postprocess.box_coder
        self.score_thresh = float(postprocess.score_thresh)
        self.topk_candidates = int(postprocess.topk_candidates)
        self.nms_thresh = float(postprocess.nms_thresh)
        self.detections_per_img = int(postprocess.detections_per_img)

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        features = m.fpn(m.backbone(images))
        cls_logits, box_deltas = m.head(features)
        anchors, per_level = m.anchor_generator.generate(
            (images.shape[-2], images.shape[-1]), [(f.shape[-2], f.shape[-1]) for f in features], images.device,
            torch.float32,
        )
        n, _, k = cls_logits.shape
        boxes_all, scores_all, labels_all = [], [], []
        start = 0
        for count in per_level:
            logits = cls_logits[:, start : start + count].float()  # (N, L, K)
            deltas = box_deltas[:, start : start + count].float()  # (N, L, 4)
            level_anchors = anchors[start : start + count]  # (L, 4)
            start += count
            scores = torch.sigmoid(logits).reshape(n, -1)  # (N, L*K)
            scores = torch.where(torch.isnan(scores), torch.full_like(scores, -1.0), scores)
            top_scores, top_idx = scores.topk(torch.sym_min(self.topk_candidates, scores.shape[1]), dim=1)  # (N, T)
            anchor_idx = torch.div(top_idx, k, rounding_mode="floor")  # (N, T)
            picked = torch.gather(deltas, 1, anchor_idx[..., None].expand(-1, -1, 4))  # (N, T, 4)
            boxes_all.append(self.box_coder.decode(picked, level_anchors[anchor_idx]))
            scores_all.append(top_scores)
            labels_all.append(top_idx - anchor_idx * k)
        boxes = torch.cat(boxes_all, dim=1)  # (N, C, 4)
        scores = torch.cat(scores_all, dim=1)  # (N, C)
        labels = torch.cat(labels_all, dim=1)  # (N, C)
        upper = image_sizes.to(torch.float32).flip(1).repeat(1, 2)[:, None, :]  # (N, 1, 4): W, H, W, H
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        valid = (scores > self.score_thresh) & torch.isfinite(boxes).all(dim=2)  # (N, C)
        boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))

        classes = torch.arange(k, device=labels.device)[None, :, None]  # (1, K, 1)
        per_class = (labels[:, None, :] == classes) & valid[:, None, :]  # (N, K, C)
        class_scores = torch.where(per_class, scores[:, None, :], torch.full_like(per_class, _UNSELECTED, dtype=scores.dtype))
        kept = class_nms(boxes, class_scores, self.nms_thresh, _UNSELECTED / 2)  # (S, 3)

        c = scores.shape[1]
        flat = kept[:, 0] * c + kept[:, 2]  # (S,)
        keep = torch.zeros(n * c, dtype=scores.dtype, device=scores.device).index_fill(0, flat, 1.0).reshape(n, c)
        ranked = torch.where(keep > 0, scores, torch.full_like(scores, _UNSELECTED))
        top, order = ranked.topk(torch.sym_min(self.detections_per_img, c), dim=1)  # (N, D)
        is_det = top > _UNSELECTED
        out_boxes = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
        out_boxes = torch.where(is_det[..., None], out_boxes, torch.zeros_like(out_boxes))
        out_scores = torch.where(is_det, top, torch.zeros_like(top))
        out_labels = torch.where(is_det, torch.gather(labels, 1, order), torch.full_like(order, -1))
        return out_boxes, out_scores, out_labels, is_det.sum(dim=1)


@dataclass(frozen=True)
class ModelMetadata:
    """What the .onnx file says about itself (`metadata_props`), written and read only here.

    Keys (values are JSON): `retinanet.format`, `retinanet.categories` ([{id, name}] in label order),
    `retinanet.preprocess` ({min_size, max_size, size_divisible, mean, std}), `retinanet.postprocess`
    ({score_thresh, topk_candidates, nms_thresh, detections_per_img, box_coder_weights, scale_clamp}),
    `retinanet.operating_point` (the run's operating_point.json, or null), `retinanet.source`
    ({checkpoint, iteration}), `retinanet.precision` ("f32", or "int8" for a quantized OpenVINO IR),
    `retinanet.calibration` (for int8: {config, split, annotations, images, tool, ignored}, else null)
    and `retinanet.io` (input and output names, the padded layout). Files written before precision
    and calibration existed read as f32 without calibration.
    """

    categories: list[dict[str, Any]]
    preprocess: dict[str, Any]
    postprocess: dict[str, Any]
    operating_point: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    precision: str = "f32"
    calibration: dict[str, Any] | None = None

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        categories: Sequence[Mapping[str, Any]],
        mean: Sequence[float],
        std: Sequence[float],
        operating_point: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> "ModelMetadata":
        p = cfg.model.postprocess
        return cls(
            categories=[{"id": int(c["id"]), "name": str(c["name"])} for c in categories],
            preprocess={
                "min_size": cfg.input.test_min_size,
                "max_size": cfg.input.max_size,
                "size_divisible": cfg.input.size_divisible,
                "mean": list(mean),
                "std": list(std),
            },
            postprocess={
                "score_thresh": p.score_thresh,
                "topk_candidates": p.topk_candidates,
                "nms_thresh": p.nms_thresh,
                "detections_per_img": p.detections_per_img,
                "box_coder_weights": list(cfg.model.box_coder.weights),
                "scale_clamp": cfg.model.box_coder.scale_clamp,
            },
            operating_point=dict(operating_point) if operating_point is not None else None,
            source=dict(source or {}),
        )

    def to_props(self) -> dict[str, str]:
        io = {"inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES), "layout": "padded to detections_per_img; "
              "rows past num_detections are padding", "boxes": "xyxy in input (network) pixels"}
        props = {f"retinanet.{key}": json.dumps(value) for key, value in asdict(self).items()}
        return {"retinanet.format": METADATA_FORMAT, **props, "retinanet.io": json.dumps(io)}

    @classmethod
    def from_props(cls, props: Mapping[str, str], path: Path) -> "ModelMetadata":
        if props.get("retinanet.format") != METADATA_FORMAT:
            raise RunFileError(
                f"{path}: no RetinaNet metadata (key retinanet.format is {props.get('retinanet.format')!r}, expected "
                f"{METADATA_FORMAT!r}); export the model with scripts/export.py --checkpoint CKPT"
            )
        try:
            values = {name: json.loads(props[f"retinanet.{name}"]) for name in
                      ("categories", "preprocess", "postprocess", "operating_point", "source")}
            values.update({name: json.loads(props[f"retinanet.{name}"]) for name in ("precision", "calibration")
                           if f"retinanet.{name}" in props})
            meta = cls(**values)
            _ = [meta.preprocess[key] for key in ("min_size", "max_size", "size_divisible", "mean", "std")]
            _ = [(int(c["id"]), str(c["name"])) for c in meta.categories]
        except (KeyError, TypeError, ValueError) as exc:
            raise RunFileError(
                f"{path}: damaged RetinaNet metadata ({type(exc).__name__}: {exc}); export the model again with "
                "scripts/export.py"
            ) from None
        return meta


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Inside: no KNOWN_HARMLESS line and no INFO line of the CHATTY exporters; their warnings and errors show."""
    filters = [(logging.getLogger(name), _DropMessage(start)) for name, start in KNOWN_HARMLESS]
    levels = [(logging.getLogger(name), logging.getLogger(name).level) for name in CHATTY]
    for logger, drop in filters:
        logger.addFilter(drop)
    for logger, _ in levels:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)
        for logger, level in levels:
            logger.setLevel(level)


def require(module: str) -> Any:
    """Import an optional dependency of the `export` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed; export, onnxruntime and OpenVINO inference need "
                          "`pip install -e .[export]` (requirements.txt pins the tested versions)") from None


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"--opset {opset}: unsupported; the exporter writes opsets {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})"
        )


def export_onnx(
    model: RetinaNet,
    postprocess: PostProcess,
    metadata: ModelMetadata,
    output: Path,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = False,
    batch_size: int = 1,
    fold: bool = True,
) -> Path:
    """Write `output` (one self-contained .onnx file with `metadata`); returns its path.

    `fold` (the default) folds every BatchNorm into its convolution first (`fold.fold_constants`), so
    the file's weights are constants; `fold=False` exports the model as it computes in PyTorch.

    The graph is traced on `batch_size` blank images of the largest padded size the preprocessing
    makes (max_size, rounded up to size_divisible); `dynamic` makes N, H and W free (H and W must
    then be multiples of size_divisible, as `prepare_images` makes them; the trace then uses at
    least 2 images of 256 x 256).
    """
    check_opset(opset)
    onnx = require("onnx")
    require("onnxscript")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
    pre = metadata.preprocess
    divisor = int(pre["size_divisible"])
    side = -(-int(pre["max_size"]) // divisor) * divisor
    if dynamic:  # trace where no size is 1 (P7 at least 2 x 2): a size of 1 would be fixed into the graph
        side, batch_size = max(side, -(-256 // divisor) * divisor), max(batch_size, 2)
    device = next(model.parameters()).device  # the example inputs live with the model (a CUDA model exports)
    images = torch.zeros(batch_size, 3, side, side, device=device)
    image_sizes = torch.full((batch_size, 2), side, dtype=torch.int64, device=device)
    wrapper = ExportableDetector(fold_constants(model.eval()) if fold else model.eval(), postprocess).eval()
    dynamic_shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=1024)
        height = torch.export.Dim("height_blocks", min=1, max=4096 // divisor)
        width = torch.export.Dim("width_blocks", min=1, max=4096 // divisor)
        dynamic_shapes = {"images": {0: batch, 2: divisor * height, 3: divisor * width}, "image_sizes": {0: batch}}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings(), quiet_library_logs():
            # Both inputs share the batch Dim on purpose; the exporter notes it once per name.
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
            program = torch.onnx.export(
                wrapper, (images, image_sizes), dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic_shapes, external_data=False,
                custom_translation_table={torch.ops.retinanet.class_nms.default: _class_nms_onnx}, verbose=False, optimize=False,
            )
        proto = program.model_proto
        for key, value in metadata.to_props().items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(proto, tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output
