"""`make demo`: generate the synthetic shapes set (first time only), train configs/demo_cpu.yaml,
evaluate the best checkpoint, and print the metrics table and where the TensorBoard logs are."""
from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import evaluate  # noqa: E402
import train  # noqa: E402
from make_synthetic_dataset import make_dataset  # noqa: E402
from retinanet.errors import run_cli  # noqa: E402

CONFIG = "configs/demo_cpu.yaml"


def main() -> int:
    start = time.time()
    make_dataset(REPO / "datasets" / "synthetic", seed=0, num_train=3000, num_val=300, image_size=128)
    run_dir = REPO / "runs" / f"demo_cpu-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"[1/2] training {CONFIG} -> {run_dir}")
    code = run_cli(lambda: train.main(["--config", CONFIG, "--output-dir", str(run_dir)]))
    if code:
        return code
    print(f"[2/2] evaluating {run_dir}/checkpoints/best.pt")
    code = run_cli(
        lambda: evaluate.main(
            ["--config", str(run_dir / "config.yaml"), "--checkpoint", str(run_dir / "checkpoints" / "best.pt"),
             "--output-dir", str(run_dir / "eval")]
        )
    )
    print(f"demo finished in {(time.time() - start) / 60:.1f} min")
    print(f"TensorBoard: tensorboard --logdir {run_dir.relative_to(REPO)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
