"""train.time_budget: durations, the plan (iterations, schedule, evaluations, checkpoints) from measured times
with a fake clock, re-plans, the too-short error, and runs that follow a plan (engine/budget.py)."""
from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from retinanet.config import ConfigError, load_config, parse_duration
from retinanet.engine import budget as budget_module
from retinanet.engine import trainer as trainer_module
from retinanet.engine.budget import Budget, BudgetError, Plan, format_duration
from retinanet.engine.optim import LRFactor
from retinanet.cli import train as train_cli
from tests.helpers import REPO, run_train, synthetic_overrides


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _cfg(*sets: str):
    return load_config(None, ["train.max_iters=10000", "train.warmup_iters=100", "train.eval_every=2500",
                              "train.checkpoint_every=5000", "train.schedule=cosine", "train.time_budget=15m",
                              *sets]).train


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
                                           (" 2M ", 120), ("", None)])
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "abc", "0s", "15 minutes", "-5m"])
def test_a_duration_without_a_unit_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"train.time_budget: .* (is not a duration|longer than 0)"):
        load_config(None, [f"train.time_budget={text}"])


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42, 90, 900, 5400, 3723)] == ["0s", "42s", "1m30s", "15m", "1h30m", "1h2m3s"]


def test_without_a_budget_the_plan_is_the_config() -> None:
    """The identity plan gives every iteration's position, lr, evaluation and checkpoint as the config writes them."""
    for schedule in ("cosine", "multistep"):
        cfg = _cfg(f"train.schedule={schedule}", "train.steps=[6000,8000]", "train.time_budget=",
                   "train.eval_every=3000")
        plan, factor = Plan.from_config(cfg), LRFactor(cfg)
        for it in range(0, 10001, 7):
            assert plan.position(it) == it
            reference = (0.5 * (1 + math.cos(math.pi * it / 10000)) if schedule == "cosine"
                         else 0.1 ** sum(it >= s for s in (6000, 8000)))
            if it < 100:
                reference *= 0.001 * (1 - it / 100) + it / 100
            assert factor(it) == reference  # bitwise: a run without a budget trains as before
        assert [it for it in range(1, 10001) if plan.eval_due(it)] == [3000, 6000, 9000]  # + the final, at 10000
        assert [plan.evals_left(i) for i in (0, 2999, 3000, 9000, 9999, 10000)] == [4, 4, 3, 1, 1, 0]
        assert [it for it in range(1, 10001) if plan.checkpoint_due(it)] == [5000, 10000]
        assert plan.checkpoints_left(0) == 2


def _calibrated(cfg, seconds: float = 900.0) -> tuple[Budget, FakeClock, Plan, int, tuple[Plan, str]]:
    """10 s of start-up, then steps of 0.5 s until the first plan; an evaluation guessed at 6 s, a checkpoint 0.4 s."""
    clock = FakeClock()
    budget = Budget(cfg, seconds, start=0.0, clock=clock)
    budget.guess_eval(6.0)
    budget.checkpoint_done(0.4)
    clock.t, plan, it = 10.0, Plan.from_config(cfg), 0
    while True:
        clock.t += 0.5
        it += 1
        budget.step_done(0.5)
        change = budget.update(plan, it)
        if change is not None:
            return budget, clock, plan, it, change


