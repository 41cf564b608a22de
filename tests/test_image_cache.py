"""Reduced decoding and `data.cache`: the pixels every path reads, the cache's checks, and today's pixels kept."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.config import load_config
from retinanet.data import decode
from retinanet.data.collate import collate
from retinanet.data.decode import decode_for_input, decode_image, load_image, reduction_factor, upright_size
from retinanet.data.image_cache import HEADER, ImageCache, default_cache_dir, frame_size
from retinanet.data.loaders import build_dataset, build_train_loader, build_val_loader
from retinanet.modeling.preprocess import resized_size
from tests.helpers import REPO, make_large_photos

SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_large_photos(tmp_path_factory.mktemp("large"), count=3)


def _sets(images: Path, annotations: Path, *extra: str) -> list[str]:
    return [f"data.train.images={images}", f"data.train.annotations={annotations}", f"data.val.images={images}",
            f"data.val.annotations={annotations}", "data.num_workers=0", "data.aspect_ratio_grouping=false", *extra]


# ----------------------------------------------------------------------------- decoding


def test_reduction_factor_is_the_largest_that_still_covers() -> None:
    assert reduction_factor((1371, 2048), (512, 765)) == 2  # 1/4 would be 343x512: too short
    assert reduction_factor((1371, 2048), (343, 512)) == 4  # ceil(1371 / 4) = 343 covers exactly
    assert reduction_factor((1371, 2048), (344, 512)) == 2
    assert reduction_factor((1371, 2048), (171, 256)) == 8  # ceil(1371 / 8) = 172
    assert reduction_factor((480, 640), (256, 341)) == 1
    assert reduction_factor((100, 100), (200, 200)) == 1  # an upscale never reduces


def test_opencv_reduced_decode_is_pils_and_applies_exif(large: tuple[Path, Path]) -> None:
    images_dir, _ = large
    for path in sorted(images_dir.glob("*.jpg")):
        orig_hw = upright_size(path)
        assert orig_hw == load_image(path).shape[:2]
        for factor, cover in ((2, (600, 600)), (4, (300, 300)), (8, (150, 150))):
            pixels = decode_image(path, orig_hw, cover)
            assert pixels.shape == (-(-orig_hw[0] // factor), -(-orig_hw[1] // factor), 3)
            assert np.array_equal(pixels, decode._pil_reduced(path, factor)), (path.name, factor)
    turned = sorted(images_dir.glob("*.jpg"))[-1]  # stored portrait, EXIF orientation 6: upright landscape
    with Image.open(turned) as im:
        assert im.size == (1371, 2048)  # (W, H) as stored
    assert upright_size(turned) == (1371, 2048)  # (H, W) upright
    small = cv2.resize(load_image(turned), (512, 343), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(decode_image(turned, (1371, 2048), (300, 300)).astype(np.float32) - small).mean() < 6  # not turned


def test_opencv_failure_falls_back_to_pil(large: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = sorted(large[0].glob("*.jpg"))[0]
    expected = decode_image(path, upright_size(path), (300, 300))
    monkeypatch.setattr(decode.cv2, "imread", lambda *args: None)
    assert np.array_equal(decode_image(path, upright_size(path), (300, 300)), expected)


def test_png_and_unreduced_images_are_decoded_in_full(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (400, 600, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert np.array_equal(decode_image(tmp_path / "a.png", (400, 600), (50, 75)), pixels)  # PNG: no DCT to scale
    path = SAMPLE / "val" / "000000122745.jpg"
    assert np.array_equal(decode_for_input(path, upright_size(path), 256, 384), load_image(path))


# ----------------------------------------------------------------------------- today's pixels


@pytest.mark.parametrize("config, sets", [
    ("sample.yaml", []),  # real photos at sample.yaml's sizes: no reduction applies
    ("sample.yaml", ["input.min_size=[224,256]", "data.augmentations=[{name: HorizontalFlip, p: 0.5}, "
                     "{name: RandomBrightnessContrast, p: 0.5}]"]),
    ("demo_cpu.yaml", ["input.min_size=[96,128]"]),  # the demo's PNGs
])
def test_unreduced_images_give_todays_network_input(config: str, sets: list[str], synthetic_shapes: Path) -> None:
    """The item equals what the dataset did before reduced decoding: the full image through the same transform."""
    data = ([] if config == "sample.yaml" else
            [f"data.train.images={synthetic_shapes / 'train'}",
             f"data.train.annotations={synthetic_shapes / 'annotations' / 'instances_train.json'}",
             f"data.val.images={synthetic_shapes / 'val'}",
             f"data.val.annotations={synthetic_shapes / 'annotations' / 'instances_val.json'}"])
    cfg = load_config(REPO / "configs" / config, [*data, *sets])
    for split in ("train", "val"):
        ds = build_dataset(cfg, split)
        for index in range(min(len(ds), 6)):
            ann = ds._annotations[index]
            ds.transforms.set_seed(index)
            image, target = ds[index]
            ds.transforms.set_seed(index)
            today = ds.transforms(load_image(ds.image_path(index)), ann.boxes_xyxy, ann.labels, ann.iscrowd)
            assert torch.equal(image, today[0]) and torch.equal(target.boxes_xyxy, today[1]), (split, index)
            assert torch.equal(target.labels, today[2]) and torch.equal(target.iscrowd, today[3])


@pytest.fixture(scope="module")
def synthetic_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retinanet.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("shapes")
    make_dataset(root, seed=0, num_train=6, num_val=6, image_size=128)
    return root


# ----------------------------------------------------------------------------- reduced frames in training


def test_training_on_a_reduced_frame_keeps_sizes_boxes_and_labels(large: tuple[Path, Path]) -> None:
    """At 384 px a 2048x1371 JPEG is read at 1/2; output size and boxes are those of the full decode."""
    sets = _sets(*large, "input.min_size=[320,384]", "input.max_size=576", "data.augmentations=[{name: HorizontalFlip, p: 0.5}]")
    ds = build_dataset(load_config(None, sets), "train")
    for index in range(len(ds)):
        assert ds.read_image(index).shape[:2] == tuple(-(-s // 2) for s in ds.orig_size(index))
        ann = ds._annotations[index]
        for seed in range(4):
            ds.transforms.set_seed(seed)
            image, target = ds[index]
            ds.transforms.set_seed(seed)
            full = ds.transforms(load_image(ds.image_path(index)), ann.boxes_xyxy, ann.labels, ann.iscrowd)
            assert image.shape == full[0].shape  # the same jittered size and flip, from the original size
            torch.testing.assert_close(target.boxes_xyxy, full[1], atol=2e-3, rtol=0)
            assert torch.equal(target.labels, full[2]) and torch.equal(target.iscrowd, full[3])
            assert (image - full[0]).abs().mean() < 0.03  # the same picture, a better-filtered one
            assert target.orig_size == ds.orig_size(index)


# ----------------------------------------------------------------------------- the cache


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_cached_pixels_equal_uncached(mode: str, large: tuple[Path, Path], tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    base = _sets(*large, "input.min_size=[384]", "input.max_size=576", "data.augmentations=[]",
                 f"data.cache_dir={tmp_path / 'cache'}")
    for split in ("train", "val"):
        plain = build_dataset(load_config(None, base), split)
        cached = build_dataset(load_config(None, [*base, f"data.cache={mode}"]), split)
        with caplog.at_level(logging.INFO, logger="retinanet.data"):
            cached.fill_cache()
        assert "MB per 1,000 images at this size" in caplog.text
        for index in range(len(plain)):
            (a, ta), (b, tb) = plain[index], cached[index]
            assert torch.equal(a, b), (split, index)
            # Boxes reach the same pixels through another frame (1/2 decode or cache): float rounding only.
            torch.testing.assert_close(ta.boxes_xyxy, tb.boxes_xyxy, atol=1e-3, rtol=0)
            assert ta.orig_size == tb.orig_size and torch.equal(ta.labels, tb.labels)
    if mode == "disk":
        entries = sorted((tmp_path / "cache" / "images").glob("*.rgb"))
        assert len(entries) == 3  # train and val ask for the same size here: one entry per image
        h, w = frame_size((1371, 2048), 384, 576)
        assert (h, w) == (384, 573) and entries[0].stat().st_size in (HEADER.size + h * w * 3,
                                                                         HEADER.size + w * h * 3)


def test_cache_frames_are_the_largest_training_size(large: tuple[Path, Path], tmp_path: Path) -> None:
    sets = _sets(*large, "input.min_size=[320,384]", "input.max_size=576", "data.cache=ram", "input.eval_min_size=320")
    cfg = load_config(None, sets)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert train.cache.images[0].frame_hw == resized_size(*train.orig_size(0), 384, 576)
    assert val.cache.images[0].frame_hw == resized_size(*val.orig_size(0), 320, 576)
    assert frame_size((100, 150), 384, 576) == (100, 150)  # never upscaled: kept at its own size
    train.fill_cache()
    assert train.cache.nbytes == sum(h * w * 3 for h, w in (im.frame_hw for im in train.cache.images))


def test_ram_cache_is_shared_with_dataloader_workers(large: tuple[Path, Path]) -> None:
    """Workers forked after the fill read the main process's buffer: overwrite it, and they see the overwrite."""
    sets = _sets(*large, "input.min_size=[320,384]", "input.max_size=576", "data.cache=ram", "train.batch_size=3")
    ds = build_dataset(load_config(None, sets), "train")
    next(iter(build_train_loader(load_config(None, sets), ds)))
    assert ds.cache._filled.all()
    ds.cache._buffer[:] = 7
    batch = next(iter(build_train_loader(load_config(None, [*sets, "data.num_workers=2"]), ds)))
    for image, (h, w) in zip(batch.images, batch.image_sizes):
        region = image[:, :h, :w]
        assert torch.equal(region, region[:, :1, :1].expand_as(region))  # flat: nothing was decoded again


