"""The time budget (`train.time_budget`): plan a run so that the whole command ends within it.

ultralytics' `time` re-counts epochs after each epoch; detectron2, mmdetection and torchvision's
references have no budget. Here the plan covers the whole command: start-up, training steps,
evaluations, checkpoints, the final evaluation and the model card. It is made from measured times,
after the first steps (which pay for worker start-up, kernel selection and compiling), and made
again whenever the measured speed drifts (another job on the cores, larger batches) or an
evaluation took longer than planned. So:

- the learning rate completes its schedule at the planned last iteration. A plan is a segment that
  maps the remaining iterations linearly onto the rest of the schedule (`engine.optim.schedule_position`:
  positions run from 0 to max_iters); cosine and multistep milestones follow the position, so a
  re-plan bends what is left without a jump in the learning rate;
- evaluations and checkpoints keep the config's count (max_iters / eval_every, max_iters /
  checkpoint_every, the last one at the last iteration), spread over the plan. Evaluations may take
  at most EVAL_SHARE of the budget: beyond that there are fewer of them, never fewer than the final one;
- `warmup_iters` stays as written: how many steps an optimizer needs to settle does not depend on how
  long the run is. `ema_warmup` scales with the plan, like the other counts;
- `max_iters` stays an upper bound: with time to spare, the plan is the config's schedule.

`Plan` is what the loop follows (also without a budget: the config as written); `Budget` measures
and plans. Both are plain data with a clock passed in, so tests plan runs with a fake clock.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from retinanet.config import ConfigError, TrainConfig
from retinanet.engine.optim import schedule_position

# Steps at the start of each command that are not measured: DataLoader workers starting, oneDNN and
# cuDNN choosing kernels, torch.compile compiling. Then CALIBRATION_STEPS measured steps give the plan.
WARM_STEPS = 2
CALIBRATION_STEPS = 5
# Step times are averaged over the last STEP_WINDOW steps, the slowest TRIM of them left out (a
# recompile or a hiccup of the machine is not the speed of the run).
STEP_WINDOW = 100
TRIM = 0.1
# A projected drift within NOISE_SE standard errors of the mean step (times the steps left) is noise: steps
# that scatter around a steady speed do not re-plan the run again and again.
NOISE_SE = 3.0
# When the last RECENT_STEPS steps stand out from the window (the speed changed), a re-plan takes their
# speed and they become the window: the steps before the change would otherwise pull the estimate back
# and re-plan the run again at every step while the window fills.
RECENT_STEPS = 10
# The plan ends MARGIN before the deadline (at least MIN_MARGIN_S): what no measurement foresees.
MARGIN = 0.03
MIN_MARGIN_S = 3.0
# A re-plan when the projected end leaves the target by more than these shares of the budget: late
# costs the budget, so it is corrected sooner than early.
LATE_TOLERANCE = 0.01
EARLY_TOLERANCE = 0.02
# Evaluations may take this share of the budget; beyond it, fewer evaluations (the final one always).
EVAL_SHARE = 0.2
# Time after the last step before the command ends (the last checkpoint, TensorBoard hparams, the
# training summary plot, the model card and operating point); measured at the end of each run and
# recorded, so this guess is only used until a run has measured it.
FINISH_SECONDS = 5.0
# The lr warmup takes at most this share of a plan: a budget that fits fewer iterations is too short.
MAX_WARMUP_SHARE = 0.5


def _mean_and_error(values: list[float]) -> tuple[float, float]:
    """The mean of `values` and its standard error (0 with fewer than two values)."""
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


class BudgetError(ConfigError):
    """train.time_budget cannot hold the run; the message names the shortest workable budget."""


def format_duration(seconds: float) -> str:
    """90 -> "1m30s", 5400 -> "1h30m", 42.5 -> "43s": as train.time_budget is written."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