def test_the_first_plan_from_measured_times() -> None:
    budget, clock, _, it, (plan, reason) = _calibrated(_cfg())
    # 2 warm steps and 5 measured ones: the plan comes after iteration 7, at 13.5 s.
    assert (it, reason, clock.t) == (7, "initial", 13.5)
    # Target: 900 - margin 27 (3%). Left for steps: 900 - 27 - 13.5 - 4 evaluations x 6 - 2 checkpoints x 0.4
    # - finish 5 = 829.7 s = 1659 steps of 0.5 s: the run ends at 7 + 1659 = 1666.
    assert plan.end_iter == 1666 and (plan.start_iter, plan.start_pos) == (7, 7.0)
    # The config's 4 evaluations (every 2500 of 10000) and 2 checkpoints stay at their places in the schedule;
    # positions 7..10000 map onto iterations 7..1666, so position p falls at 7 + ceil((p - 7) x 1659 / 9993).
    assert (plan.eval_period, plan.eval_from, plan.checkpoint_period, plan.checkpoint_from) == (2500, 0, 5000, 0)
    assert [i for i in range(7, 1667) if plan.eval_due(i)] == [421, 836, 1251, 1666]
    assert [i for i in range(7, 1667) if plan.checkpoint_due(i)] == [836, 1666]
    assert plan.ema_warmup == pytest.approx(2000 * 1666 / 10000)
    entry = budget.record(plan, it, reason)
    assert entry["eval_at"] == [421, 836, 1251, 1666] and entry["ends_at_s"] == pytest.approx(13.5 + 1659 * 0.5 + 4 * 6 + 2 * 0.4 + 5)
    line = budget.describe(entry)
    assert line.startswith("plan (initial): 1666 iterations, ending at 14m33s of the 15m budget") and "warm-up 100" in line
    # The lr follows the plan: the warm-up as written, the cosine reaching 0 at the last iteration.
    factor = LRFactor(budget.cfg)
    before = factor(it)
    factor.set_plan(plan.start_iter, plan.start_pos, plan.end_iter)
    assert factor(it) == before  # no jump where the plan starts
    assert factor(50) == pytest.approx((0.001 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * plan.position(50) / 10000)))
    assert factor(836) == pytest.approx(0.5, abs=1e-3)  # position 5000, half the cosine: 7 + 4993 x 1659 / 9993 = 835.9
    assert factor(1666) == 0.0 and factor(1665) < 1e-5


def test_multistep_milestones_follow_the_plan() -> None:
    budget, _, _, it, (plan, _) = _calibrated(_cfg("train.schedule=multistep", "train.steps=[6000,8000]"))
    # Position 6000 is reached at 7 + ceil((6000 - 7) x 1659 / 9993) = 1002, 8000 at 7 + ceil(1326.99) = 1334.
    assert budget.record(plan, it, "initial")["milestones"] == [1002, 1334]
    factor = LRFactor(budget.cfg)
    factor.set_plan(plan.start_iter, plan.start_pos, plan.end_iter)
    assert [factor(i) for i in (1001, 1002, 1333, 1334)] == [1.0, pytest.approx(0.1), pytest.approx(0.1),
                                                             pytest.approx(0.01)]


def _simulate(cfg, seconds: float, step_s: Callable[[int], float], eval_s: Callable[[int], float] = lambda n: 6.0,
              startup: float = 10.0, checkpoint_s: float = 0.4, finish_s: float = 5.0):
    """What fit does with a budget, with a fake clock: returns the end time, the last iteration, the plans
    made and the lr factor of every step."""
    clock = FakeClock()
    budget = Budget(cfg, seconds, start=0.0, clock=clock)
    budget.guess_eval(eval_s(0))
    clock.t, plan, factor, it, plans, lrs, evals = startup, Plan.from_config(cfg), LRFactor(cfg), 0, [], [], 0
    while it < plan.end_iter:
        lrs.append(factor(it))
        step = step_s(it)
        clock.t += step
        it += 1
        budget.step_done(step)
        if it == plan.end_iter or plan.eval_due(it):
            evals += 1
            clock.t += eval_s(evals)
            budget.eval_done(eval_s(evals))
        if it == plan.end_iter or plan.checkpoint_due(it):
            clock.t += checkpoint_s
            budget.checkpoint_done(checkpoint_s)
        change = budget.update(plan, it)
        if change is not None:
            plan = change[0]
            factor.set_plan(plan.start_iter, plan.start_pos, plan.end_iter)
            plans.append((it, *change))
    return clock.t + finish_s, it, plans, lrs


