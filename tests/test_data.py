"""Tests for data/: category mapping, COCO loading, transforms, collate, sampling, seeding."""
from __future__ import annotations

import json
import logging
import random
from collections import Counter
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from retinanet.data.coco import CategoryMap, CocoDetection
from retinanet.data.collate import aspect_ratio_group_ids, collate, seed_worker
from retinanet.structures import Batch
from retinanet.data.sampler import TrainBatchSampler
from retinanet.data.transforms import build_transforms
from retinanet.modeling.preprocess import normalize
from retinanet.structures import Target

TINY_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiny_coco"

# ----------------------------------------------------------------------------- CategoryMap


def test_category_map_gapped_ids_round_trip() -> None:
    cmap = CategoryMap([{"id": 7, "name": "c"}, {"id": 1, "name": "a"}, {"id": 3, "name": "b"}])
    assert cmap.category_ids == [1, 3, 7]
    assert cmap.names == ["a", "b", "c"]
    assert cmap.num_classes == 3
    assert [cmap.to_label(i) for i in (1, 3, 7)] == [0, 1, 2]
    assert [cmap.to_category_id(cmap.to_label(i)) for i in (1, 3, 7)] == [1, 3, 7]
    ids = cmap.labels_to_category_ids(torch.tensor([2, 0, 1, 2]))
    assert ids.dtype == torch.int64
    assert ids.tolist() == [7, 1, 3, 7]
    with pytest.raises(KeyError, match="category id 2"):
        cmap.to_label(2)
    with pytest.raises(IndexError):
        cmap.to_category_id(3)
    with pytest.raises(IndexError):
        cmap.labels_to_category_ids(torch.tensor([3]))


def test_category_map_zero_based_ids_keep_placeholder() -> None:
    # Roboflow layout: id 0 is an unused placeholder named like the others' supercategory.
    cats = [
        {"id": 0, "name": "shapes", "supercategory": "none"},
        {"id": 2, "name": "square", "supercategory": "shapes"},
        {"id": 1, "name": "circle", "supercategory": "shapes"},
    ]
    cmap = CategoryMap(cats)
    assert cmap.num_classes == 3
    assert cmap.names == ["shapes", "circle", "square"]
    assert [cmap.to_label(i) for i in (0, 1, 2)] == [0, 1, 2]
    labels = torch.arange(3)
    assert cmap.labels_to_category_ids(labels).tolist() == [0, 1, 2]
    assert cmap.labels_to_category_ids(torch.zeros(0, dtype=torch.int64)).shape == (0,)


# ----------------------------------------------------------------------------- CocoDetection


