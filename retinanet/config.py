"""Configuration: YAML files -> frozen dataclasses.

Every default lives in the dataclasses below and nowhere else. A YAML file may name a
`_base_` (a path, or a list of paths, relative to itself) whose keys it overrides;
`--set key=value` overrides come last. Unknown keys, wrong types and values out of
range raise `ConfigError` with a one-line message naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A user-facing configuration problem; the message is one line and names the key."""


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class BackboneConfig:
    name: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    # "none" (random init), "imagenet" (torchvision weights enum, downloads), or a path to a state dict.
    weights: str = "none"
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    # Stages frozen from the input side: 0 = nothing, 1 = stem, 2 = stem + layer1, ... up to 5.
    frozen_stages: int = 1

    def __post_init__(self) -> None:
        _check(0 <= self.frozen_stages <= 5, "frozen_stages", "must be in 0..5")


@dataclass(frozen=True)
class FPNConfig:
    channels: int = 256
    # The paper computes P6 from C5; torchvision's v1 RetinaNet computes it from P5.
    p6_from: Literal["c5", "p5"] = "c5"

    def __post_init__(self) -> None:
        _check(self.channels > 0, "channels", "must be > 0")


@dataclass(frozen=True)
class HeadConfig:
    num_convs: int = 4
    channels: int = 256
    norm: Literal["none", "gn"] = "none"
    prior_prob: float = 0.01

    def __post_init__(self) -> None:
        _check(self.num_convs >= 0, "num_convs", "must be >= 0")
        _check(self.channels > 0, "channels", "must be > 0")
        _check(0.0 < self.prior_prob < 1.0, "prior_prob", "must be in (0, 1)")


@dataclass(frozen=True)
class AnchorConfig:
    # One base size per pyramid level P3..P7 (pixels).
    sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    # Height / width.
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        _check(len(self.sizes) == 5, "sizes", "needs one size per level P3..P7 (5 values)")
        _check(all(s > 0 for s in self.sizes + self.scales + self.ratios), "sizes", "sizes, scales, ratios must be > 0")


@dataclass(frozen=True)
class MatcherConfig:
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    # Keep, for every ground-truth box, its best anchors even below fg_iou (torchvision, detectron2).
    allow_low_quality: bool = True

    def __post_init__(self) -> None:
        _check(0.0 <= self.bg_iou <= self.fg_iou <= 1.0, "bg_iou", "needs 0 <= bg_iou <= fg_iou <= 1")


@dataclass(frozen=True)
class BoxCoderConfig:
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    # dw/dh are clamped at this value before exp (torchvision: log(1000 / 16)).
    scale_clamp: float = math.log(1000.0 / 16)


@dataclass(frozen=True)
class PostprocessConfig:
    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    def __post_init__(self) -> None:
        _check(0.0 <= self.score_thresh < 1.0, "score_thresh", "must be in [0, 1)")
        _check(self.topk_candidates > 0, "topk_candidates", "must be > 0")
        _check(0.0 < self.nms_thresh <= 1.0, "nms_thresh", "must be in (0, 1]")
        _check(self.detections_per_img > 0, "detections_per_img", "must be > 0")


