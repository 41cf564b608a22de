"""The GPU check: in one call, the checks that show this code runs right on a CUDA device.

Each check is a function that returns a one-line detail or raises; the runner times it, prints one
table, writes one JSON and returns non-zero if any check failed. With `device` cpu every check that
needs no CUDA runs (the test suite runs that, so the script cannot rot); the CUDA-only ones are
listed as skipped. The checks, in order:

- unit: float32 anchors under bf16 autocast; `train_step` in none, bf16 and fp16 (CUDA); a step the
  GradScaler skips; steps with inf or nan gradients skipped with nothing changed; fpn.p7's weight
  gradient at 64 px under bf16 against fp32 (a oneDNN kernel bug, modeling.fpn.stride2_conv); the host
  syncs of one `train_step`; a world-size-1 group of the backend training uses (`cpu:gloo,cuda:nccl`
  on CUDA) taking CPU and device tensors and objects;
- end to end on a small synthetic set: train, `--resume`, evaluate, predict, export (ONNX, the model
  on the device);
- compile (CUDA): train steps over three input sizes, with the count of graphs compiled;
- benchmark (CUDA): `scripts/benchmark.py` at 1024 x 1024 (about 800 x 1333 in pixels), batch 8,
  bf16: images/s against torchvision_best, MFU, peak train memory.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from retinanet.config import Config, load_config
from retinanet.data.synthetic import make_dataset
from retinanet.engine import distributed
from retinanet.engine.checkpoint import Checkpoint
from retinanet.engine.host_sync import count_host_syncs
from retinanet.engine.runtime import autocast, compile_model
from retinanet.engine.trainer import StepOptions, train, train_step
from retinanet.deploy.export import ModelMetadata, export_onnx
from retinanet.modeling.model import build_criterion, build_model, build_postprocess
from retinanet.modeling.preprocess import IMAGENET_MEAN, IMAGENET_STD
from retinanet.structures import Batch, Target

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo_cpu.yaml"
MAX_TRAIN_STEP_SYNCS = 2  # engine.host_sync: the positives' nonzero, the stats, grad norm and flags read back
TINY = [
    "model.backbone.name=resnet18", "model.backbone.weights=none", "model.backbone.norm=gn", "model.fpn.channels=32",
    "model.head.channels=32", "model.head.num_convs=1", "model.head.norm=none", "model.anchors.sizes=[16,32,64,128,256]",
    "input.min_size=[64]", "input.max_size=64", "data.num_workers=0", "train.batch_size=4", "train.log_every=1",
    "train.warmup_iters=0", "train.schedule=constant", "eval.batch_size=4", "eval.num_vis_images=0",
]


@dataclass
class Context:
    device: torch.device
    work: Path
    state: dict[str, Any] = field(default_factory=dict)  # what the end-to-end checks hand on (the run folder)

    def cfg(self) -> Config:
        return load_config(None, [*TINY, f"train.device={self.device}"])

    def batch(self, size: int = 64) -> Batch:
        gen = torch.Generator().manual_seed(0)
        targets = [Target(torch.tensor([[5.0, 5, 30, 35]]), torch.tensor([1])),
                   Target(torch.tensor([[15.0, 20, 60, 50]]), torch.tensor([0]))]
        return Batch(torch.rand(2, 3, size, size, generator=gen), [(size, size)] * 2, targets)


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], str]  # the detail line; raises when the check fails
    needs_cuda: bool = False


# ----------------------------------------------------------------------------- unit checks


def check_anchors(ctx: Context) -> str:
    model = build_model(ctx.cfg(), num_classes=2).to(ctx.device).eval()
    with torch.no_grad(), autocast(ctx.device, "bf16"):
        out = model(ctx.batch().images.to(ctx.device))
    assert out.anchors.dtype == torch.float32, f"anchors are {out.anchors.dtype} under bf16 autocast"
    return f"anchors {out.anchors.dtype}, logits {out.cls_logits.dtype}"


def step_setup(ctx: Context, amp: str):
    cfg = ctx.cfg()
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=2).to(ctx.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp == "fp16")
    return model, build_criterion(cfg, 2), optimizer, scaler, StepOptions(ctx.device, amp)


def check_train_step(amp: str) -> Callable[[Context], str]:
    def run(ctx: Context) -> str:
        model, criterion, optimizer, scaler, opts = step_setup(ctx, amp)
        losses = [train_step(model, criterion, optimizer, scaler, [ctx.batch()], opts) for _ in range(2)]
        applied = [s for s in losses if s.finite]  # fp16: the GradScaler may skip while it finds its scale
        assert applied and all(math.isfinite(s.loss) and math.isfinite(s.grad_norm) for s in applied), losses
        return f"{len(applied)}/2 steps applied, loss {applied[0].loss:.4f} -> {applied[-1].loss:.4f}"
    return run


def check_scaler_skip(ctx: Context) -> str:
    model, criterion, optimizer, _, opts = step_setup(ctx, "none")
    scaler = torch.amp.GradScaler(ctx.device.type, init_scale=2.0**8)  # enabled: the fp16 path's skip logic
    weight = model.head.cls_logits.weight
    before = weight.detach().clone()
    hook = weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))  # an fp16 overflow
    skipped = train_step(model, criterion, optimizer, scaler, [ctx.batch()], opts)
    hook.remove()
    assert skipped.scaler_skipped and not skipped.finite, f"an inf gradient gave {skipped}"
    assert torch.equal(weight.detach(), before), "the skipped step changed the weights"
    applied = train_step(model, criterion, optimizer, scaler, [ctx.batch()], opts)
    assert applied.finite and not applied.scaler_skipped, f"the next step gave {applied}"
    return f"skipped and counted; scale {2.0**8:g} -> {scaler.get_scale():g}; the next step applied"


def check_nonfinite_grads_skip(ctx: Context) -> str:
    """An inf, then a nan, in head.cls_logits.weight's gradient with clipping on: skipped, nothing changed."""
    model, criterion, optimizer, scaler, _ = step_setup(ctx, "none")
    opts = StepOptions(ctx.device, "none", grad_clip=10.0)  # clipping: where an inf norm zeroed, a nan one spread
    weight = model.head.cls_logits.weight
    for value in (float("inf"), float("nan")):
        params = [p.detach().clone() for p in model.parameters()]
        hook = weight.register_hook(lambda grad, value=value: torch.full_like(grad, value))
        stats = train_step(model, criterion, optimizer, scaler, [ctx.batch()], opts)
        hook.remove()
        assert not stats.finite and stats.nonfinite_grads, f"an {value} gradient gave {stats}"
        assert stats.nonfinite_params == ("head.cls_logits.weight",), stats.nonfinite_params
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), params)), "the skipped step changed weights"
    applied = train_step(model, criterion, optimizer, scaler, [ctx.batch()], opts)
    assert applied.finite and all(torch.isfinite(p).all() for p in model.parameters()), f"the next step gave {applied}"
    return "inf and nan gradients in head.cls_logits.weight (grad_clip 10): skipped, weights unchanged; the next applied"


