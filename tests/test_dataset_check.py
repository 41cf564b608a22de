"""The dataset check: class counts, anchor coverage (best IoUs worked out by hand), training previews, --json,
rare classes across splits, the pixel basis of the size tables and the input-size suggestion."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from retinanet.cli import check_dataset
from retinanet.config import load_config
from retinanet.data.anchor_coverage import (
    INPUT_SIZES, InputSuggestion, anchor_coverage, best_anchor_iou, format_input_size, resized_boxes,
)
from retinanet.data.loaders import build_dataset, build_train_loader
from retinanet.data.previews import training_previews
from retinanet.data.stats import class_counts, empty_size_note, format_rare_classes, rare_classes
from retinanet.modeling.anchors import AnchorGenerator, sizes_per_level
from retinanet.modeling.preprocess import prepare_batch, to_float_chw
from tests.helpers import REPO, synthetic_overrides

# One square anchor per level (16, 32, 64, 128, 256 px at strides 8 .. 128), 128 px inputs.
ONE_ANCHOR = ["model.anchors.sizes=[16,32,64,128,256]", "model.anchors.scales=[1.0]", "model.anchors.ratios=[1.0]",
              "input.min_size=[128]", "input.max_size=128"]


def dataset_of(side: int, boxes: list[tuple[int, list[float], int]]) -> dict:
    """One side x side image with (category_id, [x, y, w, h], iscrowd) boxes."""
    return {
        "images": [{"id": 1, "width": side, "height": side, "file_name": "1.png"}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 4, "name": "unused"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "iscrowd": crowd}
                        for i, (c, b, crowd) in enumerate(boxes)],
    }


# Best IoUs by hand (anchor centres at multiples of the stride):
# - B [16,16,48,48]: the 32 px anchor of P4 centred on (32, 32) is the box itself: IoU 1 -> fg.
# - F [10,10,40,40] (30 px, centre 25): P4's nearest centre is 32 -> anchor [16,48]^2, overlap 24^2 = 576,
#   union 900 + 1024 - 576 = 1348: 0.4273 (P3: 256/900 = 0.28, P5: 900/4096 = 0.22) -> low-quality only.
# - A [8,8,40,40] (32 px, centre 24): P4 centre 16 or 32 -> overlap 24^2 = 576, union 2048 - 576 = 1472:
#   0.3913 (P3: 256/1024, P5: 1024/4096 = 0.25) -> none (< bg_iou 0.4).
HAND_BOXES = [(1, [16, 16, 32, 32], 0), (1, [10, 10, 30, 30], 0), (2, [8, 8, 32, 32], 0), (2, [0, 0, 120, 120], 1)]
HAND_IOUS = [1.0, 576 / 1348, 576 / 1472]


def test_best_anchor_iou_by_hand() -> None:
    cfg = load_config(None, ONE_ANCHOR)
    boxes = resized_boxes(dataset_of(128, HAND_BOXES), [128], 128, 128)
    assert boxes.category_ids.tolist() == [1, 1, 2]  # the crowd box is left out
    anchors = cfg.model.anchors
    best = best_anchor_iou(boxes.boxes_xyxy, boxes.padded_hw, sizes_per_level(anchors.sizes, anchors.scales), anchors.ratios)
    np.testing.assert_allclose(best, HAND_IOUS, rtol=1e-12)


@pytest.mark.parametrize("side", [128, 256])  # 256: the resize halves every box, giving the same IoUs
def test_anchor_coverage_by_hand(side: int) -> None:
    scale = side // 128
    data = dataset_of(side, [(c, [v * scale for v in b], crowd) for c, b, crowd in HAND_BOXES])
    coverage = anchor_coverage(data, load_config(None, ONE_ANCHOR))
    third = pytest.approx(1 / 3)
    assert coverage.overall == {"boxes": 3, "fg": third, "low_quality_only": third, "none": third}
    # After the resize: B and A are 32 x 32 = 1024 px (medium), F is 30 x 30 (small).
    assert coverage.per_size["small"] == {"boxes": 1, "fg": 0.0, "low_quality_only": 1.0, "none": 0.0}
    assert coverage.per_size["medium"] == {"boxes": 2, "fg": 0.5, "low_quality_only": 0.0, "none": 0.5}
    assert coverage.per_size["large"]["boxes"] == 0
    assert coverage.per_class[1] == {"boxes": 2, "fg": 0.5, "low_quality_only": 0.5, "none": 0.0}
    assert coverage.per_class[2] == {"boxes": 1, "fg": 0.0, "low_quality_only": 0.0, "none": 1.0}
    # Below 90%: a suggestion that reaches more of these boxes than the configured anchors.
    assert coverage.suggestion is not None and coverage.suggestion.fg > 1 / 3


def test_best_anchor_iou_equals_all_anchors() -> None:
    """The nearest-centre shortcut gives the maximum over every anchor the model builds."""
    cfg = load_config(None, ["input.min_size=[200]", "input.max_size=333"])
    anchors = cfg.model.anchors
    sizes = sizes_per_level(anchors.sizes, anchors.scales)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * torch.tensor([333.0, 200.0])
    wh = torch.rand(300, 2, generator=g) * 150 + 2
    boxes = torch.cat([xy, xy + wh], dim=1).double()
    padded = (256, 384)  # 200 x 333 padded to multiples of 128
    all_anchors, _ = AnchorGenerator(sizes, anchors.ratios)(
        padded, [(padded[0] // s, padded[1] // s) for s in (8, 16, 32, 64, 128)], torch.device("cpu"), torch.float64)
    expected = box_iou(boxes, all_anchors).max(dim=1).values.numpy()
    fast = best_anchor_iou(boxes.numpy(), np.tile(padded, (300, 1)), sizes, anchors.ratios)
    np.testing.assert_allclose(fast, expected, rtol=1e-5)  # the model builds its anchors in float32


def test_class_counts() -> None:
    counts = class_counts(dataset_of(128, HAND_BOXES))
    assert [(c.id, c.name, c.boxes, c.crowd, c.images) for c in counts] == [
        (1, "a", 2, 0, 1), (2, "b", 1, 1, 1), (4, "unused", 0, 0, 0),
    ]


def test_previews_are_what_the_loader_yields(synthetic: Path) -> None:
    cfg = load_config(None, synthetic_overrides(synthetic) + ["data.augmentations=[{name: HorizontalFlip, p: 0.5}, "
                                                             "{name: RandomBrightnessContrast, p: 0.5}]"])
    dataset = build_dataset(cfg, "train")
    previews = training_previews(cfg, dataset, 6)  # one batch of 4 and half the next
    loader = iter(build_train_loader(cfg, build_dataset(cfg, "train")))
    batches = [next(loader), next(loader)]
    items = [(b, i) for b in batches for i in range(len(b))][:6]
    assert len(previews) == 6
    for preview, (batch, i) in zip(previews, items):
        target = batch.targets[i]
        assert preview.image_id == target.image_id
        assert torch.equal(torch.from_numpy(preview.boxes_xyxy), target.boxes_xyxy)
        assert torch.equal(torch.from_numpy(preview.labels), target.labels)
        assert preview.image_uint8_hwc.shape[:2] == batch.image_sizes[i]
    # The preview pixels, put through the one input path, give the training batch bit for bit.
    rebuilt, _ = prepare_batch([to_float_chw(p.image_uint8_hwc) for p in previews[:4]], cfg.input.size_divisible)
    assert torch.equal(rebuilt, batches[0].images)


def test_check_dataset_json_and_files(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sets = synthetic_overrides(synthetic)
    code = check_dataset.main(["--config", str(Path(__file__).parents[1] / "configs" / "demo_cpu.yaml"), "--set", *sets,
                               "--json", str(tmp_path / "check.json"), "--output-dir", str(tmp_path / "out"),
                               "--draw", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "anchor coverage" in out
    figures = json.loads((tmp_path / "check.json").read_text())
    coverage = figures["anchor_coverage"]
    assert coverage["fg"] + coverage["low_quality_only"] + coverage["none"] == pytest.approx(1.0)
    assert coverage["boxes"] == sum(c["boxes"] for c in figures["per_class"])  # one training scale: every box once
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[0] == "histograms.png"
    assert len(list((tmp_path / "out").glob("preview_*.png"))) == 3


# ----------------------------------------------------------------------------- rare classes, size basis, input size


def test_rare_classes_by_hand() -> None:
    train = class_counts(dataset_of(128, [(1, [0, 0, 8, 8], 0)] * 12 + [(2, [0, 0, 8, 8], 0), (2, [0, 0, 8, 8], 1)]))
    val = class_counts(dataset_of(128, [(1, [0, 0, 8, 8], 0), (2, [0, 0, 8, 8], 0)]))
    test = class_counts(dataset_of(128, [(2, [0, 0, 8, 8], 0), (4, [0, 0, 8, 8], 0)]))
    rare = rare_classes({"train": train, "val": val, "test": test})
    # a: 12 training boxes but none in test; b: 1 (the crowd box does not count); unused: none anywhere.
    assert [(c.name, c.boxes) for c in rare] == [
        ("unused", {"train": 0, "val": 0, "test": 1}), ("b", {"train": 1, "val": 1, "test": 1}),
        ("a", {"train": 12, "val": 1, "test": 0})]
    lines = format_rare_classes(rare, 3)
    assert lines[0] == "warning: 3 of 3 classes have fewer than 10 boxes in train or no box in val or test:"
    assert lines[2].split() == ["b", "1", "in", "train,", "1", "in", "val,", "1", "in", "test"]
    assert any('"-" in the per-class table, an empty row in report.html' in line for line in lines)
    assert [c.name for c in rare_classes({"train": train})] == ["unused", "b"]
    assert format_rare_classes(rare_classes({"train": train}), 3)[1].split() == ["b", "1", "boxes"]
    assert format_rare_classes([], 3) == []
    # A class without any box (a subset of a larger label set) goes on one line with the others like it.
    two = format_rare_classes(rare_classes({"train": train, "val": val}), 3)
    assert "  no box at all (1, never learned nor evaluated): unused" in two
    assert not any(line.split()[0] == "unused" for line in two)


def test_empty_size_note_names_the_metrics_that_show_a_dash() -> None:
    assert empty_size_note({"small": 0, "medium": 1, "large": 2107}) == (
        'no small boxes in original pixels: evaluated on this split, APs show "-" '
        "(no box of that size to find: undefined, not 0)")
    assert "APs, APm show" in empty_size_note({"small": 0, "medium": 0, "large": 5})
    assert empty_size_note({"small": 1, "medium": 1, "large": 1}) is None
    assert empty_size_note({"small": 0, "medium": 0, "large": 0}) is None  # no boxes: nothing to say


def test_input_size_kept_when_the_boxes_fit_the_anchors() -> None:
    """A 32 px box centred on a P4 anchor centre is that anchor (IoU 1); at any scale it stays on the grid."""
    coverage = anchor_coverage(dataset_of(128, [(1, [16, 16, 32, 32], 0)]), load_config(None, ONE_ANCHOR))
    sug = coverage.input_size
    assert sug == InputSuggestion(min_size=128, max_size=128, fg=1.0, current_fg=1.0, better=False,
                                  median_side=32.0, anchor_sides=(16.0, 256.0))


def test_input_size_suggested_is_what_coverage_measures_at_that_size() -> None:
    data = dataset_of(128, HAND_BOXES)
    sug = anchor_coverage(data, load_config(None, ONE_ANCHOR)).input_size
    assert sug.better and sug.current_fg == pytest.approx(1 / 3) and sug.min_size in INPUT_SIZES
    at = load_config(None, [*ONE_ANCHOR, f"input.min_size=[{sug.min_size}]", f"input.max_size={sug.max_size}"])
    assert sug.max_size == sug.min_size  # the configured proportion: max_size 128 for min_size 128
    assert anchor_coverage(data, at).overall["fg"] == pytest.approx(sug.fg)
    smaller = [s for s in INPUT_SIZES if s < sug.min_size]
    for size in smaller:  # the smallest of the best: every smaller size reaches less
        cfg = load_config(None, [*ONE_ANCHOR, f"input.min_size=[{size}]", f"input.max_size={size}"])
        assert anchor_coverage(data, cfg).overall["fg"] < sug.fg - 0.01
    lines = format_input_size(sug, [128], 0.5)
    assert lines[1].startswith(f"  suggested: --set input.min_size=[{sug.min_size}] input.max_size={sug.max_size} puts")


def test_check_dataset_data_flag_on_the_roboflow_sample(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """The shipped export: one category count, the one-box class flagged, the pixel basis of every size table."""
    code = check_dataset.main(["--data", str(REPO / "data" / "sample_roboflow"), "--config", str(REPO / "configs" / "sample.yaml"),
                               "--json", str(tmp_path / "check.json")])
    out = capsys.readouterr().out
    assert code == 0
    placeholder = "categories: 13 ({} used; Roboflow's placeholder category 0 'household-objects' left out: not a class)"
    assert [line for line in out.splitlines() if line.startswith("categories:")] == [
        placeholder.format(13), placeholder.format(8), placeholder.format(5)]
    assert out.count("annotations, 13 categories (and the placeholder category 0, not a class)") == 3
    assert "warning: 12 of 13 classes have fewer than 10 boxes in train or no box in val or test:" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and " in train, " in line}
    assert rows["toaster"] == ["1", "in", "train,", "0", "in", "val,", "0", "in", "test"]
    assert "person" not in rows  # 16 training boxes, some in val and test
    assert out.count("box sizes in original image pixels") == 3 and "small (resized)" in out
    assert "input size: after the resize to min_size [256] the median box is" in out
    figures = json.loads((tmp_path / "check.json").read_text())
    assert {c["name"]: c["boxes"] for c in figures["rare_classes"]}["toaster"] == {"train": 1, "val": 0, "test": 0}
    assert figures["splits"]["test"]["images"] == 3 and figures["images"] == 8
    assert figures["anchor_coverage"]["input_size"]["current_fg"] == figures["anchor_coverage"]["fg"]