def _disk_cache(large: tuple[Path, Path], tmp_path: Path) -> tuple:
    cfg = load_config(None, _sets(*large, "input.min_size=[384]", "input.max_size=576", "data.augmentations=[]",
                                  "data.cache=disk", f"data.cache_dir={tmp_path / 'cache'}"))
    ds = build_dataset(cfg, "val")
    build_val_loader(cfg, ds)  # fills the cache
    return ds, ds.cache


@pytest.mark.parametrize("damage", ["truncate", "flip_pixel", "garbage_header", "empty", "wrong_size_header"])
def test_a_damaged_disk_entry_is_rebuilt_and_logged_once(damage: str, large: tuple[Path, Path], tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    ds, cache = _disk_cache(large, tmp_path)
    expected = ds[1][0]
    entry = cache.entry_path(1)
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_pixel":
        data[HEADER.size + 1000] ^= 0xFF
    elif damage == "garbage_header":
        data[:HEADER.size] = os.urandom(HEADER.size)
    elif damage == "empty":
        data = bytearray()
    else:
        header = list(HEADER.unpack(bytes(data[: HEADER.size])))
        header[3], header[4] = header[4], header[3]  # height and width swapped: same byte count, wrong shape
        data[: HEADER.size] = HEADER.pack(*header)
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        assert torch.equal(ds[1][0], expected)
        assert torch.equal(ds[1][0], expected)
    warnings = [r for r in caplog.records if "damaged or stale" in r.getMessage()]
    assert len(warnings) == 1 and str(entry) in warnings[0].getMessage()
    assert cache._read_entry(1) is not None  # rewritten whole
    assert not list(entry.parent.glob(".*.tmp"))


def test_a_changed_image_file_is_decoded_again(large: tuple[Path, Path], tmp_path: Path) -> None:
    images_dir, annotations = large
    copy = tmp_path / "copy"
    shutil.copytree(images_dir, copy / "images")
    ds, cache = _disk_cache((copy / "images", annotations), tmp_path)
    before = ds[0][0]
    path = ds.image_path(0)
    Image.fromarray(255 - load_image(path)).save(path, quality=90)  # the same size, other pixels
    after = ds[0][0]
    assert not torch.equal(before, after)
    plain = build_dataset(load_config(None, _sets(copy / "images", annotations, "input.min_size=[384]",
                                                  "input.max_size=576", "data.augmentations=[]")), "val")
    assert torch.equal(after, plain[0][0])
    stale = cache.entry_path(0)
    os.utime(path, ns=(1, 1))  # only the mtime changes: still stale
    assert cache._read_entry(0) is None
    ds.fill_cache()
    assert cache._read_entry(0) is not None and stale.is_file()


def test_an_unwritable_cache_folder_costs_speed_not_the_run(large: tuple[Path, Path], tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder must go")
    cfg = load_config(None, _sets(*large, "input.min_size=[384]", "input.max_size=576", "data.augmentations=[]",
                                  "data.cache=disk", f"data.cache_dir={tmp_path / 'cache' / 'sub'}"))
    ds = build_dataset(cfg, "val")
    plain = build_dataset(load_config(None, _sets(*large, "input.min_size=[384]", "input.max_size=576")), "val")
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        ds.fill_cache()
        assert torch.equal(ds[0][0], plain[0][0])
    assert "cannot write" in caplog.text


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "retinanet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "retinanet"
    cfg = load_config(None, _sets(SAMPLE / "val", SAMPLE / "annotations" / "instances_val.json", "data.cache=disk"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build_dataset(cfg, "val").cache.folder == tmp_path / "retinanet" / "images"


def test_cache_describe_states_the_cost() -> None:
    from retinanet.data.image_cache import CachedImage

    images = [CachedImage(Path("a.jpg"), (1371, 2048), (512, 765))] * 4
    cache = ImageCache("ram", images, 512, 768, None, "train.json")
    assert cache.nbytes == 4 * 512 * 765 * 3
    assert cache.describe() == "4 images at up to 765x512: 5 MB in RAM (1175 MB per 1,000 images at this size)"


def test_a_ram_cache_larger_than_the_memory_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from retinanet.config import ConfigError
    from retinanet.data import image_cache
    from retinanet.data.image_cache import CachedImage

    if Path("/proc/meminfo").is_file():
        assert image_cache.available_memory() > 0
    cache = ImageCache("ram", [CachedImage(Path("a.jpg"), (1371, 2048), (512, 765))] * 1000, 512, 768, None, "train.json")
    monkeypatch.setattr(image_cache, "available_memory", lambda: 10**9)
    with pytest.raises(ConfigError, match=r"^data.cache=ram: train.json needs 1.2 GB \(1000 images at up to 765x512\), "
                                          r"more than the 1.0 GB of memory available; use data.cache=disk or none$"):
        cache.fill()


def test_an_image_damaged_past_its_header_stops_the_fill_with_one_line(large: tuple[Path, Path],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from retinanet.data import image_cache
    from retinanet.data.validate import DatasetError

    ds = build_dataset(load_config(None, _sets(*large, "input.min_size=[384]", "input.max_size=576", "data.cache=ram")),
                       "val")

    def broken(path: Path, *args: object) -> np.ndarray:
        raise OSError("broken data stream when reading image file")

    monkeypatch.setattr(image_cache, "read_frame", broken)
    path = ds.image_path(0)
    with pytest.raises(DatasetError, match=rf"^{path}: cannot decode the image \(broken data stream when reading image "
                                           r"file\); replace the file or remove the image$"):
        ds.fill_cache()