def check_p7_grad_bf16(ctx: Context) -> str:
    """fpn.p7.weight's gradient at 64 px (P6 1x1) under bf16 autocast against fp32, from the same weights.

    P7's input is 1x1, so only the centre tap of its weight gradient sees data and the other 8 are 0;
    oneDNN's bf16 kernel put garbage there, different on each call (modeling.fpn.stride2_conv): 3 calls.
    """
    model, criterion, _, _, _ = step_setup(ctx, "none")
    batch = ctx.batch().to(ctx.device)

    def p7_grad(amp: str) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with autocast(ctx.device, amp):
            outputs = model(batch.images)
        criterion(outputs, batch.targets)["loss"].backward()
        return model.fpn.p7.weight.grad.detach().float().cpu()

    fp32 = p7_grad("none")
    off_centre = torch.ones(3, 3, dtype=torch.bool)
    off_centre[1, 1] = False
    stray, error = 0.0, 0.0
    for _ in range(3):
        bf16 = p7_grad("bf16")
        stray = max(stray, float(bf16[..., off_centre].abs().max()))
        error = max(error, float(torch.linalg.vector_norm(bf16 - fp32) / torch.linalg.vector_norm(fp32)))
    scale = float(fp32.abs().max())
    detail = f"relative error {error:.3g}; off-centre taps {stray:.3g} (fp32 {float(fp32[..., off_centre].abs().max()):.3g})"
    assert scale > 0 and stray <= 1e-3 * scale and error <= 0.25, detail
    return detail


