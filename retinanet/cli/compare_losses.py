"""Compare classification losses (focal vs the cross-entropy family) under one training budget.

    python scripts/compare_losses.py --config FILE [--losses focal,bce:alpha=0.75] \\
        [--grid loss.gamma=0,1,2 loss.alpha=0.25,0.5] [--seeds N] [--output-dir DIR] [--jobs J] \\
        [--set KEY=VALUE ...] [--debug]

A setting is one `--losses` entry (`TYPE[:key=value[;key=value]]`, keys relative to `loss.` or full
config keys, e.g. `focal:alpha=effective_number`, `focal:label_smoothing=0.05`,
`focal:data.repeat_factor_threshold=0.1`) at one point of the `--grid` product; `loss.gamma` only applies to focal. Precedence:
config < --set < --grid < the entry's own overrides; loss.type and train.seed come from --losses and
--seeds only. Settings with the same resolved config are run once. Seed i (0..N-1) sets train.seed to
the config's seed + i for every setting, so one seed's runs share data order, augmentations and init.

Each run is `train.py` then `evaluate.py` on its final weights (checkpoints/last.pt: the same budget
for every setting), in subprocesses, into DIR/runs/<run>/. A failed run is reported and the others go
on; the exit code is then 1. Running the same command again resumes the study: evaluated runs are
reused, trained ones only evaluated, interrupted ones continued with `train.py --resume`.

Every setting trains at one precision (train.amp resolved once per setting and stated for every run);
settings that resolve to different ones stop the study unless --losses or --grid vary train.amp.

Writes DIR/report.md (each run's and setting's AP, AP50, AP75, the rarest class's AP50 and the recall at
the run's operating point, overall and for the rarest class, and its precision), DIR/results.csv, DIR/pr_curves.png and
DIR/ap_over_iters.png (the three settings with the highest mean AP), DIR/compare.log and DIR/tensorboard
(one hparams entry per run).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from retinanet.cli.common import run_cli
from retinanet.config import ConfigError
from retinanet.studies.compare_losses import DEFAULT_LOSSES, LOSS_TYPES, Launcher, launch, run_study


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config every run starts from")
    parser.add_argument("--losses", default=DEFAULT_LOSSES,
                        help=f"comma list of TYPE[:key=value[;key=value]], TYPE in {'/'.join(LOSS_TYPES)} "
                             f"(default {DEFAULT_LOSSES})")
    parser.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                        help="config keys to sweep; the product applies to every loss (loss.gamma to focal only)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per setting: train.seed = config seed + 0..N-1")
    parser.add_argument("--output-dir", default=None, help="study folder (default: runs/compare-<config name>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each with cores // jobs threads")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides for every run")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, launcher: Launcher = launch) -> int:
    args = parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        raise ConfigError(f"--seeds {args.seeds} --jobs {args.jobs}: both must be >= 1")
    command = shlex.join(["python", "scripts/compare_losses.py", *(argv if argv is not None else sys.argv[1:])])
    return run_study(args, command, launcher)


if __name__ == "__main__":
    sys.exit(run_cli(main))
