"""One input path: training, evaluation and Detector give bit-identical network inputs, and
evaluate.py and predict.py read the same pixels and give the same detections, on the real photos
shipped in data/sample and on large photos (those upscaled to 2048x1371 JPEGs, read at reduced size)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from retinanet.cli import evaluate
from retinanet.cli import predict as predict_cli
from retinanet.config import load_config
from retinanet.data.coco import load_image
from retinanet.data.collate import collate
from retinanet.data.decode import decode_for_input, upright_size
from retinanet.data.loaders import build_dataset, build_val_loader
from retinanet.modeling.detector import Detector
from tests.helpers import REPO, TINY_MODEL, make_large_photos, run_train

SAMPLE = REPO / "data" / "sample"
SAMPLE_SETS = [
    f"data.train.images={SAMPLE / 'val'}",  # the val photos through the training pipeline
    f"data.train.annotations={SAMPLE / 'annotations' / 'instances_val.json'}",
    f"data.val.images={SAMPLE / 'val'}",
    f"data.val.annotations={SAMPLE / 'annotations' / 'instances_val.json'}",
    "data.augmentations=[]",
    "input.min_size=[320]",
    "input.max_size=480",
    "input.size_divisible=128",
]


def _photos(ds) -> list[torch.Tensor]:
    """The val photos as a user holds them: float (3, H, W) in [0, 1], read from the files."""
    return [
        torch.from_numpy(load_image(ds.images_dir / ds.coco.imgs[i]["file_name"])).permute(2, 0, 1).float() / 255
        for i in ds.ids
    ]


def test_sample_photos_vary_in_size_and_aspect() -> None:
    ds = build_dataset(load_config(None, SAMPLE_SETS), "val")
    shapes = {tuple(p.shape[1:]) for p in _photos(ds)}
    assert len(shapes) >= 5
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)  # portrait and landscape


@pytest.mark.parametrize("batch_size", [1, 3])
def test_train_eval_and_detector_inputs_are_identical(batch_size: int) -> None:
    cfg = load_config(None, SAMPLE_SETS)
    val_set, train_set = build_dataset(cfg, "val"), build_dataset(cfg, "train")
    detector = Detector.from_config(cfg, num_classes=val_set.category_map.num_classes)
    photos = _photos(val_set)
    for start in range(0, len(val_set), batch_size):
        idx = range(start, min(start + batch_size, len(val_set)))
        eval_batch = collate([val_set[i] for i in idx], cfg.input.size_divisible)
        train_batch = collate([train_set[i] for i in idx], cfg.input.size_divisible)
        det_images, det_sizes = detector.preprocess([photos[i] for i in idx])
        assert torch.equal(eval_batch.images, det_images)
        assert torch.equal(train_batch.images, det_images)
        assert eval_batch.image_sizes == det_sizes == train_batch.image_sizes
        uint8_images, _ = detector.preprocess([(photos[i] * 255).round().to(torch.uint8) for i in idx])
        assert torch.equal(uint8_images, det_images)


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_large_photos(tmp_path_factory.mktemp("large"), count=3)


def _split_sets(images: Path, annotations: Path) -> list[str]:
    return [f"data.{split}.{key}={value}" for split in ("train", "val")
            for key, value in (("images", images), ("annotations", annotations))]


@pytest.mark.parametrize("photos, cache", [("sample", "none"), ("large", "none"), ("large", "disk")])
def test_evaluation_and_predict_read_the_same_input(photos: str, cache: str, large_photos: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    """What the val loader gives evaluate.py is what predict.py prepares from the file (torch.equal), and so are
    the detections: photos are read at 1/2 or 1/8 by both, the resize target from the original size."""
    split = (SAMPLE / "val", SAMPLE / "annotations" / "instances_val.json") if photos == "sample" else large_photos
    sets = [*SAMPLE_SETS, *_split_sets(*split), *TINY_MODEL, "eval.batch_size=1", "model.head.prior_prob=0.05",
            "model.postprocess.score_thresh=0.045", f"data.cache={cache}", f"data.cache_dir={tmp_path}",
            "input.min_size=[160]", "input.max_size=240"]  # large photos at 1/8, the sample's at 1/2 or in full
    cfg = load_config(None, sets)
    val_set = build_dataset(cfg, "val")
    detector = Detector.from_config(cfg, num_classes=val_set.category_map.num_classes).eval()
    reduced = 0
    for index, batch in enumerate(build_val_loader(cfg, val_set)):
        path = val_set.image_path(index)
        orig_hw = upright_size(path)  # predict.py has the file alone
        pixels = decode_for_input(path, orig_hw, detector.min_size, detector.max_size)
        reduced += pixels.shape[:2] != orig_hw
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        predict_images, predict_sizes = detector.preprocess([image], [orig_hw])
        assert torch.equal(batch.images, predict_images) and batch.image_sizes == predict_sizes
        assert batch.targets[0].orig_size == orig_hw
        if index >= 2:  # equal inputs give equal detections; two images show the boxes come back alike
            continue
        with torch.no_grad():
            evaluated = detector.postprocess(detector.model(batch.images), batch.image_sizes, [orig_hw])[0]
        predicted = detector([image], [orig_hw])[0]
        assert len(predicted["scores"]) > 0
        for key, value in evaluated.as_dict().items():
            assert torch.equal(value, predicted[key]), key
    assert reduced == len(val_set) - (photos == "sample")  # all but the sample's 352x230 photo


@pytest.mark.slow
@pytest.mark.parametrize("photos", ["sample", "large"])
def test_evaluate_and_predict_give_the_same_detections(photos: str, large_photos: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    thresh = 0.045  # a near-untrained head with prior 0.05 scores about 0.05: many detections pass
    run = tmp_path / "run"
    images, annotations = (SAMPLE / "val", SAMPLE / "annotations" / "instances_val.json") if photos == "sample" \
        else large_photos
    sets = [*SAMPLE_SETS, *_split_sets(images, annotations), *TINY_MODEL, "train.max_iters=2", "train.eval_every=0",
            "eval.num_vis_images=0", f"model.postprocess.score_thresh={thresh}", "model.head.prior_prob=0.05",
            "train.lr=0.00001"]
    assert run_train(run, sets) == 0
    checkpoint = run / "checkpoints" / "last.pt"
    assert evaluate.main(["--config", str(run / "config.yaml"), "--checkpoint", str(checkpoint),
                          "--output-dir", str(tmp_path / "eval"), "--set", "eval.batch_size=1"]) == 0
    assert predict_cli.main(["--checkpoint", str(checkpoint), "--input", str(images),
                             "--output-dir", str(tmp_path / "pred"), "--score-thresh", str(thresh)]) == 0
    names = {im["id"]: im["file_name"] for im in json.loads(annotations.read_text())["images"]}

    def by_file(records: list[dict], key) -> dict[str, list]:
        out: dict[str, list] = {}
        for r in records:
            out.setdefault(key(r), []).append((r["category_id"], r["score"], r["bbox"]))
        return {k: sorted(v, key=lambda d: (-d[1], d[0], d[2])) for k, v in out.items()}

    evaluated = by_file(json.loads((tmp_path / "eval" / "detections.json").read_text()), lambda r: names[r["image_id"]])
    predicted = by_file(json.loads((tmp_path / "pred" / "detections.json").read_text()), lambda r: r["file_name"])
    assert sum(len(v) for v in evaluated.values()) > 50
    assert evaluated == predicted