def check_host_syncs(ctx: Context) -> str:
    model, criterion, optimizer, scaler, opts = step_setup(ctx, "none")
    batch = ctx.batch()
    train_step(model, criterion, optimizer, scaler, [batch], opts)  # first-call work out of the count
    with count_host_syncs() as counts:
        train_step(model, criterion, optimizer, scaler, [batch], opts)
    detail = f"{sum(counts.values())} calls ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"
    if ctx.device.type == "cuda":  # the GPU's own count of the same waits
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train_step(model, criterion, optimizer, scaler, [batch], opts)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        detail += f"; cuda sync debug mode: {sum('synchroniz' in str(w.message) for w in caught)} syncs"
    assert sum(counts.values()) <= MAX_TRAIN_STEP_SYNCS, detail
    return detail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_process_group(ctx: Context) -> str:
    if dist.is_initialized():
        raise RuntimeError("a process group already exists in this process; run the GPU check on its own")
    backend = distributed.CUDA_BACKEND if ctx.device.type == "cuda" else "gloo"
    options = {"device_id": ctx.device} if ctx.device.type == "cuda" else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=timedelta(minutes=2), **options)
    try:
        tensors = [torch.ones(4, dtype=torch.float64), torch.ones(4, device=ctx.device)]  # the val loss, step stats
        for t in tensors:
            dist.all_reduce(t)
        gathered: list[Any] = [None]
        dist.gather_object({"records": [1, 2]}, gathered, dst=0)
        box = [{"AP": 0.5}]
        dist.broadcast_object_list(box, src=0)
        assert all(t.sum().item() == 4 for t in tensors) and gathered == [{"records": [1, 2]}] and box == [{"AP": 0.5}]
    finally:
        dist.destroy_process_group()
    kinds = "cpu and cuda tensors" if ctx.device.type == "cuda" else "cpu tensors"
    return f"world size 1, backend {backend}: all_reduce of {kinds}, gather_object, broadcast_object_list"


# ----------------------------------------------------------------------------- end to end


def run_overrides(ctx: Context) -> list[str]:
    data = ctx.work / "data"
    if not (data / "annotations" / "instances_val.json").is_file():
        make_dataset(data, seed=1, num_train=8, num_val=4, image_size=64)
    return [*TINY, f"train.device={ctx.device}", f"data.train.images={data / 'train'}",
            f"data.train.annotations={data / 'annotations' / 'instances_train.json'}",
            f"data.val.images={data / 'val'}", f"data.val.annotations={data / 'annotations' / 'instances_val.json'}",
            "train.eval_every=0", "train.checkpoint_every=1", "model.postprocess.score_thresh=0.0"]


def check_train(ctx: Context) -> str:
    run = ctx.work / "run"
    assert train(str(DEMO_CONFIG), run_overrides(ctx) + ["train.max_iters=2"], str(run)) == 0, "train.py failed"
    ctx.state["run"] = run
    return f"2 iterations on {ctx.device}; {run}"


def check_resume(ctx: Context) -> str:
    run = ctx.state["run"]
    assert train(str(DEMO_CONFIG), run_overrides(ctx) + ["train.max_iters=3"], str(run), resume=True) == 0
    ckpt = Checkpoint.load(run / "checkpoints" / "last.pt")
    assert ckpt.iteration == 3, f"resumed to iteration {ckpt.iteration}"
    return f"resumed to iteration {ckpt.iteration}; CUDA RNG states saved: {len((ckpt.rng or {}).get('cuda', []))}"


def cli(ctx: Context, module: str, args: list[str]) -> None:
    """A command as a user runs it (its own process), with its output kept in the work folder."""
    log = ctx.work / f"{module}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.run([sys.executable, "-m", f"retinanet.cli.{module}", *args], cwd=REPO, env=env,
                              stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        raise RuntimeError(f"{module} exited {code}: {lines[-1] if lines else ''} (log: {log})")


def check_evaluate(ctx: Context) -> str:
    run = ctx.state["run"]
    cli(ctx, "evaluate", ["--config", str(DEMO_CONFIG), "--checkpoint", str(run / "checkpoints" / "last.pt"),
                          "--output-dir", str(run / "eval"), "--set", *run_overrides(ctx)])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    return f"AP {100 * metrics['AP']:.1f} % (3 iterations: only that it runs)"


def check_predict(ctx: Context) -> str:
    run = ctx.state["run"]
    cli(ctx, "predict", ["--checkpoint", str(run / "checkpoints" / "last.pt"), "--input", str(ctx.work / "data" / "val"),
                         "--output-dir", str(run / "predictions"), "--device", str(ctx.device)])
    return f"{sum(1 for _ in (run / 'predictions').iterdir())} files in {run / 'predictions'}"