def command_seconds() -> float:
    """Seconds since this process started (Linux: /proc), so a budget counts the imports too; 0 elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - started)


@dataclass(frozen=True)
class Plan:
    """What the loop follows: the last iteration, where each iteration is in the schedule, when to
    evaluate and to save. Without a budget it is the config as written (`Plan.from_config`).

    Positions run from 0 to max_iters; this segment maps iterations start_iter..end_iter onto positions
    start_pos..max_iters. Evaluations fall every eval_period positions counted from eval_from (0: only
    the final one), checkpoints every checkpoint_period from checkpoint_from: a re-plan that keeps the
    cadence keeps them at the same places in the schedule.
    """

    end_iter: int
    max_iters: int
    start_iter: int = 0
    start_pos: float = 0.0
    eval_period: float = 0.0
    checkpoint_period: float = 0.0
    ema_warmup: float = 0.0
    eval_from: float = 0.0
    checkpoint_from: float = 0.0

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "Plan":
        return cls(cfg.max_iters, cfg.max_iters, 0, 0.0, float(cfg.eval_every), float(cfg.checkpoint_every),
                   float(cfg.ema_warmup))

    def position(self, it: int) -> float:
        return schedule_position(it, self.start_iter, self.start_pos, self.end_iter, self.max_iters)

    def _crossed(self, it: int, period: float, origin: float) -> bool:
        """Whether a multiple of `period` (counted from `origin`) lies in (position(it - 1), position(it)]."""
        if period <= 0:
            return False
        # the segment's start is no multiple to cross: it was the last iteration of the segment before
        before = max(0.0, max(self.position(it - 1), self.start_pos) - origin)
        return math.floor((self.position(it) - origin) / period + 1e-9) > math.floor(before / period + 1e-9)

    def eval_due(self, it: int) -> bool:
        """An evaluation after iteration `it` (the final one is the caller's: it == end_iter)."""
        return self._crossed(it, self.eval_period, self.eval_from)

    def checkpoint_due(self, it: int) -> bool:
        return self._crossed(it, self.checkpoint_period, self.checkpoint_from)

    def _left(self, it: int, period: float, origin: float) -> int:
        """Evaluations (or checkpoints) after iteration `it`, the final one included."""
        if it >= self.end_iter:
            return 0
        if period <= 0:
            return 1
        total = (self.max_iters - origin) / period
        whole = math.floor(total + 1e-6)
        done = math.floor((self.position(it) - origin) / period + 1e-9)
        return whole - done + (0 if abs(total - whole) < 1e-6 else 1)

    def evals_left(self, it: int) -> int:
        return self._left(it, self.eval_period, self.eval_from)

    def checkpoints_left(self, it: int) -> int:
        return self._left(it, self.checkpoint_period, self.checkpoint_from)

    def iteration_at(self, position: float) -> int:
        """The first iteration whose position reaches `position` (for the log: where milestones fall)."""
        if position <= self.start_pos or self.max_iters <= self.start_pos:
            return self.start_iter
        share = (position - self.start_pos) / (self.max_iters - self.start_pos)
        return self.start_iter + math.ceil(share * (self.end_iter - self.start_iter) - 1e-9)

    def _marks(self, period: float, origin: float) -> list[int]:
        """The iterations of this segment at which the multiples of `period` from `origin` fall, and the last."""
        if period <= 0:
            return [self.end_iter]
        count = math.floor((self.max_iters - origin) / period + 1e-6)
        marks = [self.iteration_at(origin + k * period) for k in range(1, count + 1)
                 if origin + k * period > self.start_pos + 1e-9]
        return sorted({*marks, self.end_iter})

    def eval_iterations(self) -> list[int]:
        return self._marks(self.eval_period, self.eval_from)

    def checkpoint_iterations(self) -> list[int]:
        return self._marks(self.checkpoint_period, self.checkpoint_from)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Estimates:
    """Measured (or, until measured, guessed) seconds of the parts of a run."""

    step: float = 0.0  # one training step (its batch loading included)
    eval: float = 0.0  # one evaluation, with its logging and best.pt
    checkpoint: float = 0.0  # one last.pt
    finish: float = FINISH_SECONDS  # after the last step: final save, card, operating point
    eval_measured: bool = False
    finish_measured: bool = False


# The time source of every Budget (tests replace it with a fake clock).
CLOCK: Callable[[], float] = time.monotonic


class Budget:
    """Plans and re-plans a run to end within train.time_budget (module docstring).

    The caller reports what happened (`step_done`, `eval_done`, `checkpoint_done`) and asks `update`
    after each step for a new plan; `clock` is the time source (CLOCK), `start` the clock's value when
    the command started and `used` the seconds earlier commands of the run (--resume) spent. Without a
    budget (`seconds` None) it only measures, for the progress bar's time left.
    """

    def __init__(
        self, cfg: TrainConfig, seconds: float | None, start: float, used: float = 0.0, has_val: bool = True,
        clock: Callable[[], float] | None = None, source: str = "config",
    ) -> None:
        self.cfg = cfg
        self.seconds = math.inf if seconds is None else float(seconds)  # inf: no budget, measure for the ETA only
        self.start = start
        self.used = float(used)
        self.has_val = has_val
        self.clock = clock or CLOCK
        self.source = source
        self.estimates = Estimates()
        self.step_times: deque[float] = deque(maxlen=STEP_WINDOW)
        self.steps_seen = 0  # steps of this command, the warm ones included
        self.planned = False  # a plan was made from measurements (in this run, or before a --resume)
        self.checked_since_resume = True
        self.replans = 0
        self.history: list[dict[str, Any]] = []  # every plan record, for the model card

    @classmethod
    def for_command(cls, cfg: TrainConfig, has_val: bool, source: str, started: float | None = None) -> "Budget":
        """The budget of this command, counted from the process's start (imports included), or from
        `started` (a CLOCK() reading) where the command runs inside a longer process."""
        start = CLOCK() - command_seconds() if started is None else started
        return cls(cfg, cfg.time_budget_seconds, start=start, has_val=has_val, source=source)

    # ------------------------------------------------------------------ time

    @property
    def deadline(self) -> float:
        """The clock's value by which the command must end."""
        return self.start + self.seconds - self.used

    @property
    def active(self) -> bool:
        return math.isfinite(self.seconds)

    @property
    def margin(self) -> float:
        return max(MIN_MARGIN_S, MARGIN * self.seconds)

    def elapsed(self) -> float:
        """Seconds of the budget spent so far, earlier commands included."""
        return self.used + self.clock() - self.start

    # ------------------------------------------------------------------ measurements

    def step_done(self, seconds: float) -> None:
        self.steps_seen += 1
        if self.steps_seen > WARM_STEPS:
            self.step_times.append(float(seconds))

    def eval_done(self, seconds: float) -> None:
        """The slowest evaluation so far stands for the rest (later models keep more detections)."""
        est = self.estimates
        est.eval = max(est.eval, seconds) if est.eval_measured else float(seconds)
        est.eval_measured = True

    def checkpoint_done(self, seconds: float) -> None:
        self.estimates.checkpoint = max(self.estimates.checkpoint, float(seconds))

    def guess_eval(self, seconds: float) -> None:
        """An estimate of one evaluation before any was measured (the trainer times one val batch)."""
        if not self.estimates.eval_measured:
            self.estimates.eval = float(seconds)

    def step_seconds(self) -> float | None:
        """The recent step time: the mean of the last STEP_WINDOW measured steps, the slowest TRIM left out."""
        kept = self._kept_steps()
        return _mean_and_error(kept)[0] if kept else None

    def step_error(self) -> float:
        """The standard error of step_seconds(): how far the mean may be off by the steps' scatter alone."""
        return _mean_and_error(self._kept_steps())[1]

    def _changed_speed(self) -> float | None:
        """The mean of the last RECENT_STEPS steps when it stands out from the window's mean by more than its
        noise (the speed changed), after which those steps are the window; None when it does not."""
        recent = list(self.step_times)[-RECENT_STEPS:]
        mean = self.step_seconds()
        if len(recent) < RECENT_STEPS or mean is None:
            return None
        recent_mean, recent_error = _mean_and_error(recent)
        if abs(recent_mean - mean) <= NOISE_SE * recent_error:
            return None
        self.step_times = deque(recent, maxlen=STEP_WINDOW)
        return self.step_seconds()

    def _kept_steps(self) -> list[float]:
        if len(self.step_times) < CALIBRATION_STEPS:
            return []
        times = sorted(self.step_times)
        return times[: max(1, len(times) - int(TRIM * len(times)))]

    # ------------------------------------------------------------------ planning

    def remaining_seconds(self, plan: Plan, it: int, step: float | None = None) -> float:
        """What the rest of the run costs under `plan` from iteration `it`: steps, evaluations, checkpoints, finish."""
        est = self.estimates
        step = step if step is not None else (self.step_seconds() or est.step)
        evals = plan.evals_left(it) if self.has_val else 0
        return (plan.end_iter - it) * step + evals * est.eval + plan.checkpoints_left(it) * est.checkpoint + est.finish

    def _configured_counts(self) -> tuple[int, int]:
        """The evaluations and checkpoints the config asks for over max_iters (the final one at least)."""
        cfg = self.cfg
        evals = math.ceil(cfg.max_iters / cfg.eval_every) if cfg.eval_every > 0 else 1
        return evals, math.ceil(cfg.max_iters / cfg.checkpoint_every) if cfg.checkpoint_every > 0 else 1

    def _counts(self, plan: Plan, it: int) -> tuple[int, int]:
        """Evaluations and checkpoints left for a new plan from `it`: the config's count over what is left of
        the schedule, evaluations capped at EVAL_SHARE of the budget."""
        left = 1.0 - plan.position(it) / self.cfg.max_iters
        evals, checkpoints = self._configured_counts()
        evals = max(1, math.ceil(evals * left - 1e-9))
        if self.estimates.eval > 0:
            affordable = math.floor(EVAL_SHARE * self.seconds / self.estimates.eval)
            evals = min(evals, max(1, math.ceil(affordable * left - 1e-9)))
        return (evals if self.has_val else 0), max(1, math.ceil(checkpoints * left - 1e-9))

    def _fit(self, plan: Plan, it: int, step: float) -> tuple[Plan, int, int]:
        """The plan from `it` whose projected end is the target (deadline less the margin)."""
        cfg, est = self.cfg, self.estimates
        evals, checkpoints = self._counts(plan, it)
        start_pos = plan.position(it)
        rest = cfg.max_iters - start_pos
        # The cadence so far stands while the budget affords it, so a re-plan keeps the evaluations and
        # checkpoints where they were in the schedule; otherwise fewer, spread over what is left.
        eval_period, eval_from = (rest / evals, start_pos) if evals else (0.0, start_pos)
        if evals and plan.eval_period > 0 and plan.evals_left(it) <= evals:
            evals, eval_period, eval_from = plan.evals_left(it), plan.eval_period, plan.eval_from
        checkpoint_period, checkpoint_from = rest / checkpoints, start_pos
        if plan.checkpoint_period > 0:
            checkpoints, checkpoint_period, checkpoint_from = (plan.checkpoints_left(it), plan.checkpoint_period,
                                                               plan.checkpoint_from)
        spare = self.deadline - self.margin - self.clock() - evals * est.eval - checkpoints * est.checkpoint - est.finish
        end = min(cfg.max_iters, it + max(1, math.floor(spare / step)))
        new = Plan(
            end_iter=end, max_iters=cfg.max_iters, start_iter=it, start_pos=start_pos,
            eval_period=eval_period, checkpoint_period=checkpoint_period,
            ema_warmup=cfg.ema_warmup * max(1, end) / cfg.max_iters, eval_from=eval_from, checkpoint_from=checkpoint_from,
        )
        if end == cfg.max_iters and start_pos == it:  # time to spare: the config's schedule as written
            new = Plan.from_config(cfg)
        return new, evals, checkpoints

    def _check_fits(self, end: int, it: int, step: float, evals: int) -> None:
        """A plan of fewer iterations than a run needs (WARM_STEPS + CALIBRATION_STEPS, and twice the lr
        warm-up) is a one-line error naming the shortest workable budget."""
        cfg, est = self.cfg, self.estimates
        needed = min(cfg.max_iters, max(WARM_STEPS + CALIBRATION_STEPS, math.ceil(cfg.warmup_iters / MAX_WARMUP_SHARE)))
        if end >= needed:
            return
        configured, checkpoints = self._configured_counts()
        shortest = self.seconds
        for _ in range(20):  # a longer budget affords more evaluations and a wider margin: to the fixed point
            evals = min(configured, max(1, math.floor(EVAL_SHARE * shortest / est.eval))) if est.eval else 1
            longer = (self.elapsed() + max(0, needed - it) * step + (evals if self.has_val else 0) * est.eval
                      + checkpoints * est.checkpoint + est.finish + max(MIN_MARGIN_S, MARGIN * shortest))
            if longer <= shortest:
                break
            shortest = longer
        why = (f"the {needed} that train.warmup_iters={cfg.warmup_iters} needs (at most {MAX_WARMUP_SHARE:.0%} of a run)"
               if cfg.warmup_iters and needed > WARM_STEPS + CALIBRATION_STEPS else f"the {needed} a run needs")
        raise BudgetError(
            f"{self.source}: train.time_budget={cfg.time_budget} is too short: after {self.elapsed():.0f} s of start-up "
            f"and first steps, at {step:.2f} s a step and {evals} evaluation(s) of {est.eval:.1f} s, it fits {end} "
            f"iterations, fewer than {why}; the shortest workable budget is about "
            f"{format_duration(10 * math.ceil(shortest / 10))}: raise train.time_budget"
            + (" or lower train.warmup_iters" if cfg.warmup_iters else "")
        )

    def update(self, plan: Plan, it: int) -> tuple[Plan, str] | None:
        """A new plan after iteration `it` and why, or None to keep `plan` (always None without a budget).

        The first plan comes once CALIBRATION_STEPS steps are measured; after that, a re-plan when the
        projected end leaves the target by more than the tolerances. When the time left cannot hold the
        final evaluation and the finish, the run ends after one more step (reason "deadline"). The caller
        asks after the iteration's evaluation and checkpoint, which the new plan does not count.
        """
        if not self.active or it >= plan.end_iter:
            return None
        est = self.estimates
        out_of_time = self.clock() + est.eval + est.checkpoint + est.finish > self.deadline - self.margin
        step = self.step_seconds()
        if not self.planned:
            if step is None and not out_of_time:
                return None
            step = step if step is not None else (self.clock() - self.start) / max(1, self.steps_seen)
            est.step = step
            new, evals, _ = self._fit(plan, it, step)
            self._check_fits(new.end_iter, it, step, evals)
            self.planned = True
            return new, "initial"
        if out_of_time:
            return self._ending(plan, it)
        if step is None:  # after --resume: the saved plan holds until this command has measured its steps
            return None
        est.step = step
        projected = self.clock() + self.remaining_seconds(plan, it, step)
        target = self.deadline - self.margin
        noise = NOISE_SE * self.step_error() * (plan.end_iter - it)
        late = projected - target > max(LATE_TOLERANCE * self.seconds, noise)
        early = target - projected > max(EARLY_TOLERANCE * self.seconds, noise) and plan.end_iter < self.cfg.max_iters
        resumed = not self.checked_since_resume
        self.checked_since_resume = True
        if not (late or early):
            return None
        step = est.step = self._changed_speed() or step
        new, _, _ = self._fit(plan, it, step)
        if new.end_iter == plan.end_iter:
            return None
        self.replans += 1
        return new, "resumed" if resumed else ("slower" if late else "faster")

    def _ending(self, plan: Plan, it: int) -> tuple[Plan, str]:
        """One more step, which completes the schedule, then the final evaluation."""
        self.replans += 1
        return replace(plan, start_iter=it, start_pos=plan.position(it), end_iter=it + 1), "deadline"

    # ------------------------------------------------------------------ records

    def record(self, plan: Plan, it: int, reason: str) -> dict[str, Any]:
        """The plan as one metrics.jsonl record (kind "plan") and the model card's entry."""
        est = self.estimates
        milestones = ([plan.iteration_at(s) for s in self.cfg.steps if s > plan.start_pos]
                      if self.cfg.schedule == "multistep" else [])
        entry = {
            "reason": reason, "iteration": it, "iterations": plan.end_iter, "budget_s": self.seconds,
            "elapsed_s": round(self.elapsed(), 2),
            "ends_at_s": round(self.elapsed() + self.remaining_seconds(plan, it), 2),
            "step_s": round(est.step, 4), "eval_s": round(est.eval, 3), "checkpoint_s": round(est.checkpoint, 3),
            "finish_s": round(est.finish, 3),
            "eval_at": plan.eval_iterations() if self.has_val else [], "checkpoint_at": plan.checkpoint_iterations(),
            "milestones": milestones, "warmup_iters": self.cfg.warmup_iters, "ema_warmup": round(plan.ema_warmup, 1),
            "plan": plan.to_dict(),
        }
        self.history.append({k: v for k, v in entry.items() if k != "plan"})
        return entry

    def describe(self, entry: dict[str, Any]) -> str:
        """The plan's line in train.log."""
        evals = entry["eval_at"]
        parts = [
            f"plan ({entry['reason']}): {entry['iterations']} iterations, ending at "
            f"{format_duration(entry['ends_at_s'])} of the {format_duration(self.seconds)} budget "
            f"({format_duration(entry['elapsed_s'])} spent)",
            f"{entry['step_s']:.3f} s a step",
        ]
        if evals:
            parts.append(f"{len(evals)} evaluation(s) of {entry['eval_s']:.1f} s at {', '.join(map(str, evals))}")
        parts.append(f"checkpoints at {', '.join(map(str, entry['checkpoint_at']))}")
        if entry["milestones"]:
            parts.append(f"lr steps at {', '.join(map(str, entry['milestones']))}")
        parts.append(f"{self.cfg.schedule} schedule to {entry['iterations']}, warm-up {self.cfg.warmup_iters}")
        return "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        """The model card's budget entry: the budget, every plan and the time used."""
        return {"budget": self.cfg.time_budget, "budget_s": self.seconds, "used_s": round(self.elapsed(), 1),
                "replans": self.replans, "plans": self.history}

    def state_dict(self) -> dict[str, Any]:
        """What --resume needs: the time already spent and what was measured (the plan is saved beside it)."""
        return {"used_s": self.elapsed(), "estimates": asdict(self.estimates), "planned": self.planned,
                "replans": self.replans, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.used = float(state.get("used_s", 0.0))
        self.estimates = Estimates(**state.get("estimates", {}))
        self.planned = bool(state.get("planned", False))
        self.replans = int(state.get("replans", 0))
        self.history = list(state.get("history", []))
        self.checked_since_resume = False