def test_a_slow_down_re_plans_and_the_run_still_ends_in_time() -> None:
    """From iteration 400 on another job halves the speed: the run re-plans, ends within the budget and
    completes its schedule, and the lr never jumps."""
    end, last, plans, lrs = _simulate(_cfg(), 900.0, lambda it: 0.5 if it < 400 else 1.0)
    reasons = [reason for _, _, reason in plans]
    assert reasons[0] == "initial" and "slower" in reasons
    first, slower = plans[0][1], next(p for _, p, r in plans if r == "slower")
    assert slower.end_iter < first.end_iter and slower.start_pos == pytest.approx(first.position(slower.start_iter))
    assert 0.95 * 900 <= end <= 900  # the whole command within the budget, not much of it wasted
    assert lrs[-1] < 0.01  # the cosine completed: the last step's lr is ~0 (at most 5% of the peak is asked)
    assert max(abs(a - b) for a, b in zip(lrs[100:], lrs[101:])) < 0.01  # no jump after the warm-up


def test_a_speed_up_re_plans_longer_up_to_max_iters() -> None:
    end, last, plans, _ = _simulate(_cfg(), 900.0, lambda it: 1.0 if it < 200 else 0.5)
    assert "faster" in [r for _, _, r in plans] and 0.95 * 900 <= end <= 900
    end, last, plans, lrs = _simulate(_cfg("train.max_iters=300", "train.warmup_iters=10"), 900.0, lambda it: 0.5)
    assert last == 300 and end < 900 * 0.5  # max_iters bounds the plan: time to spare is left unused
    assert plans == [] or plans[0][1] == Plan.from_config(_cfg("train.max_iters=300"))


def test_slow_evaluations_mean_fewer_of_them() -> None:
    """Evaluations of 60 s would take 4 x 60 of a 15-minute budget: at most 20% of it, so 3 evaluations."""
    budget, _, _, it, (plan, _) = _calibrated(_cfg())
    budget.estimates.eval_measured, budget.estimates.eval = True, 60.0
    new, evals, checkpoints = budget._fit(plan, it, 0.5)
    assert evals == 3 and [i for i in range(it + 1, new.end_iter + 1) if new.eval_due(i)][-1] == new.end_iter


def test_a_budget_too_short_names_the_shortest_workable_one() -> None:
    cfg = _cfg("train.time_budget=40s")
    with pytest.raises(BudgetError, match=r"train.time_budget=40s is too short: .* fits \d+ iterations, fewer than the "
                                          r"200 that train.warmup_iters=100 needs .* the shortest workable budget is about "
                                          r"2m30s: raise train.time_budget or lower train.warmup_iters"):
        _simulate(cfg, 40.0, lambda it: 0.5)
    end, last, plans, _ = _simulate(_cfg("train.time_budget=2m30s"), 150.0, lambda it: 0.5)
    assert last >= 200 and end <= 150


def test_a_stall_ends_the_run_at_once() -> None:
    """The machine stops for 6 minutes at iteration 1000: what is left holds only the final evaluation."""
    end, last, plans, _ = _simulate(_cfg(), 900.0, lambda it: 360.0 if it == 1000 else 0.5)
    assert plans[-1][2] == "deadline" and last == 1002 and end <= 900  # the stalled step was the 1001st


def test_resume_keeps_the_plan_unless_the_speed_changed() -> None:
    budget, clock, _, it, (plan, _) = _calibrated(_cfg())
    for _ in range(300):
        clock.t += 0.5
        it += 1
        budget.step_done(0.5)
        assert budget.update(plan, it) is None
    state = budget.state_dict()
    assert state["used_s"] == pytest.approx(clock.t)
    for speed, expected in ((0.5, None), (0.8, "resumed")):
        resumed = Budget(_cfg(), 900.0, start=clock.t, clock=FakeClock(clock.t))  # a new command, no start-up
        resumed.load_state_dict(state)
        assert resumed.used == pytest.approx(clock.t) and resumed.planned
        followed, reasons = plan, []
        for k in range(1, 11):
            resumed.clock.t += speed
            resumed.step_done(speed)
            change = resumed.update(followed, it + k)
            if change is not None:
                followed = change[0]
                reasons.append(change[1])
        assert reasons == ([] if expected is None else [expected])


