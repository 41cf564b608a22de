"""Entry point: `python scripts/gpu_check.py --help`. The command lives in retinanet/cli/gpu_check.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from retinanet.cli.common import run_cli  # noqa: E402
from retinanet.cli.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))
