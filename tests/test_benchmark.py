"""scripts/benchmark.py end to end at a toy size: every documented figure is there and positive."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from retinanet.cli import benchmark
from retinanet.engine.runtime import resolve_amp


def test_benchmark_writes_positive_figures(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = ["--device", "cpu", "--backbone", "resnet18", "--size", "64", "--batch-size", "1", "--iters", "1",
            "--warmup", "1", "--rows", "ours_fp32", "--workers", "0", "--loader-batches", "1", "--eval-images", "3",
            "--json", str(out), "--profile", str(tmp_path / "profile")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a smoke test: one thread avoids OpenMP barriers on a busy machine
    try:
        assert benchmark.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    for row in ("ours", "torchvision", "torchvision_best", "ours_fp32"):
        for key in ("train_images_per_s", "infer_images_per_s", "train_flops_per_step"):
            assert report[row][key] > 0, (row, key)
    assert report["ours"]["row"] in report and report["ours"]["channels_last"] is True
    assert report["ours_fp32"]["amp"] == "none" and report["ours_fp32"]["channels_last"] is False
    best = report["torchvision_best"]  # torchvision at its own best here: what auto picks, channels_last
    assert best["amp"] == resolve_amp("auto", torch.device("cpu"))[0] and best["channels_last"] is True
    assert best["compiled"] is False
    assert report["ours"]["train_speedup_vs_torchvision_best"] == (
        report["ours"]["train_images_per_s"] / best["train_images_per_s"])
    assert report["loader"]["images_per_s"] > 0
    assert report["coco_eval"]["pycocotools_s"] > 0
    if importlib.util.find_spec("faster_coco_eval") is not None:
        assert report["coco_eval"]["faster_coco_eval_s"] > 0
        assert report["coco_eval"]["max_abs_stat_difference"] < 1e-12
    env = report["environment"]
    assert env["size"] == 64 and env["batch_size"] == 1 and env["backbone"] == "resnet18" and env["threads"] == 1
    assert "train img/s" in capsys.readouterr().out

    ours, best = report["profile"][report["ours"]["row"]], report["profile"]["torchvision_best"]
    assert list(ours["train_phases_ms"]) == ["forward", "backbone", "fpn", "head", "loss", "backward", "optimizer"]
    assert list(best["train_phases_ms"]) == ["forward", "backbone", "fpn", "head", "backward", "optimizer"]
    assert list(ours["infer_phases_ms"]) == ["forward", "backbone", "fpn", "head", "postprocess"]
    for figures in (ours, best):
        phases = figures["train_phases_ms"]
        assert phases["backbone"] + phases["fpn"] + phases["head"] <= phases["forward"]
        assert phases["forward"] + phases["backward"] + phases["optimizer"] <= figures["train_ms"]
    assert "aten::" in (tmp_path / "profile" / f"{report['ours']['row']}_profile.txt").read_text()
    assert (tmp_path / "profile" / "torchvision_best_train_trace.json").stat().st_size > 0


@pytest.mark.parametrize("flag, value", [("--profile", "blocker/profile"), ("--json", "blocker/sub/bench.json")])
def test_an_output_folder_that_cannot_exist_stops_before_the_timing(flag: str, value: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "blocker").write_text("a file where a folder must go")
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args([flag, str(tmp_path / value)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f" error: {flag}: cannot create the folder {tmp_path / 'blocker'}" in err
    assert err.endswith("(Not a directory); give a writable folder path")


def test_without_the_export_extra_the_exported_rows_are_skipped_with_a_note(monkeypatch, capsys) -> None:
    from retinanet.config import ConfigError
    from retinanet.studies import benchmark as study

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnxruntime", "nncf") else real(name, *a))
    rows = {"onnxruntime", "openvino_f32", "openvino_int8"}
    assert study.runnable_exported_rows(rows, by_default=True) == {"openvino_f32"}
    assert capsys.readouterr().out == (
        "note: the onnxruntime row is skipped: onnxruntime not installed (`pip install -e .[export]`)\n"
        "note: the openvino_int8 row is skipped: nncf not installed (`pip install -e .[export]`)\n")
    monkeypatch.setattr(study, "require", lambda name: (_ for _ in ()).throw(ConfigError(f"{name} is not installed")))
    with pytest.raises(ConfigError, match="^onnxruntime is not installed"):  # asked for by --rows: a one-line error
        study.runnable_exported_rows({"onnxruntime"}, by_default=False)


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 NVL", 835.0),
                                        ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA H200", 989.0)])
def test_mfu_peak_of_each_card_by_name(name: str, peak: float, monkeypatch) -> None:
    from retinanet.studies import benchmark as study

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert study.peak_tflops(torch.device("cuda"), 0.0) == peak


def test_every_row_starts_its_timed_train_step_without_gradients() -> None:
    """The step's peak above what was resident then counts the gradients backward allocates, for every row."""
    from retinanet.studies import benchmark as study

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    grads_at_start: list[bool] = []

    def step() -> None:  # keeps its gradients after the step, as torchvision's does
        grads_at_start.append(weight.grad is not None)
        (weight * 2).sum().backward()
        optimizer.step()

    row = study.Row("r", "r", step, lambda: None, lambda: (0, 0), {"compiled": False}, optimizer=optimizer)
    study.run_rows([row], warmup=1, iters=2, device=torch.device("cpu"))
    assert grads_at_start == [False, False, False]


def test_loader_row_on_a_configs_data_times_every_mode_per_epoch(tmp_path: Path, capsys) -> None:
    from tests.helpers import REPO

    sample = REPO / "data" / "sample"
    out = tmp_path / "loader.json"
    args = ["--loader-config", str(REPO / "configs" / "sample.yaml"), "--set", "data.num_workers=0",
            f"data.train.images={sample / 'train'}", f"data.train.annotations={sample / 'annotations' / 'instances_train.json'}",
            "input.min_size=[96]", "input.max_size=128", "train.batch_size=3", "--json", str(out)]
    assert benchmark.main(args) == 0
    result = json.loads(out.read_text())["loader_config"]
    assert list(result["modes"]) == ["full", "none", "ram", "disk"] and result["images"] == 8
    for mode, figures in result["modes"].items():
        assert len(figures["images_per_s"]) == 2 and min(figures["images_per_s"]) > 0, mode
        assert figures["epoch_images"] == [6, 6]  # 8 images in batches of 3: the 2 left over wait for the next epoch
        assert ("cache_mb" in figures) == (mode in ("ram", "disk"))
    assert result["modes"]["ram"]["cache_mb"] == result["modes"]["disk"]["cache_mb"] > 0
    table = capsys.readouterr().out
    assert "full decode, no cache (before reduced decoding)" in table and "data.cache=disk" in table


@pytest.mark.parametrize("argv, message", [
    (["--set", "data.cache=ram"], "--set changes --loader-config's config"),
    (["--loader-config", "c.yaml", "--loader-modes", "ram,zip"], "--loader-modes 'ram,zip': choose from"),
    (["--loader-config", "c.yaml", "--loader-epochs", "0"], "--loader-epochs must be >= 1"),
])
def test_loader_flags_are_checked(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
