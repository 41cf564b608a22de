"""Dataset validation: every problem of a COCO json + image folder, found at start-up and reported at once.

Users bring their own data, so a bad record must stop the run before training starts (or, with
`data.on_invalid=skip`, be removed with a logged summary), never surface as a traceback deep in a
DataLoader worker or as a silently wrong box. `validate_coco` only reads; `clean_coco` makes the
copy that is actually loaded.

Problems (an error, or skipped) and notes (fine, fixed in the loaded copy and logged) are kept apart:
a note never stops a run. Image files are checked from their headers (PIL `verify`), not decoded,
except that a JPEG without an end-of-image marker is decoded at 1/8 scale to tell truncation from
trailing data.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from retinanet.data.decode import EXIF_ORIENTATION

FIX_HINT = "fix the records or set data.on_invalid=skip"
REQUIRED_KEYS = ("images", "annotations", "categories")
MAX_EXAMPLES = 3
JPEG_END = b"\xff\xd9"  # EOI; byte stuffing keeps it out of the entropy-coded data
JPEG_TAIL_BYTES = 4096

# Problem kinds in report order -> label. Counts are records (an annotation can have several kinds).
PROBLEMS: dict[str, str] = {
    "category_malformed": "category record without an integer id",
    "duplicate_category_id": "duplicate category id",
    "image_malformed": "image record with a missing or bad field",
    "duplicate_image_id": "duplicate image id",
    "image_missing": "image file missing",
    "image_empty": "image file empty (0 bytes)",
    "image_unreadable": "image file not an image",
    "image_truncated": "image file truncated or corrupt",
    "image_size_mismatch": "image size differs from the json width/height",
    "annotation_malformed": "annotation with a missing or bad field",
    "duplicate_annotation_id": "duplicate annotation id",
    "unknown_image_id": "annotation of an unknown image id",
    "unknown_category_id": "annotation of an unknown category id",
    "bbox_wrong_length": "bbox not 4 numbers",
    "bbox_not_finite": "bbox with NaN or inf",
    "bbox_negative_size": "bbox with negative width or height",
    "bbox_zero_size": "bbox with zero width or height",
    "bbox_outside_image": "bbox entirely outside the image",
}

# Note kinds -> label: not errors; the loaded copy fixes them (or the box clipping does).
NOTES: dict[str, str] = {
    "bbox_partly_outside": "bbox partly outside the image (clipped)",
    "annotation_id_zero": "annotation id <= 0 (renumbered: pycocotools reads id 0 as 'unmatched')",
    "placeholder_category": "unused placeholder category 0 (removed: not a class)",
}


class DatasetError(RuntimeError):
    """A dataset that cannot be used; the message names the file and the fix."""


class InvalidRecordsError(DatasetError, KeyError):
    """Invalid records under `on_invalid=error`; the message is the report.

    Also a KeyError because `CocoDetection` raised KeyError for an undeclared category id before
    validation existed, and callers may catch that.
    """

    __str__ = BaseException.__str__  # KeyError's would wrap the report in quotes


@dataclass
class ValidationReport:
    """What `validate_coco` found: problems and notes with counts and first examples, and the bad records.

    Bad records are list positions in the json (ids can be missing or duplicated, so they cannot
    name a record); `bad_annotation_ids` / `bad_image_ids` give their ids where they have one.
    """

    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    note_counts: Counter = field(default_factory=Counter)
    note_examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    bad_annotation_indices: set[int] = field(default_factory=set)
    bad_image_indices: set[int] = field(default_factory=set)
    bad_category_indices: set[int] = field(default_factory=set)
    placeholder_category_ids: set[int] = field(default_factory=set)
    bad_annotation_ids: set[int] = field(default_factory=set)
    bad_image_ids: set[int] = field(default_factory=set)
    images_dir: Path | None = None
    num_images_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when there is no problem (notes are fine)."""
        return not self.counts

    def add_problem(self, kind: str, example: str, annotation: tuple[int, Any] | None = None,
                    image: tuple[int, Any] | None = None, category_index: int | None = None) -> None:
        """Count one record under `kind`; `annotation` / `image` are (list position, id) of the record to drop."""
        self.counts[kind] += 1
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append(example)
        if annotation is not None:
            self.bad_annotation_indices.add(annotation[0])
            if _is_id(annotation[1]):
                self.bad_annotation_ids.add(annotation[1])
        if image is not None:
            self.bad_image_indices.add(image[0])
            if _is_id(image[1]):
                self.bad_image_ids.add(image[1])
        if category_index is not None:
            self.bad_category_indices.add(category_index)

    def add_note(self, kind: str, example: str) -> None:
        self.note_counts[kind] += 1
        if len(self.note_examples[kind]) < MAX_EXAMPLES:
            self.note_examples[kind].append(example)

    def kind_counts(self) -> str:
        """'label: n, label: n' over the problems, in report order."""
        return ", ".join(f"{PROBLEMS[k]}: {self.counts[k]}" for k in PROBLEMS if self.counts[k])

    def cause(self) -> str:
        """The likely single cause when no image file exists at all: a wrong images folder."""
        if self.num_images_checked and self.counts["image_missing"] == self.num_images_checked:
            return f"; none of the {self.num_images_checked} image files exist in {self.images_dir}: check the images folder"
        return ""

    def summary(self) -> str:
        """Multi-line report: one line per problem kind and per note kind, with counts and first examples."""
        classes = self.num_categories - len(self.placeholder_category_ids)  # the placeholder is not a class
        placeholder = " (and the placeholder category 0, not a class)" if self.placeholder_category_ids else ""
        lines = [f"{self.num_images} images, {self.num_annotations} annotations, {classes} categories{placeholder}"]
        if self.ok:
            lines.append("problems: none")
        else:
            lines.append(f"problems: {sum(self.counts.values())}{self.cause()}")
            lines += _detail_lines(PROBLEMS, self.counts, self.examples)
        if self.note_counts:
            lines.append(f"notes: {sum(self.note_counts.values())}")
            lines += _detail_lines(NOTES, self.note_counts, self.note_examples)
        return "\n".join(lines)

    def error_message(self, source: str | Path) -> str:
        """DatasetError text: a first line that stands alone, the examples, and the fix hint last."""
        total = sum(self.counts.values())
        first = f"{source}: {total} invalid record{'s' * (total != 1)} ({self.kind_counts()}){self.cause()}; {FIX_HINT}"
        details = _detail_lines(PROBLEMS, self.counts, self.examples)
        return "\n".join([first, *details, f"scripts/check_dataset.py shows the full report; {FIX_HINT}"])

    def notes_message(self, source: str | Path) -> str:
        """One log record for the notes, or '' when there are none."""
        if not self.note_counts:
            return ""
        head = ", ".join(f"{NOTES[k]}: {self.note_counts[k]}" for k in NOTES if self.note_counts[k])
        return "\n".join([f"{source}: notes: {head}", *_detail_lines(NOTES, self.note_counts, self.note_examples)])


