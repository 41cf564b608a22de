"""Rare classes: repeat-factor sampling, class-balanced alpha, per-class scalars, score drift, the study's keys."""
from __future__ import annotations

import logging
import math
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from retinanet.config import ConfigError, load_config
from retinanet.data.loaders import build_dataset, build_train_loader, train_repeat_factors
from retinanet.data.sampler import TrainBatchSampler, repeat_factors, sampling_summary
from retinanet.evaluation.drift import MIN_IMAGES, check_drift, drift_bound, format_drift, ks_statistic, score_distribution
from retinanet.evaluation.evaluator import ClassMatches
from retinanet.evaluation.operating_point import class_scalars
from retinanet.modeling.box_coder import BoxCoder
from retinanet.modeling.losses import DetectionLoss, class_balanced_alpha, sigmoid_focal_loss
from retinanet.modeling.matcher import Matcher
from retinanet.modeling.model import build_criterion
from retinanet.structures import HeadOutputs, Target
from retinanet.studies import compare_losses as compare
from tests.helpers import REPO, synthetic_overrides

DEMO = str(REPO / "configs" / "demo_cpu.yaml")

# ----------------------------------------------------------------------------- repeat-factor sampling

# Five images: f_0 = 3/5, f_1 = 1/5, f_2 = 1/5. With t = 0.8: class factors sqrt(0.8 / 0.6) = 2 / sqrt(3)
# = 1.1547, sqrt(0.8 / 0.2) = 2 and 2; each image takes the largest of its classes', an empty image 1.
IMAGE_LABELS = [[0, 0], [0, 1], [2], [], [0]]
R0 = 2 / math.sqrt(3)
FACTORS = [R0, 2.0, 2.0, 1.0, R0]


def test_repeat_factors_by_hand() -> None:
    np.testing.assert_allclose(repeat_factors(IMAGE_LABELS, 0.8), FACTORS, rtol=1e-12)
    # t below every f_c: nothing is repeated.
    assert repeat_factors(IMAGE_LABELS, 0.1).tolist() == [1.0] * 5


def test_expected_class_shares_before_and_after() -> None:
    summary = sampling_summary(IMAGE_LABELS, np.array(FACTORS), num_classes=3)
    total = 5 + 4 / math.sqrt(3)  # 7.3094
    assert summary.epoch_size == pytest.approx(total)
    np.testing.assert_allclose(summary.share_before, [0.6, 0.2, 0.2])
    np.testing.assert_allclose(summary.share_after, [(2 * R0 + 2) / total, 2 / total, 2 / total])  # .5896 .2736 .2736


def test_sampler_draws_each_image_its_repeat_factor_on_average() -> None:
    sampler = TrainBatchSampler(5, batch_size=2, seed=3, repeat_factors=FACTORS)
    epochs = [sampler.epoch_indices(torch.Generator().manual_seed(e)) for e in range(2000)]
    copies = np.array([[order.count(i) for i in range(5)] for order in epochs])  # (epochs, images)
    # Stochastic rounding: floor or ceil copies in every epoch, r_i on average.
    assert set(copies[:, 1]) == {2} and set(copies[:, 3]) == {1} and set(copies[:, 0]) == {1, 2}
    np.testing.assert_allclose(copies.mean(axis=0), FACTORS, atol=0.03)
    has = np.array([[c in labels for c in range(3)] for labels in IMAGE_LABELS])  # (images, K)
    observed_share = (copies @ has).sum(axis=0) / copies.sum()
    expected = sampling_summary(IMAGE_LABELS, np.array(FACTORS), 3).share_after
    np.testing.assert_allclose(observed_share, expected, atol=0.01)


def _rfs_sampler(factors: list[float], **kwargs) -> TrainBatchSampler:
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1]
    return TrainBatchSampler(12, seed=7, group_ids=groups, repeat_factors=factors, **kwargs)


RFS = [1.0, 2.5, 1.0, 1.2, 3.0, 1.0, 1.0, 1.7, 1.0, 1.0, 2.2, 1.0]


