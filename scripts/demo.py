"""Entry point: `python scripts/demo.py --help`. The command lives in retinanet/cli/demo.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from retinanet.cli.common import run_cli  # noqa: E402
from retinanet.cli.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))
