"""`data.cache`: each image decoded and resized once, kept as uint8 in RAM or in a cache folder.

An image is kept at its *frame*: the largest size its split can ask for (training: the largest
`input.min_size` with `input.max_size`; evaluation: its own size), or its original size where that
is smaller. It is read by `decode_for_input` and shrunk by `resize_uint8`, as every input path does.

- `ram`: one uint8 buffer for the whole split, filled in the main process when a loader is built
  (a thread pool decodes, a progress bar shows it). DataLoader workers forked after that share its
  pages copy-on-write, since nothing writes to them again; under the `spawn` start method (macOS,
  Windows) each worker holds a copy. A changed file is seen at the next start.
- `disk`: one file per image in the cache folder, named by the image's absolute path, its frame and
  the format version; its header holds the source file's mtime and size and a CRC-32 of the pixels.
  Missing or stale entries are built when a loader is built; every read checks the header, the
  file size, the source's mtime and size and the CRC. An entry that fails is decoded again and
  rewritten (logged once per entry), never trusted. Entries are written to a temporary file and
  renamed (`os.replace`), so a crash or two workers at once never leave half an entry.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from retinanet.config import ConfigError
from retinanet.data.decode import decode_for_input
from retinanet.data.validate import DatasetError
from retinanet.modeling.preprocess import resize_scale, resize_uint8, resized_size

logger = logging.getLogger("retinanet.data")

MODES = ("none", "ram", "disk")
FORMAT_VERSION = 1
MAGIC = b"RNIC"
# magic, format version, channels, height, width, source mtime_ns, source size, CRC-32 of the pixels
HEADER = struct.Struct("<4sHHIIqqI")
# The decoder is part of an entry's name: another OpenCV may decode a JPEG to other pixels.
DECODER = f"opencv-{cv2.__version__}"


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/retinanet, else ~/.cache/retinanet: outside the dataset, which may be read-only."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "retinanet"


def available_memory() -> int | None:
    """Bytes of memory available without swapping (Linux: MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def frame_size(orig_hw: tuple[int, int], min_size: int, max_size: int) -> tuple[int, int]:
    """The size an image is kept at: its resize to (min_size, max_size), or its own size if that is not smaller."""
    if resize_scale(orig_hw[0], orig_hw[1], min_size, max_size) >= 1.0:
        return orig_hw
    return resized_size(orig_hw[0], orig_hw[1], min_size, max_size)


def read_frame(path: Path, orig_hw: tuple[int, int], frame_hw: tuple[int, int], min_size: int, max_size: int) -> np.ndarray:
    """The pixels an entry holds: the input path's decode, resized to the frame."""
    return resize_uint8(decode_for_input(path, orig_hw, min_size, max_size), frame_hw)


@dataclass(frozen=True)
class CachedImage:
    path: Path
    orig_hw: tuple[int, int]
    frame_hw: tuple[int, int]


class ImageCache:
    """Frames of a split's images by dataset index, in RAM or on disk (`fill` first, then `get`)."""

    def __init__(
        self, mode: str, images: Sequence[CachedImage], min_size: int, max_size: int, folder: Path | None, name: str
    ) -> None:
        if mode not in ("ram", "disk"):
            raise ValueError(f"cache mode must be 'ram' or 'disk', got {mode!r}")
        self.mode = mode
        self.images = list(images)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.name = name
        self.folder = None if folder is None else Path(folder) / "images"
        sizes = [h * w * 3 for h, w in (im.frame_hw for im in self.images)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.nbytes = int(self.offsets[-1])
        self._buffer: np.ndarray | None = None
        self._filled = np.zeros(len(self.images), dtype=bool)
        self._warned: set[int] = set()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_warned"] = set()  # a worker logs its own rebuilds
        return state

    # ------------------------------------------------------------------ both modes

    def _images_at(self) -> str:
        """'N images at up to WxH' (the largest frame)."""
        height, width = max((im.frame_hw for im in self.images), key=lambda hw: hw[0] * hw[1], default=(0, 0))
        return f"{len(self.images)} images at up to {width}x{height}"

    def describe(self) -> str:
        """'N images at up to WxH: X MB in RAM (Y MB per 1,000 images at this size)' for the start-up log."""
        per_1000 = self.nbytes / max(1, len(self.images)) * 1000
        where = "in RAM" if self.mode == "ram" else f"on disk in {self.folder}"
        return (f"{self._images_at()}: {self.nbytes / 1e6:.0f} MB {where} "
                f"({per_1000 / 1e6:.0f} MB per 1,000 images at this size)")

    def fill(self, threads: int | None = None) -> None:
        """Decode what is not cached yet, in a thread pool with a progress bar (main process, before workers fork)."""
        if self.mode == "ram" and self._buffer is None:
            available = available_memory()
            if available is not None and self.nbytes > available:
                raise ConfigError(
                    f"data.cache=ram: {self.name} needs {self.nbytes / 1e9:.1f} GB ({self._images_at()}), more than the "
                    f"{available / 1e9:.1f} GB of memory available; use data.cache=disk or none"
                )
            self._buffer = np.empty(self.nbytes, dtype=np.uint8)
        if self.mode == "ram":
            todo = [i for i in range(len(self.images)) if not self._filled[i]]
        else:  # entries may have gone stale since the last fill: check each header
            todo = [i for i in range(len(self.images)) if not self._entry_ok(i)]
        if todo:
            threads = threads or max(1, min(8, os.cpu_count() or 1))
            with ThreadPoolExecutor(threads) as pool, tqdm(total=len(todo), desc=f"caching {self.name} ({self.mode})",
                                                           unit="img", leave=False) as bar:
                for _ in pool.map(self._build, todo):
                    bar.update()
        self._filled[:] = True  # RAM: every slot holds its image
        logger.info("data.cache=%s: %s: %s (%d decoded now)", self.mode, self.name, self.describe(), len(todo))

    def get(self, index: int) -> np.ndarray:
        """The frame of image `index`, (h, w, 3) uint8; built here if it is missing or fails its checks."""
        if self.mode == "ram":
            if self._buffer is None:
                self._buffer = np.empty(self.nbytes, dtype=np.uint8)
            if not self._filled[index]:
                self._build(index)
                self._filled[index] = True
            return self._view(index)
        pixels = self._read_entry(index)
        if pixels is None:
            pixels = self._build(index)
        return pixels

    def _decode(self, index: int) -> np.ndarray:
        im = self.images[index]
        try:
            return read_frame(im.path, im.orig_hw, im.frame_hw, self.min_size, self.max_size)
        except OSError as exc:  # damage past the header, which start-up validation cannot see
            raise DatasetError(f"{im.path}: cannot decode the image ({exc}); replace the file or remove the image") from None

    def _build(self, index: int) -> np.ndarray:
        pixels = self._decode(index)
        if self.mode == "ram":
            view = self._view(index)
            view[...] = pixels
            return view
        self._write_entry(index, pixels)
        return pixels

    def _entry_ok(self, index: int) -> bool:
        """The disk entry's header and size match the image and its source file (its CRC is checked on read)."""
        try:
            with open(self.entry_path(index), "rb") as f:
                return self._header_ok(index, f.read(HEADER.size), os.fstat(f.fileno()).st_size) is not None
        except OSError:
            return False

    # ------------------------------------------------------------------ RAM

    def _view(self, index: int) -> np.ndarray:
        h, w = self.images[index].frame_hw
        assert self._buffer is not None
        return self._buffer[self.offsets[index] : self.offsets[index + 1]].reshape(h, w, 3)

    # ------------------------------------------------------------------ disk

    def entry_path(self, index: int) -> Path:
        im = self.images[index]
        assert self.folder is not None
        key = f"{im.path.resolve()}\0{im.frame_hw[0]}x{im.frame_hw[1]}\0v{FORMAT_VERSION}\0{DECODER}"
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.rgb"

    def _source_stat(self, index: int) -> tuple[int, int]:
        st = self.images[index].path.stat()
        return st.st_mtime_ns, st.st_size

    def _header_ok(self, index: int, header: bytes, file_size: int) -> int | None:
        """The CRC the header promises if the header fits this image, its source file and the entry's size; else None."""
        if len(header) != HEADER.size:
            return None
        magic, version, channels, h, w, mtime_ns, size, crc = HEADER.unpack(header)
        if (magic, version, channels, (h, w)) != (MAGIC, FORMAT_VERSION, 3, self.images[index].frame_hw):
            return None
        if file_size != HEADER.size + h * w * 3 or (mtime_ns, size) != self._source_stat(index):
            return None
        return crc

    def _read_entry(self, index: int) -> np.ndarray | None:
        """The entry's pixels if every check passes; None (and one warning for a damaged entry) otherwise."""
        path = self.entry_path(index)
        h, w = self.images[index].frame_hw
        try:
            with open(path, "rb") as f:
                header = f.read(HEADER.size)
                file_size = os.fstat(f.fileno()).st_size
                crc = self._header_ok(index, header, file_size)
                if crc is not None:
                    pixels = np.empty((h, w, 3), dtype=np.uint8)
                    if f.readinto(memoryview(pixels).cast("B")) == pixels.nbytes and zlib.crc32(pixels) == crc:
                        return pixels
        except FileNotFoundError:
            return None
        except OSError:
            pass
        if index not in self._warned:
            self._warned.add(index)
            logger.warning("data.cache=disk: %s (cache entry of %s) is damaged or stale; decoding the image again",
                           path, self.images[index].path)
        return None

    def _write_entry(self, index: int, pixels: np.ndarray) -> None:
        """Header and pixels to a temporary file, then renamed over the entry: readers see a whole entry or none."""
        path = self.entry_path(index)
        mtime_ns, size = self._source_stat(index)
        h, w = pixels.shape[:2]
        header = HEADER.pack(MAGIC, FORMAT_VERSION, 3, h, w, mtime_ns, size, zlib.crc32(pixels))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(header)
                f.write(np.ascontiguousarray(pixels).data)
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only disk costs speed, never the run
            with contextlib.suppress(OSError):
                tmp.unlink()
            if index not in self._warned:
                self._warned.add(index)
                logger.warning("data.cache=disk: cannot write %s (%s); this image is decoded on every read", path, exc)