def test_repeat_factor_sampler_resumes_exactly_and_splits_ranks() -> None:
    full = list(islice(iter(_rfs_sampler(RFS, batch_size=4)), 30))  # several epochs of ~17.6 images
    for start in (1, 5, 13, 29):
        assert list(islice(iter(_rfs_sampler(RFS, batch_size=4, start_batch=start)), 30 - start)) == full[start:]
    rank0 = list(islice(iter(_rfs_sampler(RFS, batch_size=2, world_size=2, rank=0)), 30))
    rank1 = list(islice(iter(_rfs_sampler(RFS, batch_size=2, world_size=2, rank=1)), 30))
    assert [a + b for a, b in zip(rank0, rank1)] == full
    # Every global batch keeps aspect-ratio grouping until an epoch's leftovers.
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1]
    epoch = _rfs_sampler(RFS, batch_size=4).epoch_batches(0)
    assert sum(len({groups[i] for i, _ in batch}) == 1 for batch in epoch) >= len(epoch) - 1
    # Without repeat factors the sequence is the one of before (no extra draws from the generator).
    plain = TrainBatchSampler(12, batch_size=4, seed=7)
    g = torch.Generator().manual_seed(7 * 1_000_003)
    assert [i for batch in plain.epoch_batches(0) for i, _ in batch] == torch.randperm(12, generator=g).tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_with_repeat_factors_resumes_exactly(synthetic: Path, workers: int, caplog) -> None:
    cfg = load_config(DEMO, [*synthetic_overrides(synthetic), "data.repeat_factor_threshold=0.5",
                             f"data.num_workers={workers}", "train.batch_size=2"])
    dataset = build_dataset(cfg, "train")
    with caplog.at_level(logging.INFO, logger="retinanet.data"):
        full = list(islice(iter(build_train_loader(cfg, dataset)), 6))
    assert "repeat-factor sampling (data.repeat_factor_threshold=0.5): an epoch draws" in caplog.text
    assert "ring " in caplog.text and "% -> " in caplog.text
    resumed = list(islice(iter(build_train_loader(cfg, dataset, start_batch=4)), 2))
    for a, b in zip(full[4:], resumed):
        assert [t.image_id for t in a.targets] == [t.image_id for t in b.targets]
        assert torch.equal(a.images, b.images)


def test_a_threshold_below_every_class_fraction_warns(synthetic: Path, caplog) -> None:
    cfg = load_config(DEMO, [*synthetic_overrides(synthetic), "data.repeat_factor_threshold=0.01"])
    dataset = build_dataset(cfg, "train")
    rarest = min(f for f in sampling_summary(dataset.image_labels(), np.ones(len(dataset)), 5).share_before if f > 0)
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        assert train_repeat_factors(cfg, dataset).tolist() == [1.0] * len(dataset)
    assert (f"data.repeat_factor_threshold=0.01 repeats no image: every class is in at least {rarest:.3g} of the "
            "train images") in caplog.text


# ----------------------------------------------------------------------------- class-balanced alpha


def test_class_balanced_alpha_by_hand() -> None:
    # beta 0.9: w = 0.1 / (1 - 0.9^n): n=100 -> 0.1000027, n=10 -> 0.1535340, n=1 -> 1; a class without boxes
    # has no weight of its own. Mean over the three = 0.4178456; alpha_c = 0.25 * w_c / mean.
    alphas = class_balanced_alpha([100, 10, 0, 1], beta=0.9, mean_alpha=0.25)
    assert alphas == pytest.approx([0.0598323, 0.0918605, 0.25, 0.5983072], rel=1e-5)
    assert class_balanced_alpha([5, 500], beta=0.0, mean_alpha=0.25) == [0.25, 0.25]  # beta 0: no re-weighting
    assert class_balanced_alpha([0, 0], beta=0.99, mean_alpha=0.3) == [0.3, 0.3]


ANCHORS = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 20], [30, 30, 40, 40], [50, 50, 60, 60]], dtype=torch.float32)
TARGETS = [
    Target(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([2])),  # anchor 0
    Target(torch.tensor([[30.0, 30, 40, 40], [0, 0, 20, 20]]), torch.tensor([0, 1])),  # anchors 2 and 1
]