def check_export(ctx: Context) -> str:
    """export_onnx of the model on the device (its example inputs must follow it there)."""
    ckpt = Checkpoint.load(ctx.state["run"] / "checkpoints" / "last.pt")
    cfg = ckpt.build_config()
    model = build_model(cfg)
    model.load_state_dict(ckpt.inference_weights)
    model = model.to(ctx.device).eval()
    metadata = ModelMetadata.from_config(cfg, ckpt.categories, IMAGENET_MEAN, IMAGENET_STD)
    path = export_onnx(model, build_postprocess(cfg), metadata, ctx.work / "model.onnx")
    return f"{path} ({path.stat().st_size / 1e6:.1f} MB) from a model on {ctx.device}"


# ----------------------------------------------------------------------------- CUDA only


def check_compile(ctx: Context) -> str:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model, criterion, optimizer, scaler, opts = step_setup(ctx, "bf16")
    compile_model(model)
    for size in (64, 96, 128, 96):
        stats = train_step(model, criterion, optimizer, scaler, [ctx.batch(size)], opts)
        assert math.isfinite(stats.loss), f"compiled step at {size} px gave {stats}"
    graphs = int(counters["stats"]["unique_graphs"])
    assert graphs <= 3 * 4 * 2, f"{graphs} graphs compiled (backbone, FPN, head: at most 4 each per mode)"
    return f"{graphs} graphs over 3 input sizes (train mode, forward and backward)"


def check_benchmark(ctx: Context) -> str:
    out = ctx.work / "benchmark.json"
    cli(ctx, "benchmark", ["--device", "cuda", "--size", "1024", "--batch-size", "8", "--amp", "bf16", "--iters", "3",
                           "--rows", "ours_bf16_channels_last", "--loader-batches", "0", "--eval-images", "0",
                           "--json", str(out)])
    report = json.loads(out.read_text())
    ours, best = report["ours"], report["torchvision_best"]
    mfu = ours.get("train_mfu")
    return (f"ours {ours['train_images_per_s']:.1f} img/s vs torchvision_best {best['train_images_per_s']:.1f}; "
            f"MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'}; train {ours.get('train_peak_memory_gb', 0):.2f} GB")


CHECKS: tuple[Check, ...] = (
    Check("anchors_fp32_under_bf16", check_anchors),
    Check("train_step_none", check_train_step("none")),
    Check("train_step_bf16", check_train_step("bf16")),
    Check("train_step_fp16", check_train_step("fp16"), needs_cuda=True),
    Check("scaler_skip", check_scaler_skip),
    Check("nonfinite_grads_skip", check_nonfinite_grads_skip),
    Check("p7_grad_bf16", check_p7_grad_bf16),
    Check("host_syncs", check_host_syncs),
    Check("process_group", check_process_group),
    Check("train", check_train),
    Check("resume", check_resume),
    Check("evaluate", check_evaluate),
    Check("predict", check_predict),
    Check("export", check_export),
    Check("compile", check_compile, needs_cuda=True),
    Check("benchmark", check_benchmark, needs_cuda=True),
)


def run_checks(device: torch.device, work: Path, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Every check (or those in `only`) on `device`: name, status pass | fail | skip, seconds, detail."""
    ctx = Context(device, work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for check in CHECKS:
        if only is not None and check.name not in only:
            continue
        if check.needs_cuda and device.type != "cuda":
            results.append({"name": check.name, "status": "skip", "seconds": 0.0, "detail": "needs CUDA"})
            continue
        start = time.perf_counter()
        try:
            status, detail = "pass", check.run(ctx)
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, and the next one runs
            status, detail = "fail", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            (work / f"{check.name}.traceback.txt").write_text(traceback.format_exc())
        results.append({"name": check.name, "status": status, "seconds": round(time.perf_counter() - start, 2),
                        "detail": detail})
        print(f"{check.name}: {status} ({results[-1]['seconds']:.1f} s)", file=sys.stderr, flush=True)
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    width = max(len(r["name"]) for r in results)
    lines = [f"{'check':<{width}}  status  seconds  detail"]
    lines += [f"{r['name']:<{width}}  {r['status']:<6}  {r['seconds']:>7.1f}  {r['detail']}" for r in results]
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)))
    return env


def run_gpu_check(device: torch.device, work: Path, json_path: Path, only: set[str] | None = None) -> int:
    """Run, print the table, write the JSON; 1 if any check failed, else 0."""
    results = run_checks(device, work, only)
    print(format_table(results))
    failed = [r["name"] for r in results if r["status"] == "fail"]
    json_path.write_text(json.dumps({"environment": environment(device), "checks": results, "failed": failed},
                                    indent=2) + "\n")
    print(f"{len(results) - len(failed)} of {len(results)} checks did not fail; JSON: {json_path}"
          + (f"; failed: {', '.join(failed)} (tracebacks in {work})" if failed else ""))
    return 1 if failed else 0
