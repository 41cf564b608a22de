"""Entry point: `python evaluate.py --help`. The command lives in retinanet/cli/evaluate.py."""
import sys

from retinanet.cli.common import run_cli
from retinanet.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