def _loss(alpha, loss_type: str = "focal", label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = (torch.randn(2, 4, 3) * 2).requires_grad_()
    outputs = HeadOutputs(logits, torch.zeros(2, 4, 4), ANCHORS, [4])
    criterion = DetectionLoss(3, Matcher(0.5, 0.4, allow_low_quality=False), BoxCoder((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16)), alpha=alpha,
                              cls_loss=loss_type, label_smoothing=label_smoothing, ohem_batch_size=3)
    loss = criterion(outputs, TARGETS)["loss_cls"]
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("loss_type", ["focal", "bce", "ohem"])
@pytest.mark.parametrize("alpha", [0.25, 0.75])
def test_constant_per_class_alpha_is_todays_loss(loss_type: str, alpha: float) -> None:
    scalar, scalar_grad = _loss(alpha, loss_type)
    per_class, per_class_grad = _loss([alpha] * 3, loss_type)
    assert torch.equal(per_class, scalar) and torch.equal(per_class_grad, scalar_grad)
    if loss_type == "focal":  # today's value: torchvision's focal loss over the one-hot targets / 3 positives
        torch.manual_seed(0)
        logits = torch.randn(2, 4, 3) * 2
        onehot = torch.zeros(2, 4, 3)
        onehot[0, 0, 2] = onehot[1, 2, 0] = onehot[1, 1, 1] = 1
        torch.testing.assert_close(scalar, tv_focal(logits, onehot, alpha=alpha, reduction="sum") / 3)


@pytest.mark.parametrize("loss_type,gamma", [("focal", 2.0), ("bce", 0.0)])
def test_per_class_alpha_weighs_positives_by_class_and_negatives_by_one_minus_the_mean(loss_type: str, gamma: float) -> None:
    alphas = [0.1, 0.3, 0.8]  # mean 0.4: every negative entry weighs 0.6
    loss, _ = _loss(alphas, loss_type, label_smoothing=0.1)
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3) * 2
    targets = torch.zeros(2, 4, 3)
    targets[0, 0, 2] = targets[1, 2, 0] = targets[1, 1, 1] = 0.9  # label smoothing 0.1 on the positives
    unweighted = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=gamma)  # (2, 4, 3)
    weight = torch.tensor(alphas) * targets + 0.6 * (1 - targets)  # a positive entry mixes both, as scalar alpha does
    torch.testing.assert_close(loss, (weight * unweighted).sum() / 3)


def test_build_criterion_resolves_alpha_and_names_the_key() -> None:
    cfg = load_config(None, ["loss.alpha=effective_number", "loss.cb_beta=0.9"])
    with pytest.raises(ConfigError, match="loss.alpha: effective_number needs the training boxes per class"):
        build_criterion(cfg, 4)
    criterion = build_criterion(cfg, 4, class_counts=[100, 10, 0, 1])
    expected = class_balanced_alpha([100, 10, 0, 1], 0.9, 0.25)
    assert criterion.class_alpha.tolist() == pytest.approx(expected)
    assert criterion.alpha == pytest.approx(0.25)  # negatives keep 1 - 0.25
    with pytest.raises(ConfigError, match="loss.alpha: 2 values for 4 classes"):
        build_criterion(load_config(None, ["loss.alpha=[0.2,0.3]"]), 4)
    assert build_criterion(load_config(None, ["loss.alpha=0.5"]), 4).class_alpha is None
    with pytest.raises(ConfigError, match="loss.alpha: 'effective_numbr' is not a number or a list of numbers or "
                                          "'effective_number'"):
        load_config(None, ["loss.alpha=effective_numbr"])


# ----------------------------------------------------------------------------- per-class scalars for the trainer


def test_class_scalars_recall_precision_at_max_f1_and_rarest_ap50() -> None:
    matches = {
        # t=0.9: F1 2/3; t=0.8: 1/2; t=0.7: TP 2 of 3 kept, 2 gt -> F1 4/5 (max): recall 1, precision 2/3.
        1: ClassMatches(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2),
        2: ClassMatches(np.zeros(0), np.zeros(0, bool), 3),  # no detections: recall 0 and precision 0
        3: ClassMatches(np.array([0.5]), np.array([False]), 0),  # no val boxes: left out
    }
    metrics = {"per_class": {"cat": {"id": 1, "AP50": 0.7}, "dog": {"id": 2, "AP50": 0.0},
                             "bird": {"id": 3, "AP50": None}}}
    scalars = class_scalars(matches, metrics, train_box_counts={1: 50, 2: 5, 3: 0})
    assert scalars == {"recall/cat": 1.0, "precision/cat": pytest.approx(2 / 3), "recall/dog": 0.0,
                       "precision/dog": 0.0, "rare_AP50": 0.0}
    assert class_scalars(matches, metrics)["rare_AP50"] == 0.7  # without train counts: fewest val boxes (cat, 2)
    # bird is the rarest in training (1 box) but has no val boxes: the rarest with val boxes is dog (5).
    assert class_scalars(matches, metrics, train_box_counts={1: 50, 2: 5, 3: 1})["rare_AP50"] == 0.0
    assert "rare_AP50" not in class_scalars(matches, metrics, train_box_counts={1: 0, 2: 0, 3: 1})


# ----------------------------------------------------------------------------- score drift