def _detail_lines(labels: Mapping[str, str], counts: Counter, examples: Mapping[str, list[str]]) -> list[str]:
    lines = []
    for kind, label in labels.items():
        if counts[kind]:
            more = f"; ... {counts[kind] - len(examples[kind])} more" if counts[kind] > len(examples[kind]) else ""
            lines.append(f"  {label} ({counts[kind]}): {'; '.join(examples[kind])}{more}")
    return lines


def _is_id(value: Any) -> bool:
    """COCO ids are integers; bool is an int subclass but never an id."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- the file


def load_coco_json(path: str | Path) -> dict:
    """Read a COCO json and check its top level; every failure is a one-line DatasetError naming the file.

    These are fatal whatever `on_invalid` says: there are no records to skip.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: annotation file not found; check the path")
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder; expected a COCO json file such as instances_train.json")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the annotation file ({exc.strerror}); check its permissions") from None
    try:
        dataset = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); fix or re-export the file"
        ) from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not valid JSON (binary, not UTF-8 text); point to the COCO json file") from None
    check_structure(dataset, path)
    return dataset


def check_structure(dataset: Any, source: str | Path) -> None:
    """Raise DatasetError unless `dataset` is an object with `images`, `annotations` and `categories` lists."""
    if not isinstance(dataset, dict):
        raise DatasetError(
            f"{source}: expected a COCO object with images, annotations and categories, got a JSON {type(dataset).__name__}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in dataset]
    if missing:
        has = ", ".join(map(str, dataset)) or "nothing"
        raise DatasetError(
            f"{source}: not a COCO detection file: missing {' and '.join(repr(k) for k in missing)} (it has: {has}); "
            "export the dataset in COCO instances format"
        )
    for key in REQUIRED_KEYS:
        if not isinstance(dataset[key], list):
            raise DatasetError(f"{source}: '{key}' must be a list, got {type(dataset[key]).__name__}")
    for key in ("images", "categories"):
        if not dataset[key]:
            raise DatasetError(f"{source}: '{key}' is empty; a dataset needs at least one")


# ----------------------------------------------------------------------------- records


def validate_coco(dataset_json: dict, images_dir: Path, check_images: bool = True) -> ValidationReport:
    """Check every record (and, with `check_images`, every image file's header); never modifies the input."""
    check_structure(dataset_json, "dataset")
    images_dir = Path(images_dir)
    report = ValidationReport(
        num_images=len(dataset_json["images"]),
        num_annotations=len(dataset_json["annotations"]),
        num_categories=len(dataset_json["categories"]),
        images_dir=images_dir,
    )
    category_ids = _check_categories(dataset_json["categories"], report)
    sizes = _check_images(dataset_json["images"], images_dir, check_images, report)
    image_ids = {img["id"] for img in dataset_json["images"] if isinstance(img, dict) and _is_id(img.get("id"))}
    used_category_ids = _check_annotations(dataset_json["annotations"], image_ids, sizes, category_ids, report)
    _find_placeholder(dataset_json["categories"], used_category_ids, report)
    return report


def _check_categories(categories: Sequence[Any], report: ValidationReport) -> set[int]:
    """Declared category ids; later records of a duplicated id are bad (the first keeps K and the name)."""
    first_name: dict[int, str] = {}
    for index, cat in enumerate(categories):
        cat_id = cat.get("id") if isinstance(cat, dict) else None
        if not _is_id(cat_id):
            report.add_problem("category_malformed", f"category #{index}: {_short(cat)}", category_index=index)
        elif cat_id in first_name:
            report.add_problem(
                "duplicate_category_id",
                f"category id {cat_id}: {cat.get('name')!r} and {first_name[cat_id]!r}",
                category_index=index,
            )
        else:
            first_name[cat_id] = str(cat.get("name", cat_id))
    return set(first_name)


def _image_record_problem(img: Any) -> str:
    """Why an image record is unusable, or ''."""
    if not isinstance(img, dict):
        return f"not an object: {_short(img)}"
    if not _is_id(img.get("id")):
        return f"id {img.get('id')!r} is not an integer"
    if not isinstance(img.get("file_name"), str) or not img["file_name"]:
        return "missing 'file_name'"
    for key in ("width", "height"):
        value = img.get(key)
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            return f"{key} {value!r} is not a positive number"
    return ""


def _check_images(
    images: Sequence[Any], images_dir: Path, check_files: bool, report: ValidationReport
) -> dict[int, tuple[float, float]]:
    """Image records and files; returns (width, height) per image id for the box checks."""
    id_count = Counter(img["id"] for img in images if isinstance(img, dict) and _is_id(img.get("id")))
    sizes: dict[int, tuple[float, float]] = {}
    to_check: list[tuple[int, dict]] = []
    for index, img in enumerate(images):
        problem = _image_record_problem(img)
        if problem:
            image_id = img.get("id") if isinstance(img, dict) else None
            report.add_problem("image_malformed", f"image #{index}: {problem}", image=(index, image_id))
            continue
        sizes[img["id"]] = (float(img["width"]), float(img["height"]))
        if id_count[img["id"]] > 1:
            report.add_problem(
                "duplicate_image_id",
                f"image {img['id']} ({img['file_name']}): record #{index}, {id_count[img['id']]} share this id",
                image=(index, img["id"]),
            )
        to_check.append((index, img))
    if check_files and to_check:
        report.num_images_checked = len(to_check)
        paths = [images_dir / img["file_name"] for _, img in to_check]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(check_image_file, paths, [img["width"] for _, img in to_check],
                                    [img["height"] for _, img in to_check]))
        for (index, img), result in zip(to_check, results):
            if result is not None:
                kind, detail = result
                report.add_problem(kind, f"image {img['id']} ({img['file_name']}): {detail}", image=(index, img["id"]))
    return sizes