@dataclass(frozen=True)
class ModelConfig:
    # 0 means: take K from the training set's categories.
    num_classes: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    box_coder: BoxCoderConfig = field(default_factory=BoxCoderConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def __post_init__(self) -> None:
        _check(self.num_classes >= 0, "num_classes", "must be >= 0 (0 = from the dataset)")


# ----------------------------------------------------------------------------- loss


@dataclass(frozen=True)
class LossConfig:
    # focal; bce = alpha-balanced cross-entropy (focal with gamma 0, the paper's CE baseline);
    # ohem = gamma-0 loss over the hardest anchors per image. Head, prior and normalizer are shared.
    type: Literal["focal", "bce", "ohem"] = "focal"
    gamma: float = 2.0
    # Weight of the positive term; every negative term gets 1 - (mean alpha over classes).
    # One number (alpha < 0 turns alpha weighting off, torchvision's convention); a list of one
    # alpha per class (in label order); or effective_number: class-balanced alphas from the training
    # boxes per class (Cui et al. 2019, see cb_beta and cb_alpha; docs/rare_classes.md).
    alpha: float | tuple[float, ...] | Literal["effective_number"] = 0.25
    # effective_number: class c weighs (1 - cb_beta) / (1 - cb_beta ** n_c) (n_c its training boxes),
    # scaled so that the alphas' mean over classes is cb_alpha. cb_beta -> 1 weighs by 1 / n_c, 0 makes all equal.
    cb_beta: float = 0.999
    cb_alpha: float = 0.25
    box_loss: Literal["smooth_l1", "l1", "giou"] = "smooth_l1"
    smooth_l1_beta: float = 0.1
    box_weight: float = 1.0
    # 0 divides by this batch's positive count; in (0, 1) divides by an EMA of it (detectron2 uses 0.9).
    normalizer_momentum: float = 0.0
    # Positive targets become 1 - label_smoothing; negatives stay 0. 0 = off.
    label_smoothing: float = 0.0
    # OHEM: examples per image, negatives per positive (0 = no ratio), NMS IoU over examples (0 = off).
    ohem_batch_size: int = 256
    ohem_neg_pos_ratio: float = 3.0
    ohem_nms: float = 0.0

    def __post_init__(self) -> None:
        _check(self.gamma >= 0, "gamma", "must be >= 0")
        _check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        _check(self.ohem_batch_size > 0, "ohem_batch_size", "must be > 0")
        _check(self.ohem_neg_pos_ratio >= 0, "ohem_neg_pos_ratio", "must be >= 0 (0 = no ratio)")
        _check(0.0 <= self.ohem_nms <= 1.0, "ohem_nms", "must be in [0, 1] (0 = off)")
        if isinstance(self.alpha, tuple):
            _check(len(self.alpha) > 0 and all(a >= 0 for a in self.alpha), "alpha", "a per-class list needs values >= 0")
            _check(sum(self.alpha) / len(self.alpha) <= 1.0, "alpha", "the mean of a per-class list must be <= 1")
        elif isinstance(self.alpha, float):
            _check(-1.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1], or negative (-1) to turn alpha weighting off")
        _check(0.0 <= self.cb_beta < 1.0, "cb_beta", "must be in [0, 1)")
        _check(0.0 < self.cb_alpha <= 1.0, "cb_alpha", "must be in (0, 1]")
        _check(self.smooth_l1_beta >= 0, "smooth_l1_beta", "must be >= 0")
        _check(self.box_weight >= 0, "box_weight", "must be >= 0")
        _check(0.0 <= self.normalizer_momentum < 1.0, "normalizer_momentum", "must be in [0, 1)")


# ----------------------------------------------------------------------------- input and data


@dataclass(frozen=True)
class InputConfig:
    # Short side in training; several values pick one per image (scale jitter).
    min_size: tuple[int, ...] = (800,)
    max_size: int = 1333
    # Evaluation short side; 0 = the largest of min_size.
    eval_min_size: int = 0
    # Pad to a multiple of the largest stride (P7: 128) so every level's stride is exact.
    size_divisible: int = 128

    def __post_init__(self) -> None:
        _check(len(self.min_size) > 0 and all(s > 0 for s in self.min_size), "min_size", "must be > 0")
        _check(self.max_size >= max(self.min_size), "min_size", "must be <= max_size")
        _check(self.eval_min_size >= 0, "eval_min_size", "must be >= 0")
        _check(self.size_divisible > 0, "size_divisible", "must be > 0")

    @property
    def test_min_size(self) -> int:
        return self.eval_min_size or max(self.min_size)


@dataclass(frozen=True)
class SplitConfig:
    images: str = ""
    annotations: str = ""


@dataclass(frozen=True)
class DataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    # Held out from training and model selection: evaluate.py --split test (docs/own_data.md).
    test: SplitConfig = field(default_factory=SplitConfig)
    num_workers: int = 2
    # Images without annotations stay in training as negatives.
    keep_empty: bool = True
    # albumentations transforms by name, e.g. [{name: HorizontalFlip, p: 0.5}]; train split only.
    augmentations: tuple[dict, ...] = ({"name": "HorizontalFlip", "p": 0.5},)
    min_visibility: float = 0.0
    aspect_ratio_grouping: bool = True
    # Repeat-factor sampling (LVIS, Gupta et al. 2019): each train image is repeated
    # max(1, sqrt(t / f_c)) times per epoch over its classes c (f_c: the fraction of train images
    # containing c), rounded stochastically from train.seed. 0 = off; LVIS uses 0.001, small sets 0.1-0.3.
    repeat_factor_threshold: float = 0.0
    # Invalid records (bad boxes, unknown or duplicate ids, unreadable image files): "error" stops
    # at start-up with a report of all of them; "skip" leaves them out and logs a summary.
    on_invalid: Literal["error", "skip"] = "error"
    # Decoded images kept between epochs, each resized once to the largest size its split asks for:
    # none (decode every time), ram (filled by the main process at start-up; forked workers share it),
    # disk (a file per image in cache_dir, checked on every read, rebuilt when damaged or stale).
    cache: Literal["none", "ram", "disk"] = "none"
    # Folder of data.cache=disk; empty: $XDG_CACHE_HOME/retinanet, else ~/.cache/retinanet.
    cache_dir: str = ""

    def __post_init__(self) -> None:
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")
        _check(0.0 <= self.min_visibility <= 1.0, "min_visibility", "must be in [0, 1]")
        _check(0.0 <= self.repeat_factor_threshold <= 1.0, "repeat_factor_threshold", "must be in [0, 1] (0 = off)")
        for aug in self.augmentations:
            _check(isinstance(aug, dict) and "name" in aug, "augmentations", "each entry needs a 'name'")


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    max_iters: int = 90000
    # Wall-clock budget of the whole command (start-up, steps, evaluations, checkpoints, the final evaluation):
    # "90s", "15m", "2h", "1h30m"; empty = off. The run plans its iterations from measured times, fits the
    # schedule, warm-up aside, to the plan (cosine or multistep, EMA warm-up, evaluation and checkpoint cadence,
    # all as fractions of max_iters) and re-plans when the speed drifts; max_iters stays an upper bound
    # (engine.budget, docs/budget.md).
    time_budget: str = ""
    # Global batch (detectron2's IMS_PER_BATCH): under torchrun each of the N processes takes
    # batch_size / N images, so a config trains the same at any N. Changing batch_size? Scale lr
    # linearly with it (Goyal et al. 2017: 16 -> 0.01, 8 -> 0.005) and keep the warmup.
    batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # Exempt norm weights and all biases from weight decay.
    no_decay_norm_bias: bool = False
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    steps: tuple[int, ...] = (60000, 80000)
    lr_decay: float = 0.1
    # Max global grad norm; 0 turns clipping off.
    grad_clip: float = 0.0
    accumulate_steps: int = 1
    # Autocast of the training steps' forward pass (losses and box arithmetic stay float32). auto: bf16
    # on CUDA devices with bf16 and on CPUs with AMX, fp16 with a GradScaler on older CUDA devices (V100,
    # T4), fp32 (none) elsewhere, where bf16 convolutions are slower (engine.runtime.resolve_amp).
    # Evaluation has its own precision: eval.amp.
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    # torch.compile of the model for training and evaluation. auto: on where its per-step gain repays
    # the compile time within the run (engine.runtime.resolve_compile), off elsewhere.
    compile: Literal["auto", "true", "false"] = "auto"
    # NHWC activations: faster convolutions with oneDNN (CPU) and cuDNN tensor cores (GPU).
    channels_last: bool = True
    device: str = "auto"
    eval_every: int = 5000
    checkpoint_every: int = 5000
    log_every: int = 20
    seed: int = 42
    # Deterministic kernels (cuDNN deterministic, no autotuning, torch.use_deterministic_algorithms with
    # warnings for ops that have none): bitwise-exact --resume on a GPU, at a cost in speed (docs/multi_gpu.md).
    deterministic: bool = False
    # Checkpoint (or torchvision-style state dict) to start from; weights whose shape differs
    # (a new number of classes) keep their fresh init.
    init_from: str = ""
    # Steps with a non-finite loss or gradients are skipped; this many in a row stop the run.
    max_nonfinite_steps: int = 10
    # Under torchrun: BatchNorm -> SyncBatchNorm (statistics over the global batch); CUDA only.
    sync_bn: bool = False
    # Exponential moving average of the weights: 0 = off, e.g. 0.9998. The decay warms up as
    # decay * (1 - exp(-updates / ema_warmup)) (ultralytics, timm); evaluation, best.pt and the card use it.
    ema_decay: float = 0.0
    ema_warmup: int = 2000
    # Early stopping: stop after `patience` evaluations without a val AP gain above min_delta (0 = off).
    patience: int = 0
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        _check(self.max_iters > 0, "max_iters", "must be > 0")
        try:
            parse_duration(self.time_budget)
        except ValueError as exc:
            raise _FieldError("time_budget", str(exc)) from None
        _check(self.batch_size > 0, "batch_size", "must be > 0")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(self.warmup_iters >= 0, "warmup_iters", "must be >= 0")
        _check(0.0 < self.warmup_factor <= 1.0, "warmup_factor", "must be in (0, 1]")
        _check(list(self.steps) == sorted(self.steps), "steps", "must be increasing")
        _check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = off)")
        _check(self.accumulate_steps >= 1, "accumulate_steps", "must be >= 1")
        _check(self.eval_every >= 0 and self.checkpoint_every >= 0, "eval_every", "must be >= 0 (0 = only at the end)")
        _check(self.log_every > 0, "log_every", "must be > 0")
        _check(self.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be >= 1")
        _check(0.0 <= self.ema_decay < 1.0, "ema_decay", "must be in [0, 1) (0 = off), e.g. 0.9998")
        _check(self.ema_warmup > 0, "ema_warmup", "must be > 0 iterations")
        _check(self.patience >= 0, "patience", "must be >= 0 evaluations (0 = off)")
        _check(self.min_delta >= 0, "min_delta", "must be >= 0 (AP as a fraction, e.g. 0.001)")


    @property
    def time_budget_seconds(self) -> float | None:
        """train.time_budget in seconds; None when off."""
        return parse_duration(self.time_budget)


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([hms])")


def parse_duration(text: str) -> float | None:
    """"90s", "15m", "2h", "1h30m", "1.5h" -> seconds; "" -> None. A bare number is refused: its unit is a guess."""
    text = str(text).strip().lower()
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"'{text}' is not a duration; write it like 90s, 15m, 2h or 1h30m")
    seconds = sum(float(value) * _DURATION_UNITS[unit] for value, unit in parts)
    if seconds <= 0:
        raise ValueError(f"'{text}' must be longer than 0 s (leave it empty to turn the budget off)")
    return seconds


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 4
    # Autocast of every evaluation (during training, evaluate.py) and of predict.py. none (fp32): the
    # numbers of record, the same on every machine whatever train.amp resolved to; auto or bf16 for speed.
    amp: Literal["auto", "none", "bf16", "fp16"] = "none"
    # COCO evaluation: pycocotools (the reference) or faster-coco-eval (same numbers, faster; `pip install faster-coco-eval`).
    backend: Literal["pycocotools", "faster_coco_eval"] = "pycocotools"
    # Val images drawn into TensorBoard after each evaluation.
    num_vis_images: int = 4


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------- loading