def test_ks_statistic_on_known_samples() -> None:
    # ECDFs of a and b at 1, 2, 2.5, 3, 3.5, 4, 5: .25/0, .5/0, .5/.2, .75/.2, .75/.4, 1/.4 (gap .6), 1/.6
    assert ks_statistic([1, 2, 3, 4], [2.5, 3.5, 5, 6, 7]) == pytest.approx(0.6)
    assert ks_statistic([1, 1, 2], [1, 2, 2]) == pytest.approx(1 / 3)  # ties: 2/3 vs 1/3 at 1
    assert ks_statistic([0.3, 0.1], [0.1, 0.3]) == 0.0
    assert ks_statistic([1, 2], [3, 4]) == 1.0
    assert drift_bound(100, 100) == pytest.approx(1.6276 * math.sqrt(0.02), rel=1e-4)  # 0.2302
    assert drift_bound(10**6, 10**6) == 0.1


def test_score_distribution_and_drift_warning() -> None:
    records = [{"image_id": 1, "score": s} for s in (0.9, 0.8)] + [{"image_id": 2, "score": 0.7}]
    stored = score_distribution(records, [1, 2, 3])  # image 3 has no detections
    assert stored["num_detections"] == 3 and stored["num_images"] == 3
    assert stored["detections_per_image"][0] == 0 and stored["detections_per_image"][50] == 1
    assert stored["detections_per_image"][100] == 2
    assert stored["scores"][0] == 0.7 and stored["scores"][100] == 0.9

    rng = np.random.default_rng(0)
    val = rng.uniform(0.05, 1.0, 2000)
    reference = score_distribution([{"image_id": i // 10, "score": s} for i, s in enumerate(val)], range(200))
    same = check_drift(reference, rng.uniform(0.05, 1.0, 500), [10] * 50)
    assert [c.name for c in same] == ["scores", "detections per image"]
    assert not any(c.drifted for c in same) and same[1].statistic == 0.0
    shifted = check_drift(reference, rng.uniform(0.05, 0.5, 500), [10] * 50)
    # Every new score is <= 0.5, where the val CDF is (0.5 - 0.05) / 0.95 = 0.474: D = 1 - 0.474 = 0.526.
    assert shifted[0].drifted and shifted[0].statistic == pytest.approx(0.526, abs=0.02)
    text = format_drift(shifted, num_images=MIN_IMAGES)
    assert text.startswith("warning: the scores of these images differ from the validation set's (score drift)")
    assert "\n  what to do: look at the drawn images" in text
    assert f"KS D {shifted[0].statistic:.3f} (warns above {drift_bound(2000, 500):.3f})" in text
    assert format_drift(same, num_images=MIN_IMAGES).startswith("score drift vs val, scores: KS D ")


def test_drift_is_not_judged_on_fewer_than_min_images() -> None:
    """4 photos of one scene: their detections' scores differ from val's by far more than the bound,
    which counts the detections as independent; below MIN_IMAGES nothing is judged."""
    rng = np.random.default_rng(0)
    reference = score_distribution([{"image_id": i // 10, "score": s} for i, s in enumerate(rng.uniform(0.05, 1.0, 2000))],
                                   range(200))
    checks = check_drift(reference, rng.uniform(0.05, 0.3, 40), [10] * 4)
    assert checks[0].drifted  # D about 0.74 against a bound of 0.26 (2000 and 40 detections)
    assert format_drift(checks, num_images=4) == (
        "score drift: not judged on 4 images: it needs at least 50 new images (fewer, often from one scene, "
        "differ from the validation set by chance)")
    assert format_drift(checks, num_images=1).startswith("score drift: not judged on 1 image: ")
    assert format_drift([], num_images=100) == ""  # nothing stored to compare with
    assert format_drift(checks, num_images=MIN_IMAGES).startswith("warning: ")


# ----------------------------------------------------------------------------- the study's keys


def test_study_accepts_the_rare_class_keys(synthetic: Path) -> None:
    losses = compare.parse_losses(
        "focal,focal:data.repeat_factor_threshold=0.1,focal:alpha=effective_number,focal:label_smoothing=0.05,"
        "focal:alpha=[0.2,0.2,0.2,0.2,0.4]"
    )
    settings = compare.expand_settings(DEMO, synthetic_overrides(synthetic), losses, [])
    assert [s.name for s in settings] == [
        "focal-g2-a0.25", "focal-g2-a0.25-repeat_factor_threshold0.1", "focal-g2-aeffective_number",
        "focal-g2-a0.25-label_smoothing0.05", "focal-g2-a0.2_0.2_0.2_0.2_0.4",
    ]
    assert settings[1].cfg.data.repeat_factor_threshold == 0.1
    assert settings[2].cfg.loss.alpha == "effective_number"
    assert settings[4].cfg.loss.alpha == (0.2, 0.2, 0.2, 0.2, 0.4)