# ----------------------------------------------------------------------------- runs that follow a plan


@pytest.fixture
def fake_run(monkeypatch) -> FakeClock:
    """train.py under a fake clock: 3 s of imports, 4 s a step, 5 s an evaluation, 0.5 s a checkpoint."""
    clock = FakeClock(100.0)
    monkeypatch.setattr(budget_module, "CLOCK", clock)
    monkeypatch.setattr(budget_module, "command_seconds", lambda: 3.0)
    real_step, real_eval, real_save = trainer_module.train_step, trainer_module.Trainer.evaluate, trainer_module.Trainer.save

    def step(*args, **kwargs):
        clock.t += 4.0
        return real_step(*args, **kwargs)

    def evaluate(self):
        clock.t += 5.0
        real_eval(self)

    def save(self, name):
        clock.t += 0.5
        real_save(self, name)

    monkeypatch.setattr(trainer_module, "train_step", step)
    monkeypatch.setattr(trainer_module.Trainer, "evaluate", evaluate)
    monkeypatch.setattr(trainer_module.Trainer, "save", save)
    monkeypatch.setattr(trainer_module.Trainer, "probe_eval_seconds", lambda self: 5.0)
    return clock


def run_command(monkeypatch: pytest.MonkeyPatch, out: Path, overrides: list[str], resume: bool = False) -> int:
    """train.py as its own process runs it (the command line in sys.argv), so the budget counts the process's
    start-up (the fake 3 s of imports)."""
    args = ["train.py", "--config", str(REPO / "configs" / "demo_cpu.yaml"), "--output-dir", str(out), "--set", *overrides]
    monkeypatch.setattr(sys, "argv", args + (["--resume"] if resume else []))
    return train_cli.main()


BUDGET_SETS = ["train.max_iters=1000", "train.time_budget=2m", "train.eval_every=500", "train.checkpoint_every=500",
               "train.warmup_iters=5", "train.schedule=cosine", "train.log_every=1"]


def _records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_a_budgeted_run_follows_its_plan(synthetic: Path, tmp_path: Path, fake_run: FakeClock, monkeypatch) -> None:
    out = tmp_path / "run"
    assert run_command(monkeypatch, out, synthetic_overrides(synthetic) + BUDGET_SETS) == 0
    # Plan after 7 steps (at 128 s, 31 s since the start at 97): 120 - margin 3.6 - 31 - 2 evaluations x 5
    # - finish 5 = 70.4 s = 17 steps of 4 s; the last iteration is 7 + 17 = 24. The first of the config's two
    # evaluations (1000 / 500) at position 7 + 993 / 2: iteration 7 + ceil(8.5) = 16.
    (plan,) = _records(out, "plan")
    assert (plan["reason"], plan["iteration"], plan["iterations"], plan["eval_at"]) == ("initial", 7, 24, [16, 24])
    assert [r["step"] for r in _records(out, "eval")] == [16, 24]
    train = _records(out, "train")
    assert train[-1]["step"] == 24 and train[-1]["lr"] <= 0.05 * max(r["lr"] for r in train)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 24 and ckpt["budget"]["plan"]["end_iter"] == 24
    assert 0.9 * 120 <= ckpt["budget"]["used_s"] <= 120
    card = json.loads((out / "model_card.json").read_text())["training"]["budget"]
    assert card["budget"] == "2m" and card["used_s"] <= 120 and card["plans"][0]["iterations"] == 24
    assert "- time budget: 2m" in (out / "MODEL_CARD.md").read_text()


