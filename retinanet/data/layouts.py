"""A dataset folder as an exporter lays it out -> the paths of data.train, data.val and data.test (`--data DIR`).

A layout is recognised by its annotation files; the first layout with any of them wins:
- Roboflow's COCO export: DIR/{train,valid,test}/_annotations.coco.json, each beside its images;
- COCO 2017: DIR/annotations/instances_{train,val}2017.json, images in DIR/train2017 and DIR/val2017
  (COCO publishes no test annotations);
- this repository's (data/sample, data/synthetic): DIR/annotations/instances_{train,val,test}.json,
  images in DIR/train, DIR/val and DIR/test.
A split whose annotation file is missing is left empty, so nothing of the config's own dataset mixes in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from retinanet.config import ConfigError, SplitConfig

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Layout:
    name: str
    files: dict[str, tuple[str, str]]  # split -> (annotations file, image folder), relative to DIR


LAYOUTS = (
    Layout("Roboflow COCO export", {
        "train": ("train/_annotations.coco.json", "train"),
        "val": ("valid/_annotations.coco.json", "valid"),
        "test": ("test/_annotations.coco.json", "test"),
    }),
    Layout("COCO 2017", {
        "train": ("annotations/instances_train2017.json", "train2017"),
        "val": ("annotations/instances_val2017.json", "val2017"),
    }),
    Layout("this repository's layout", {
        "train": ("annotations/instances_train.json", "train"),
        "val": ("annotations/instances_val.json", "val"),
        "test": ("annotations/instances_test.json", "test"),
    }),
)


@dataclass(frozen=True)
class DataFolder:
    """What `find_layout` recognised in DIR: every split's paths (empty where DIR has none)."""

    root: Path
    layout: Layout
    splits: dict[str, SplitConfig]

    def has(self, split: str) -> bool:
        return bool(self.splits[split].annotations)

    def looked_for(self, split: str) -> str:
        """Where the split would be, for an error message."""
        files = self.layout.files.get(split)
        if files is None:
            return f"the {self.layout.name} layout has no {split} annotations"
        return f"looked for {self.root / files[0]} ({self.layout.name})"

    def overrides(self) -> list[str]:
        """`--set` pairs for data.{train,val,test}; each path JSON-quoted, so YAML reads it as a string."""
        return [f"data.{split}.{key}={json.dumps(getattr(self.splits[split], key))}"
                for split in SPLITS for key in ("images", "annotations")]

    def describe(self) -> str:
        present = ", ".join(f"{split} {self.splits[split].annotations}" for split in SPLITS if self.has(split))
        return f"--data {self.root}: {self.layout.name}: {present}"


def find_layout(root: str | Path) -> DataFolder:
    """The layout of a dataset folder; a ConfigError naming what was looked for when none matches."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--data {root}: not a folder; check the path")
    for layout in LAYOUTS:
        found = {split: (root / ann, root / images) for split, (ann, images) in layout.files.items()
                 if (root / ann).is_file()}
        if not found:
            continue
        for split, (annotations, images) in found.items():
            if not images.is_dir():
                raise ConfigError(f"--data {root}: {images} is not a folder (the images of {annotations}); "
                                  "put the images there")
        splits = {split: SplitConfig(images=str(found[split][1]), annotations=str(found[split][0]))
                  if split in found else SplitConfig() for split in SPLITS}
        return DataFolder(root, layout, splits)
    if (root / "_annotations.coco.json").is_file():
        raise ConfigError(f"--data {root}: one split of a Roboflow export; pass the export's folder, {root.parent}")
    looked = "; ".join(f"{root / layout.files['train'][0]} ({layout.name})" for layout in LAYOUTS)
    raise ConfigError(f"--data {root}: no known dataset layout; looked for {looked}; see docs/own_data.md")
