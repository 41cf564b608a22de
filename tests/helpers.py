"""Helpers shared by the tests: paths, tiny-model overrides, and small runners (fixtures are in conftest.py)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from retinanet.cli import train

REPO = Path(__file__).resolve().parents[1]

SHARED_TINY_COCO = REPO.parent / "shared" / "data" / "tiny_coco"

TINY_OVERRIDES = [
    "model.backbone.name=resnet18",
    "model.backbone.weights=none",
    "model.backbone.norm=bn",
    "model.fpn.channels=32",
    "model.head.channels=32",
    "model.head.num_convs=2",
    "model.head.norm=gn",
    "model.anchors.sizes=[16,32,64,128,256]",
    "input.min_size=[128]",
    "input.max_size=160",
    "train.amp=none",  # tests that compare values pin the precision: auto is bf16 on a CPU with AMX
    "eval.amp=none",
]


TINY_MODEL = [
    "model.backbone.name=resnet18",
    "model.fpn.channels=32",
    "model.head.channels=32",
    "model.head.num_convs=1",
    "model.head.norm=none",
    "data.num_workers=0",
    "train.batch_size=4",
    "train.log_every=1",
    "train.warmup_iters=0",
    "train.schedule=constant",
    "train.amp=none",  # tests that compare values pin the precision: auto is bf16 on a CPU with AMX
    "eval.amp=none",
    "eval.batch_size=8",
    "eval.num_vis_images=2",
]


def synthetic_overrides(root: Path) -> list[str]:
    return [
        f"data.train.images={root / 'train'}",
        f"data.train.annotations={root / 'annotations' / 'instances_train.json'}",
        f"data.val.images={root / 'val'}",
        f"data.val.annotations={root / 'annotations' / 'instances_val.json'}",
        "input.min_size=[64]",
        "input.max_size=64",
        "train.device=cpu",  # the tests' expected values are the CPU's (a GPU machine would pick cuda)
        *TINY_MODEL,
    ]


def run_train(out: Path, overrides: list[str], resume: bool = False) -> int:
    args = ["--config", str(REPO / "configs" / "demo_cpu.yaml"), "--output-dir", str(out)]
    args += ["--set", *overrides] if overrides else []
    return train.main(args + (["--resume"] if resume else []))


def make_coco(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO from an in-memory dataset dict, without its index-building chatter."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def make_large_photos(root: Path, count: int = 3) -> tuple[Path, Path]:
    """data/sample's val photos upscaled to 2048x1371 (1371x2048 portrait) JPEGs, boxes scaled with them.

    The last one is stored turned and carries EXIF orientation 6, as phones write portraits. Returns
    (image folder, annotations json) of a COCO split whose json sizes are the upright sizes.
    """
    import json

    from PIL import Image

    source = json.loads((REPO / "data" / "sample" / "annotations" / "instances_val.json").read_text())
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, info in enumerate(sorted(source["images"], key=lambda im: im["id"])[:count]):
        size = (2048, 1371) if info["width"] >= info["height"] else (1371, 2048)
        sx, sy = size[0] / info["width"], size[1] / info["height"]
        with Image.open(REPO / "data" / "sample" / "val" / info["file_name"]) as im:
            upright = im.convert("RGB").resize(size, Image.BILINEAR)
        if index == count - 1:
            exif = Image.Exif()
            exif[0x0112] = 6  # shown turned 90 degrees clockwise
            upright.transpose(Image.Transpose.ROTATE_90).save(images_dir / info["file_name"], quality=90, exif=exif)
        else:
            upright.save(images_dir / info["file_name"], quality=90)
        images.append({**info, "width": size[0], "height": size[1]})
        for ann in source["annotations"]:
            if ann["image_id"] == info["id"]:
                x, y, w, h = ann["bbox"]
                annotations.append({**ann, "bbox": [x * sx, y * sy, w * sx, h * sy], "segmentation": []})
    annotations_file = root / "instances.json"
    annotations_file.write_text(json.dumps({**source, "images": images, "annotations": annotations}))
    return images_dir, annotations_file