def _check_annotations(
    annotations: Sequence[Any], image_ids: set[int], sizes: Mapping[int, tuple[float, float]],
    category_ids: set[int], report: ValidationReport,
) -> set[int]:
    """Fields, ids, references and boxes of every annotation; returns every category id an annotation uses.

    `image_ids` includes malformed image records with an integer id: their annotations go with
    them and are not also reported as pointing to an unknown image.
    """
    id_count = Counter(a["id"] for a in annotations if isinstance(a, dict) and _is_id(a.get("id")))
    used_category_ids: set[int] = set()
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            report.add_problem("annotation_malformed", f"annotation #{index}: not an object: {_short(ann)}",
                               annotation=(index, None))
            continue
        ann_id, image_id, category_id = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        if _is_id(category_id):
            used_category_ids.add(category_id)
        name = f"annotation {ann_id} (image {image_id})" if _is_id(ann_id) else f"annotation #{index} (image {image_id})"
        where = (index, ann_id)
        missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in ann]
        wrong = [k for k in ("id", "image_id", "category_id") if k in ann and not _is_id(ann[k])]
        if missing or wrong:
            detail = "; ".join([f"missing {', '.join(map(repr, missing))}"] * bool(missing)
                               + [f"{k} {ann[k]!r} is not an integer" for k in wrong])
            report.add_problem("annotation_malformed", f"{name}: {detail}", annotation=where)
            continue
        if id_count[ann_id] > 1:
            report.add_problem("duplicate_annotation_id", f"{name}: record #{index}, {id_count[ann_id]} share this id",
                               annotation=where)
        elif ann_id <= 0:
            report.add_note("annotation_id_zero", f"{name}")
        if image_id not in image_ids:
            report.add_problem("unknown_image_id", f"{name}: image id {image_id} is not in images", annotation=where)
        if category_id not in category_ids:
            known = sorted(category_ids)
            shown = ", ".join(map(str, known[:10])) + (", ..." if len(known) > 10 else "")
            report.add_problem("unknown_category_id", f"{name}: category id {category_id} is not declared (declared: {shown})",
                               annotation=where)
        _check_bbox(ann["bbox"], sizes.get(image_id), name, where, report)
    return used_category_ids


