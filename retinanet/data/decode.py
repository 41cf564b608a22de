"""Read an image file at the smallest size that still covers its resize target: the reader of every input path.

A JPEG's DCT decodes at 1/2, 1/4 or 1/8 of its size for a fraction of the work: a 2048x1371 photo
takes 12.7 ms in full and 6.5 ms at 1/4 (one core, OpenCV), and the resize after it has 16 times
fewer pixels to read. `decode_for_input` picks the largest of those factors whose image still
covers the resize to (min_size, max_size) on both sides, so the resize that follows (always
`resize_uint8`) only ever shrinks it by less than 2x. The target comes from the image's original
size (the json's width and height, or the file header), never from the decoded one, so the
network input's size and the box geometry do not depend on the factor.

Training, evaluation (the dataset), the cache and scripts/predict.py all read through
`decode_for_input`, so an image gives the same pixels on every path. Where no factor applies (not
a JPEG, or a target as large as the image) it is `load_image`, the full PIL decode, unchanged.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from retinanet.modeling.preprocess import resized_size

EXIF_ORIENTATION = 0x0112
JPEG_MAGIC = b"\xff\xd8\xff"
REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 (H, W, 3) RGB, upright per its EXIF orientation.

    `convert("RGB")` turns grayscale, RGBA and palette files into three channels.
    """
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def upright_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the image as `load_image` returns it, from the header alone (EXIF orientations 5-8 swap them)."""
    with Image.open(path) as im:
        width, height = im.size
        orientation = int(Image.Image.getexif(im).get(EXIF_ORIENTATION, 1) or 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def reduction_factor(orig_hw: tuple[int, int], cover_hw: tuple[int, int]) -> int:
    """The largest of 8, 4, 2 whose decoded size (ceil(side / f), libjpeg's) covers `cover_hw`; else 1."""
    height, width = orig_hw
    for factor in (8, 4, 2):
        if math.ceil(height / factor) >= cover_hw[0] and math.ceil(width / factor) >= cover_hw[1]:
            return factor
    return 1


def _is_jpeg(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(3) == JPEG_MAGIC


def _pil_reduced(path: Path, factor: int) -> np.ndarray:
    """PIL's `draft`: the same libjpeg DCT scaling as OpenCV's reduced modes (tests/test_decode.py: identical pixels)."""
    with Image.open(path) as im:  # draft takes the largest scale with side // requested >= scale
        im.draft("RGB", (max(1, im.width // factor), max(1, im.height // factor)))
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def decode_image(path: str | Path, orig_hw: tuple[int, int], cover_hw: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, 3) RGB, upright, at least `cover_hw` where the original is: a JPEG at 1/2, 1/4 or 1/8.

    OpenCV applies the EXIF orientation in its reduced modes as PIL does (tested); a file OpenCV cannot
    read, or reads at another size, goes through PIL's reduced decode instead.
    """
    path = Path(path)
    factor = reduction_factor(orig_hw, cover_hw)
    if factor == 1 or not _is_jpeg(path):
        return load_image(path)
    expected = (math.ceil(orig_hw[0] / factor), math.ceil(orig_hw[1] / factor))
    image = cv2.imread(str(path), REDUCED_FLAGS[factor])
    if image is None or image.shape[:2] != expected:
        return _pil_reduced(path, factor)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_for_input(path: str | Path, orig_hw: tuple[int, int], min_size: int, max_size: int) -> np.ndarray:
    """The image decoded for a resize to (min_size, max_size) of its original size `orig_hw`; `resize_uint8` follows."""
    return decode_image(path, orig_hw, resized_size(orig_hw[0], orig_hw[1], min_size, max_size))