def _write_json(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Five images covering RGB, grayscale, RGBA, palette and EXIF-rotated files; gapped category ids."""
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(img_dir / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (24, 16), dtype=np.uint8), mode="L").save(img_dir / "gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 22, 4), dtype=np.uint8), mode="RGBA").save(img_dir / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (12, 14), dtype=np.uint8), mode="L").convert("P").save(img_dir / "pal.png")
    # Stored 20 wide x 10 high; EXIF orientation 6 (rotate 90 CW) shows it 10 wide x 20 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (10, 20, 3), dtype=np.uint8)).save(img_dir / "exif.jpg", exif=exif)

    images = [
        {"id": 11, "file_name": "rgb.png", "width": 40, "height": 30},
        {"id": 4, "file_name": "gray.png", "width": 16, "height": 24},
        {"id": 7, "file_name": "rgba.png", "width": 22, "height": 20},
        {"id": 9, "file_name": "pal.png", "width": 14, "height": 12},
        {"id": 20, "file_name": "exif.jpg", "width": 10, "height": 20},
    ]
    ann = partial(dict, iscrowd=0, area=1.0)
    annotations = [
        ann(id=1, image_id=11, category_id=5, bbox=[2, 3, 10, 8]),
        ann(id=2, image_id=11, category_id=2, bbox=[5, 5, 20, 20], iscrowd=1),
        ann(id=3, image_id=11, category_id=2, bbox=[30, 20, 20, 20]),  # clipped to (30, 20, 40, 30)
        ann(id=4, image_id=11, category_id=5, bbox=[1, 1, 0.5, 5]),  # width < 1: dropped
        ann(id=5, image_id=11, category_id=5, bbox=[39.5, 1, 5, 5]),  # width 0.5 after clipping: dropped
        ann(id=6, image_id=7, category_id=2, bbox=[0, 0, 5, 5], iscrowd=1),  # crowd only
        ann(id=7, image_id=9, category_id=9, bbox=[-3, 2, 6, 4]),  # clipped to (0, 2, 3, 6)
        ann(id=8, image_id=20, category_id=9, bbox=[1, 12, 4, 6]),
    ]
    categories = [{"id": 9, "name": "c"}, {"id": 2, "name": "a"}, {"id": 5, "name": "b"}]
    return img_dir, _write_json(tmp_path / "ann.json", images, annotations, categories)


def _items_by_id(ds: CocoDetection) -> dict[int, tuple[torch.Tensor, Target]]:
    return {image_id: ds[i] for i, image_id in enumerate(ds.ids)}


def test_coco_detection_targets(tiny_dataset: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny_dataset)
    assert ds.ids == [4, 7, 9, 11, 20]
    assert ds.category_map.category_ids == [2, 5, 9]
    items = _items_by_id(ds)
    image, target = items[11]
    assert target.image_id == 11
    assert target.boxes_xyxy.dtype == torch.float32
    assert target.labels.dtype == torch.int64
    assert target.iscrowd.dtype == torch.bool
    torch.testing.assert_close(
        target.boxes_xyxy, torch.tensor([[2.0, 3.0, 12.0, 11.0], [5.0, 5.0, 25.0, 25.0], [30.0, 20.0, 40.0, 30.0]])
    )
    assert target.labels.tolist() == [1, 0, 0]  # category ids 5, 2, 2
    assert target.iscrowd.tolist() == [False, True, False]
    assert items[9][1].boxes_xyxy.tolist() == [[0.0, 2.0, 3.0, 6.0]]
    assert items[9][1].labels.tolist() == [2]
    assert items[7][1].iscrowd.tolist() == [True]
    empty = items[4][1]
    assert empty.boxes_xyxy.shape == (0, 4) and empty.labels.shape == (0,) and empty.iscrowd.shape == (0,)
    assert ds.aspect_ratios() == pytest.approx([16 / 24, 22 / 20, 14 / 12, 40 / 30, 10 / 20])


def test_coco_detection_counts_and_logs_dropped_boxes(
    tiny_dataset: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="retinanet.data"):
        ds = CocoDetection(*tiny_dataset)
    assert ds.num_dropped_boxes == 2
    dropped_logs = [r for r in caplog.records if r.name == "retinanet.data" and "dropped" in r.getMessage()]
    assert len(dropped_logs) == 1
    assert "dropped 2 boxes" in dropped_logs[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="retinanet.data"):
        ds[3]
    assert not caplog.records  # counted once at construction, not per item


def test_coco_detection_keep_empty_false_drops_images_without_positive_boxes(tiny_dataset: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny_dataset, keep_empty=False)
    assert ds.ids == [9, 11, 20]  # 4 has no annotation, 7 only a crowd box
    assert len(ds) == 3
    assert len(ds.aspect_ratios()) == 3


def test_coco_detection_loads_any_mode_as_rgb_upright(tiny_dataset: tuple[Path, Path]) -> None:
    items = _items_by_id(CocoDetection(*tiny_dataset))
    expected_hw = {11: (30, 40), 4: (24, 16), 7: (20, 22), 9: (12, 14), 20: (20, 10)}
    for image_id, (h, w) in expected_hw.items():
        image, target = items[image_id]
        assert image.shape == (3, h, w), image_id
        assert image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert target.orig_size == (h, w)
    gray = items[4][0]
    torch.testing.assert_close(gray[0], gray[1])
    torch.testing.assert_close(gray[0], gray[2])


def test_coco_detection_boxes_follow_transforms(tiny_dataset: tuple[Path, Path]) -> None:
    # Short side 30 -> 60: every box doubles; orig_size stays the file's size.
    ds = CocoDetection(*tiny_dataset, transforms=build_transforms(False, 60, 1000, (), 0.0))
    image, target = _items_by_id(ds)[11]
    assert image.shape == (3, 60, 80)
    assert target.orig_size == (30, 40)
    torch.testing.assert_close(
        target.boxes_xyxy,
        torch.tensor([[4.0, 6.0, 24.0, 22.0], [10.0, 10.0, 50.0, 50.0], [60.0, 40.0, 80.0, 60.0]]),
        atol=1e-4,
        rtol=0,
    )
    assert target.iscrowd.tolist() == [False, True, False]


def test_coco_detection_rejects_undeclared_category(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    ann_file = _write_json(
        tmp_path / "a.json",
        [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 0, "area": 16}],
        [{"id": 1, "name": "x"}],
    )
    with pytest.raises(KeyError, match="category id 3"):
        CocoDetection(tmp_path, ann_file)


# ----------------------------------------------------------------------------- transforms


def _sample(h: int = 30, w: int = 47) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    image = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[2.0, 3.0, 12.0, 11.0], [20.0, 5.0, 46.0, 29.0], [30.5, 1.25, 33.0, 4.0]], dtype=np.float32)
    return image, boxes, np.array([0, 2, 1], dtype=np.int64), np.array([False, True, False])


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def test_horizontal_flip_twice_is_identity_on_boxes() -> None:
    image, boxes, labels, crowd = _sample()
    flip = build_transforms(True, 30, 1000, [{"name": "HorizontalFlip", "p": 1.0}], 0.0)  # scale 1
    image1, boxes1, labels1, crowd1 = flip(image, boxes, labels, crowd)
    assert image1.shape == (3, 30, 47)
    np.testing.assert_allclose(boxes1[:, 0].numpy(), 47 - boxes[:, 2], atol=1e-4)
    np.testing.assert_allclose(boxes1[:, 2].numpy(), 47 - boxes[:, 0], atol=1e-4)
    np.testing.assert_array_equal(_to_uint8(image1)[:, ::-1], image)
    _, boxes2, labels2, crowd2 = flip(_to_uint8(image1), boxes1.numpy(), labels1.numpy(), crowd1.numpy())
    np.testing.assert_allclose(boxes2.numpy(), boxes, atol=1e-4)
    assert labels2.tolist() == labels.tolist()
    assert crowd2.tolist() == crowd.tolist()


def test_resize_scales_boxes_exactly_like_the_image() -> None:
    image, boxes, labels, crowd = _sample(30, 49)
    out_image, out_boxes, out_labels, out_crowd = build_transforms(False, 50, 1000, (), 0.0)(image, boxes, labels, crowd)
    # scale = 50 / 30; floor(30 * s), floor(49 * s) = (50, floor(81.67)) = (50, 81), like torchvision
    assert out_image.shape == (3, 50, 81)
    expected = boxes * np.array([81 / 49, 50 / 30, 81 / 49, 50 / 30], dtype=np.float32)
    np.testing.assert_allclose(out_boxes.numpy(), expected, rtol=1e-5, atol=1e-4)
    assert out_boxes.dtype == torch.float32 and out_labels.dtype == torch.int64 and out_crowd.dtype == torch.bool
    # The long side caps the scale: min(60 / 30, 150 / 100) = 1.5.
    wide = np.zeros((30, 100, 3), dtype=np.uint8)
    out_wide = build_transforms(False, 60, 150, (), 0.0)(wide, boxes, labels, crowd)[0]
    assert out_wide.shape == (3, 45, 150)


def test_scale_jitter_stays_within_sizes_and_follows_torch_seed() -> None:
    image, boxes, labels, crowd = _sample(30, 47)
    sizes = (40, 50, 60)

    def short_sides(seed: int) -> list[int]:
        torch.manual_seed(seed)
        transform = build_transforms(True, sizes, 1000, (), 0.0)
        return [min(transform(image, boxes, labels, crowd)[0].shape[1:]) for _ in range(30)]

    first = short_sides(0)
    assert set(first) <= set(sizes)
    assert len(set(first)) == 3
    assert short_sides(0) == first
    assert short_sides(1) != first
    # Eval ignores jitter and uses the largest size, like the config's test_min_size.
    assert min(build_transforms(False, sizes, 1000, (), 0.0)(image, boxes, labels, crowd)[0].shape[1:]) == 60


def test_augmentations_draw_independently() -> None:
    # albumentations' Compose(seed=...) seeds every transform alike, so two p=0.5 flips would always agree.
    image, boxes, labels, crowd = _sample(30, 30)
    flips = build_transforms(True, 30, 1000, [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}], 0.0)
    torch.manual_seed(0)
    outcomes = Counter()
    for _ in range(40):
        out = flips(image, boxes, labels, crowd)[1][0]
        outcomes[(bool(out[0] > 15), bool(out[1] > 15))] += 1
    assert len(outcomes) == 4


def test_eval_transform_ignores_augmentations() -> None:
    image, boxes, labels, crowd = _sample()
    out = build_transforms(False, 30, 1000, [{"name": "HorizontalFlip", "p": 1.0}], 0.0)(image, boxes, labels, crowd)
    np.testing.assert_allclose(out[1].numpy(), boxes, atol=1e-4)


def test_dropped_boxes_take_their_labels_and_crowd_flags_along() -> None:
    image, boxes, labels, crowd = _sample()
    crop = [{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 15, "y_max": 15}]
    out_image, out_boxes, out_labels, out_crowd = build_transforms(True, 15, 1000, crop, min_visibility=0.3)(
        image, boxes, labels, crowd
    )
    # Box 0 is inside the crop; box 1 keeps < 30% of its area; box 2 lies outside.
    assert out_image.shape == (3, 15, 15)
    assert out_labels.tolist() == [0]
    assert out_crowd.tolist() == [False]
    np.testing.assert_allclose(out_boxes.numpy(), boxes[:1], atol=1e-4)
    crowd_first = np.array([True, False, False])
    out = build_transforms(True, 15, 1000, crop, min_visibility=0.3)(image, boxes, labels, crowd_first)
    assert out[3].tolist() == [True]


def test_transforms_do_not_modify_inputs() -> None:
    image, boxes, labels, crowd = _sample()
    copies = [a.copy() for a in (image, boxes, labels, crowd)]
    augs = [{"name": "HorizontalFlip", "p": 1.0}, {"name": "RandomBrightnessContrast", "p": 1.0}]
    build_transforms(True, (20, 40), 1000, augs, 0.0)(image, boxes, labels, crowd)
    for before, after in zip(copies, (image, boxes, labels, crowd)):
        np.testing.assert_array_equal(before, after)


def test_augmentation_names_are_checked() -> None:
    with pytest.raises(ValueError, match="did you mean 'HorizontalFlip'"):
        build_transforms(True, 30, 1000, [{"name": "HorizontalFlp"}], 0.0)
    with pytest.raises(ValueError, match="'Compose'"):
        build_transforms(True, 30, 1000, [{"name": "Compose"}], 0.0)
    with pytest.raises(ValueError, match="HorizontalFlip.*prob"):
        build_transforms(True, 30, 1000, [{"name": "HorizontalFlip", "prob": 0.5}], 0.0)
    with pytest.raises(ValueError, match="needs a 'name'"):
        build_transforms(True, 30, 1000, [{"p": 0.5}], 0.0)
    nested = build_transforms(
        True, 30, 1000, [{"name": "OneOf", "p": 1.0, "transforms": [{"name": "HorizontalFlip"}, {"name": "Blur"}]}], 0.0
    )
    one_of = nested.compose.transforms[0]
    assert [type(t).__name__ for t in one_of.transforms] == ["HorizontalFlip", "Blur"]


# ----------------------------------------------------------------------------- collate and sampling


def _target(n: int) -> Target:
    return Target(torch.zeros(n, 4), torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.bool))


def test_collate_pads_to_multiple_and_normalizes() -> None:
    torch.manual_seed(0)
    images = [torch.rand(3, 50, 70), torch.rand(3, 65, 40)]
    targets = [_target(2), _target(0)]
    batch = collate(list(zip(images, targets)), size_divisible=32)
    assert batch.images.shape == (2, 3, 96, 96)
    assert batch.image_sizes == [(50, 70), (65, 40)]
    assert batch.targets[0] is targets[0] and len(batch) == 2
    torch.testing.assert_close(batch.images[0, :, :50, :70], normalize(images[0]))
    torch.testing.assert_close(batch.images[1, :, :65, :40], normalize(images[1]))
    assert float(batch.images[0, :, 50:].abs().sum()) == 0.0
    assert float(batch.images[1, :, :, 40:].abs().sum()) == 0.0
    small = partial(collate, size_divisible=16)(list(zip(images, targets)))
    assert small.images.shape == (2, 3, 80, 80)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.images.shape == batch.images.shape


def test_train_batch_sampler_groups_and_is_deterministic() -> None:
    aspect = [2.0, 0.5, 1.0, 0.75, 1.5, 0.6, 1.2, 1.1, 0.9, 3.0, 1.0]
    groups = aspect_ratio_group_ids(aspect)
    assert groups == [1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1]
    sampler = TrainBatchSampler(len(aspect), batch_size=3, seed=5, group_ids=groups)
    epoch = sampler.epoch_batches(0)
    grouped = [b for b in epoch if len({groups[i] for i, _ in b}) == 1]
    assert len(grouped) >= 2 and all(len(b) == 3 for b in epoch)
    assert Counter(i for b in epoch for i, _ in b).most_common(1)[0][1] == 1  # no repeats inside an epoch
    assert epoch == TrainBatchSampler(len(aspect), 3, seed=5, group_ids=groups).epoch_batches(0)
    assert epoch != sampler.epoch_batches(1)
    assert epoch != TrainBatchSampler(len(aspect), 3, seed=6, group_ids=groups).epoch_batches(0)


def test_train_batch_sampler_resumes_mid_sequence() -> None:
    full = list(islice(iter(TrainBatchSampler(10, batch_size=3, seed=1)), 12))
    resumed = list(islice(iter(TrainBatchSampler(10, batch_size=3, seed=1, start_batch=7)), 5))
    assert resumed == full[7:12]


def test_train_batch_sampler_rank_slices_and_tiny_sets() -> None:
    whole = next(iter(TrainBatchSampler(20, batch_size=4, seed=0)))
    rank0 = next(iter(TrainBatchSampler(20, batch_size=2, seed=0, world_size=2, rank=0)))
    rank1 = next(iter(TrainBatchSampler(20, batch_size=2, seed=0, world_size=2, rank=1)))
    assert len(rank0) == 2 and rank0 + rank1 == whole  # each rank takes its slice of the global batch
    tiny = next(iter(TrainBatchSampler(2, batch_size=5, seed=0)))
    assert len(tiny) == 5 and {i for i, _ in tiny} == {0, 1}


def test_seed_worker_seeds_python_and_numpy_from_torch() -> None:
    def draws(seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        seed_worker(0)
        return random.random(), float(np.random.rand())

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


class _JitterDataset(Dataset):
    def __init__(self) -> None:
        self.transform = build_transforms(True, (16, 24, 32, 40), 1000, [{"name": "HorizontalFlip", "p": 0.5}], 0.0)
        self.image, self.boxes, self.labels, self.crowd = _sample(20, 20)

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> tuple[int, float]:
        image, boxes, _, _ = self.transform(self.image, self.boxes, self.labels, self.crowd)
        return image.shape[1], float(boxes[0, 0])


def test_dataloader_workers_give_reproducible_distinct_augmentations() -> None:
    def run() -> list[tuple[int, float]]:
        loader = DataLoader(
            _JitterDataset(),
            batch_size=None,
            num_workers=2,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(3),
        )
        return [(int(h), round(x, 3)) for h, x in loader]

    first = run()
    assert run() == first
    # Items 0, 2, 4... come from worker 0 and 1, 3, 5... from worker 1: their streams differ.
    assert first[0::2] != first[1::2]
    assert len({h for h, _ in first}) > 1


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not TINY_COCO.is_dir(), reason=f"real COCO subset not found at {TINY_COCO}")
def test_tiny_coco_subset_loads() -> None:
    ds = CocoDetection(TINY_COCO / "train2017", TINY_COCO / "annotations" / "instances_train2017.json")
    assert len(ds) == 50
    assert ds.category_map.num_classes == 80
    assert ds.category_map.category_ids[-1] == 90
    assert ds.category_map.to_label(90) == 79
    num_crowd = 0
    num_empty = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape[0] == 3 and target.orig_size == tuple(image.shape[1:])
        num_crowd += int(target.iscrowd.sum())
        num_empty += int(target.labels.numel() == 0)
        json_ids = sorted(a["category_id"] for a in ds.coco.imgToAnns.get(target.image_id, []))
        assert sorted(ds.category_map.labels_to_category_ids(target.labels).tolist()) == json_ids
    assert num_crowd == 5
    assert num_empty == 1
    without_empty = CocoDetection(ds.images_dir, ds.annotations_file, keep_empty=False)
    assert len(without_empty) == 49
    assert 262284 in ds.ids and 262284 not in without_empty.ids


def test_denormalize_inverts_normalize() -> None:
    from retinanet.modeling.preprocess import denormalize

    image = torch.rand(3, 5, 7)
    torch.testing.assert_close(denormalize(normalize(image)), image)
    assert not torch.allclose(normalize(image), image)