def test_a_stopped_and_resumed_run_ends_on_the_same_weights(synthetic: Path, tmp_path: Path, fake_run: FakeClock,
                                                           monkeypatch) -> None:
    sets = synthetic_overrides(synthetic) + BUDGET_SETS
    assert run_command(monkeypatch, tmp_path / "full", sets) == 0
    real_record = trainer_module.Trainer.record

    def record(self, stats, seconds):  # SIGTERM after iteration 20: the loop saves last.pt and exits 143
        real_record(self, stats, seconds)
        if self.progress.iteration == 20:
            self.stop.signal = 15

    fake_run.t = 100.0
    monkeypatch.setattr(trainer_module.Trainer, "record", record)
    assert run_command(monkeypatch, tmp_path / "stopped", sets) == 143
    monkeypatch.setattr(trainer_module.Trainer, "record", real_record)
    monkeypatch.setattr(budget_module, "command_seconds", lambda: 0.0)  # a resume that costs no time: no re-plan
    assert run_command(monkeypatch, tmp_path / "stopped", sets, resume=True) == 0
    assert [p["reason"] for p in _records(tmp_path / "stopped", "plan")] == ["initial"]  # no re-plan after --resume
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["iteration"] == full["iteration"] == 24
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert resumed["budget"]["used_s"] <= 120


def test_a_budget_too_short_leaves_the_folder_free(synthetic: Path, tmp_path: Path, fake_run: FakeClock,
                                                   monkeypatch) -> None:
    out = tmp_path / "run"
    sets = synthetic_overrides(synthetic) + [*BUDGET_SETS, "train.max_iters=30", "train.warmup_iters=15"]
    # At 31 s after 7 steps: 60 - margin 3 - 31 - an evaluation 5 - finish 5 = 16 s, 4 more steps of 4 s.
    with pytest.raises(BudgetError, match=r"fits 11 iterations, fewer than the 30 that train.warmup_iters=15 needs"):
        run_command(monkeypatch, out, [*sets, "train.time_budget=1m"])
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("events.out.tfevents.*"))
    assert run_command(monkeypatch, out, [*sets, "train.time_budget=3m"]) == 0  # the same folder, a longer budget
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 30


def test_a_steady_but_noisy_speed_does_not_re_plan_again_and_again() -> None:
    """Step times that scatter by 10% around a steady mean (batches of other shapes, the machine's
    hiccups) are no drift: at most a couple of re-plans in a 15-minute run, not one every few dozen steps."""
    rng = random.Random(0)
    times = [0.65 * max(0.5, rng.gauss(1.0, 0.1)) for _ in range(5000)]
    end, last, plans, lrs = _simulate(_cfg(), 900.0, lambda it: times[it])
    assert len(plans) <= 3, [(it, p.end_iter, reason) for it, p, reason in plans]
    assert 0.95 * 900 <= end <= 900 and lrs[-1] < 0.01


def test_a_re_plan_keeps_the_evaluations_where_they_were_in_the_schedule() -> None:
    """A slow-down moves the end, not the cadence: the config's 4 evaluations (every 2500 of 10000) all
    happen, at the same schedule positions, instead of being pushed on by each re-plan."""
    seen: set[int] = set()

    def eval_s(n: int) -> float:
        seen.add(n)
        return 6.0

    end, last, plans, _ = _simulate(_cfg(), 900.0, lambda it: 0.5 if it < 300 else 0.8, eval_s=eval_s)
    assert [reason for _, _, reason in plans][:2] == ["initial", "slower"]
    assert all((p.eval_period, p.eval_from) == (2500, 0) for _, p, _ in plans)
    assert seen - {0} == {1, 2, 3, 4} and end <= 900


@pytest.mark.slow
def test_a_command_called_inside_a_longer_process_counts_from_the_call(synthetic: Path, tmp_path: Path,
                                                                       fake_run: FakeClock, monkeypatch) -> None:
    """main(argv) inside a test session (or a notebook) 19 minutes old: a 2m budget starts at the call, not at
    the process's start (which made a 15m budget 'too short' after 1130 s of the suite)."""
    monkeypatch.setattr(budget_module, "command_seconds", lambda: 1130.0)
    out = tmp_path / "run"
    assert run_train(out, synthetic_overrides(synthetic) + BUDGET_SETS) == 0
    (plan,) = _records(out, "plan")
    # The plan after 7 steps at 128 s, 28 s after the call at 100: 120 - 3.6 - 28 - 2 x 5 - 5 = 73.4 s = 18 steps.
    assert (plan["elapsed_s"], plan["iterations"]) == (28.0, 25)