def _check_bbox(bbox: Any, size: tuple[float, float] | None, name: str, where: tuple[int, Any],
                report: ValidationReport) -> None:
    """One COCO [x, y, w, h] box; `size` is the image's json (width, height), None when the image is unknown."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        report.add_problem("bbox_wrong_length", f"{name}: bbox {_short(bbox)}", annotation=where)
        return
    if not all(math.isfinite(v) for v in bbox):
        report.add_problem("bbox_not_finite", f"{name}: bbox {bbox}", annotation=where)
        return
    x, y, w, h = bbox
    if w < 0 or h < 0:
        report.add_problem("bbox_negative_size", f"{name}: bbox {bbox}", annotation=where)
        return
    if w == 0 or h == 0:
        report.add_problem("bbox_zero_size", f"{name}: bbox {bbox}", annotation=where)
        return
    if size is None:
        return
    width, height = size
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        report.add_problem(
            "bbox_outside_image", f"{name}: bbox {bbox} in a {width:g}x{height:g} image", annotation=where
        )
    elif x < 0 or y < 0 or x + w > width or y + h > height:
        report.add_note("bbox_partly_outside", f"{name}: bbox {bbox} in a {width:g}x{height:g} image")


def _find_placeholder(categories: Sequence[Any], used_category_ids: set[int], report: ValidationReport) -> None:
    """Roboflow's export declares category 0, named like the supercategory of all the others, and never uses it.

    Only that signature counts: an unused id 0 without it may be a real class missing from this
    split, and removing it here but not in the other split would shift every label.
    """
    cats = [c for i, c in enumerate(categories) if i not in report.bad_category_indices]
    zero = [c for c in cats if c["id"] == 0]
    others = [c for c in cats if c["id"] != 0]
    if len(zero) != 1 or not others or 0 in used_category_ids:
        return
    name = zero[0].get("name")
    if name is not None and all(c.get("supercategory") == name for c in others):
        report.placeholder_category_ids.add(0)
        report.add_note("placeholder_category", f"category 0 {name!r} (the supercategory of the others)")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- image files


def check_image_file(path: Path, width: float, height: float) -> tuple[str, str] | None:
    """(problem kind, detail) for an image file, or None when it is fine.

    Reads the header and verifies it; PNG's verify reads every chunk CRC, so truncation shows. JPEG's
    verify does nothing, so a JPEG must end with an end-of-image marker after its scan header, or,
    failing that (data appended after the image, as in motion photos), decode at 1/8 scale.
    The header size, turned by EXIF orientations 5-8 as `load_image` turns the pixels, must equal
    the json's width x height, which is the frame the boxes are in.
    """
    try:
        num_bytes = path.stat().st_size
    except FileNotFoundError:
        return "image_missing", f"{path} not found"
    except OSError as exc:
        return "image_unreadable", f"{path}: {exc.strerror}"
    if not path.is_file():
        return "image_unreadable", f"{path} is not a file"
    if num_bytes == 0:
        return "image_empty", f"{path} is 0 bytes"
    try:
        with Image.open(path) as im:
            stored_w, stored_h = im.size
            image_format = im.format
            # The base method reads only what the header holds; PngImageFile.getexif decodes every pixel.
            orientation = int(Image.Image.getexif(im).get(EXIF_ORIENTATION, 1) or 1)
            scan_start = im.fp.tell() if image_format == "JPEG" else 0
            im.verify()
        if image_format == "JPEG" and not _jpeg_has_end(path, scan_start, num_bytes):
            _decode_reduced(path)
    except UnidentifiedImageError:
        return "image_unreadable", f"{path} is not an image file PIL can read ({num_bytes} bytes)"
    except Exception as exc:  # any failure to read the file is a bad file: report it, do not crash the check
        return "image_truncated", f"{path}: {type(exc).__name__}: {exc}"
    upright_w, upright_h = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)
    if (upright_w, upright_h) != (width, height):
        turned = f", {upright_w}x{upright_h} after EXIF orientation {orientation}" if orientation in (5, 6, 7, 8) else ""
        return "image_size_mismatch", f"json says {width:g}x{height:g}, file is {stored_w}x{stored_h}{turned}"
    return None


def _jpeg_has_end(path: Path, scan_start: int, num_bytes: int) -> bool:
    """Whether the bytes after the first scan header end with (or contain near the end) the EOI marker."""
    with open(path, "rb") as f:
        f.seek(max(scan_start, num_bytes - JPEG_TAIL_BYTES))
        return JPEG_END in f.read()


def _decode_reduced(path: Path) -> None:
    """Decode a JPEG at 1/8 scale: every entropy-coded byte is read, so truncation raises OSError."""
    with Image.open(path) as im:
        im.draft("RGB", (1, 1))
        im.load()


# ----------------------------------------------------------------------------- the loaded copy


@dataclass(frozen=True)
class CleanResult:
    """The dataset that gets loaded, and what was removed from it to get there."""

    dataset: dict
    skipped_annotations: int
    skipped_images: int


def clean_coco(dataset_json: dict, report: ValidationReport) -> CleanResult:
    """A copy without the bad records, their images' annotations and the placeholder category, with positive ids.

    Annotations go with a bad image. Of a duplicated category id the first record stays, so K does
    not depend on which records are bad. Annotation ids <= 0 get new ids above the largest, so every
    other id still matches the user's file. The input is never modified.
    """
    images = [img for i, img in enumerate(dataset_json["images"]) if i not in report.bad_image_indices]
    kept_image_ids = {img["id"] for img in images}
    categories = [
        c for i, c in enumerate(dataset_json["categories"])
        if i not in report.bad_category_indices and c["id"] not in report.placeholder_category_ids
    ]
    kept_category_ids = {c["id"] for c in categories}
    annotations = [
        ann for index, ann in enumerate(dataset_json["annotations"])
        if index not in report.bad_annotation_indices
        and ann["image_id"] in kept_image_ids and ann["category_id"] in kept_category_ids
    ]
    next_id = max((a["id"] for a in annotations), default=0) + 1
    for k, ann in enumerate(annotations):
        if ann["id"] <= 0:
            annotations[k] = {**ann, "id": next_id}
            next_id += 1
    cleaned = {**dataset_json, "images": images, "annotations": annotations, "categories": categories}
    return CleanResult(
        dataset=cleaned,
        skipped_annotations=len(dataset_json["annotations"]) - len(annotations),
        skipped_images=len(dataset_json["images"]) - len(images),
    )


def skip_message(source: str | Path, report: ValidationReport, result: CleanResult) -> str:
    """The `on_invalid=skip` log record: 'skipped N annotations, M images: ...' and the examples."""
    first = (
        f"{source}: data.on_invalid=skip: skipped {result.skipped_annotations} annotations, "
        f"{result.skipped_images} images: {report.kind_counts()}"
    )
    return "\n".join([first, *_detail_lines(PROBLEMS, report.counts, report.examples)])