class _FieldError(ValueError):
    """Raised inside __post_init__; the loader adds the dotted key path and file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise _FieldError(key, message)


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict:
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"{path}: cyclic _base_ chain ({cycle}); remove one of the _base_ entries")
    if not path.is_file():
        where = f" (named as _base_ in {chain[-1]})" if chain else ""
        raise ConfigError(f"{path}: config file not found{where}; check the path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} malformed YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, _read_yaml((path.parent / base).resolve(), (*chain, path)))
    return deep_merge(merged, raw)


def deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: Iterable[str]) -> dict:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"}; values are YAML scalars, typed later by the dataclass."""
    tree: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair}: expected KEY=VALUE, e.g. --set train.lr=0.02")
        key, value = pair.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair}: {part} is set twice as a value and a section")
        try:
            node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            node[parts[-1]] = value
    return tree


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (with `_base_`), apply `key=value` overrides, validate, return a frozen Config."""
    source = str(path) if path is not None else "<defaults>"
    raw = _read_yaml(Path(path).resolve(), ()) if path is not None else {}
    override_tree = parse_overrides(overrides)
    if override_tree:
        raw = deep_merge(raw, override_tree)
        source += " + --set"
    return from_dict(raw, source)


def from_dict(raw: Mapping, source: str = "<dict>") -> Config:
    return _build(Config, raw, "", source)


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{suggestion}")
        kwargs[key] = _convert(hints[key], value, f"{prefix}{key}", source)
    try:
        return cls(**kwargs)
    except _FieldError as exc:
        raise ConfigError(f"{source}: {prefix}{exc.key}: {exc}") from None


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and str(value).lower() in choices:  # YAML reads `true` as a boolean
            value = str(value).lower()
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"{source}: {key}: '{value}' is not one of {', '.join(map(str, choices))}{extra}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        items = value if isinstance(value, (list, tuple)) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, key, source) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{source}: {key}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, key, source) for a, v in zip(args, items))
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(arg, value, key, source)
            except ConfigError:
                continue
        choices = " or ".join(_describe(arg) for arg in typing.get_args(tp))
        raise ConfigError(f"{source}: {key}: {value!r} is not {choices}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
    else:
        return value
    raise ConfigError(f"{source}: {key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _describe(tp: Any) -> str:
    """A type as a user reads it in an error message: 'a number', 'a list of numbers', "'effective_number'"."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "a list of " + _describe(typing.get_args(tp)[0]).split(" ", 1)[1] + "s"
    return {float: "a number", int: "an integer", bool: "a boolean", str: "a string"}.get(tp, str(tp))


def to_dict(cfg: Any) -> Any:
    """Dataclasses -> plain dicts and lists (for YAML, JSON and TensorBoard)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; the file is itself a valid --config."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **changes: Any) -> Any:
    """dataclasses.replace on nested keys: replace(cfg, **{"model.num_classes": 3})."""
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        cfg = dataclasses.replace(cfg, **{head: replace(getattr(cfg, head), **{rest: value}) if rest else value})
    return cfg
