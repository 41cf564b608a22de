import re
from pathlib import Path

import pytest
import yaml

from retinanet.config import Config, ConfigError, load_config, parse_overrides, replace, save_config, to_dict
from tests.helpers import REPO


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_follow_the_paper() -> None:
    cfg = Config()
    assert cfg.model.fpn.channels == 256 and cfg.model.fpn.p6_from == "c5"
    assert cfg.model.head.num_convs == 4 and cfg.model.head.prior_prob == 0.01
    assert cfg.model.anchors.sizes == (32, 64, 128, 256, 512) and len(cfg.model.anchors.scales) == 3
    assert (cfg.model.matcher.fg_iou, cfg.model.matcher.bg_iou) == (0.5, 0.4)
    assert (cfg.loss.gamma, cfg.loss.alpha) == (2.0, 0.25)
    p = cfg.model.postprocess
    assert (p.score_thresh, p.topk_candidates, p.nms_thresh, p.detections_per_img) == (0.05, 1000, 0.5, 100)


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", "loss:\n  gamma: 1.0\n  alpha: 0.5\ntrain:\n  lr: 0.02\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\nloss:\n  gamma: 3\n")
    cfg = load_config(child, ["train.lr=0.1", "input.min_size=[256, 288]", "model.backbone.name=resnet18"])
    assert cfg.loss.gamma == 3.0 and isinstance(cfg.loss.gamma, float)
    assert cfg.loss.alpha == 0.5  # from the base
    assert cfg.train.lr == 0.1
    assert cfg.input.min_size == (256, 288)
    assert cfg.model.backbone.name == "resnet18"


def test_single_value_becomes_tuple() -> None:
    assert load_config(None, ["input.min_size=512"]).input.min_size == (512,)


def test_unknown_key_has_did_you_mean(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "loss:\n  gamam: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'loss.gamam'; did you mean 'loss.gamma'\?"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(None, ["trian.lr=1"])


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lr=0", "train.lr: must be > 0"),
        ("train.lr=abc", "train.lr: expected float"),
        ("loss.gamma=-1", "loss.gamma: must be >= 0"),
        ("loss.alpha=1.5", "loss.alpha"),
        ("input.min_size=[2000]", "input.min_size: must be <= max_size"),
        ("model.matcher.bg_iou=0.6", "bg_iou"),
        ("model.backbone.name=resnt50", "is not one of resnet18, resnet34, resnet50, resnet101; did you mean 'resnet50'"),
        ("train.max_iters=1.5", "train.max_iters: expected int"),
        ("data.keep_empty=maybe", "data.keep_empty: expected bool"),
    ],
)
def test_bad_values(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_cyclic_base_and_missing_and_malformed(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cyclic _base_"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(_write(tmp_path / "bad.yaml", "loss: [1, 2\n"))


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["loss.gamma=1.5", "data.augmentations=[{name: HorizontalFlip, p: 0.3}]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_frozen_and_replace() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.loss.gamma = 1.0  # type: ignore[misc]
    assert replace(cfg, **{"model.num_classes": 3}).model.num_classes == 3


def test_parse_overrides() -> None:
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "augmentations":
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _documented_defaults() -> dict:
    """The `| \\`key\\` | \\`value\\` | ... |` rows of docs/configs.md, values read as YAML."""
    rows = re.findall(r"^\| `([\w.]+)` \| `(.*?)` \|", (REPO / "docs" / "configs.md").read_text(), flags=re.M)
    return {key: yaml.safe_load(value) for key, value in rows}


def test_defaults_base_yaml_and_docs_agree() -> None:
    defaults = _leaves(to_dict(Config()))
    assert load_config(REPO / "configs" / "base.yaml") == Config()
    assert _leaves(yaml.safe_load((REPO / "configs" / "base.yaml").read_text())) == defaults
    assert _documented_defaults() == defaults


@pytest.mark.parametrize("name", ["coco.yaml", "retinanet_r50_fpn_1x_coco.yaml", "demo_cpu.yaml", "sample.yaml"])
def test_configs_state_only_what_differs_from_the_defaults(name: str) -> None:
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    raw.pop("_base_")
    defaults = _leaves(to_dict(Config()))
    same = [key for key, value in _leaves(raw).items() if to_dict(value) == defaults[key]]
    assert same == [], f"{name} restates defaults: {same}"
    load_config(REPO / "configs" / name)  # and it is a valid config
