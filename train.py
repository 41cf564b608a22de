"""Entry point: `python train.py --help`. The command lives in retinanet/cli/train.py."""
import sys

from retinanet.cli.common import run_cli
from retinanet.cli.train import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
