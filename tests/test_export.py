"""Export: onnxruntime and OpenVINO (f32) give the PyTorch Detector's detections; the CLI's export, predict and
evaluate; constant folding (the folded export equals the unfolded one); an INT8 IR records its calibration.

One tiny checkpoint (synthetic-set classes, a classification output spread so that real photos get
0 to more than the cap of detections) is exported once with --dynamic and reused. Parity means:
the same count per image, and one-to-one the same labels, boxes within 1e-2 px and scores within 1e-4.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
import torch
from onnx import TensorProto, helper

from retinanet.cli import evaluate, export, predict
from retinanet.cli.common import run_cli
from retinanet.config import ConfigError, load_config, replace, to_dict
from retinanet.data.coco import load_image
from retinanet.data.loaders import build_dataset
from retinanet.engine.checkpoint import Checkpoint
from retinanet.evaluation.evaluator import STAT_NAMES
from retinanet.evaluation.operating_point import ClassPoint, OperatingPoint, OperatingPointReport, save_report
from retinanet.fileio import RunFileError
from retinanet.modeling.detector import Detector
from retinanet.deploy.export import METADATA_FORMAT, ModelMetadata, class_nms, export_onnx, quiet_library_logs
from retinanet.deploy.fold import fold_constants
from retinanet.modeling.model import build_model, build_postprocess
from retinanet.deploy.onnx_detector import OnnxDetector
from retinanet.deploy.openvino_detector import OpenVinoDetector, resolve_precision
from retinanet.deploy.openvino_export import read_onnx, save_ir
from retinanet.modeling.preprocess import prepare_images
from tests.helpers import REPO, make_large_photos, synthetic_overrides

DEMO = str(REPO / "configs" / "demo_cpu.yaml")
CAP = 10  # detections_per_img of the test model: several photos reach it
PHOTOS = sorted((REPO / "data" / "sample" / "val").glob("*.jpg")) + sorted((REPO / "data" / "sample" / "train").glob("*.jpg"))[:3]


def _photo(path: Path) -> torch.Tensor:
    return torch.from_numpy(load_image(path)).permute(2, 0, 1)  # (3, H, W) uint8


def _write_run(run: Path, overrides: list[str], state: dict | None = None) -> tuple[Path, dict]:
    """A run folder with checkpoints/best.pt: the tiny model with a spread classification output."""
    cfg = load_config(DEMO, overrides)
    val = build_dataset(cfg, "val", DEMO)
    categories = [{"id": i, "name": n} for i, n in zip(val.category_map.category_ids, val.category_map.names)]
    cfg = replace(cfg, **{"model.num_classes": len(categories)})
    if state is None:
        torch.manual_seed(0)
        model = build_model(cfg)
        torch.nn.init.normal_(model.head.cls_logits.weight, std=0.3)
        torch.nn.init.constant_(model.head.cls_logits.bias, -7.0)
        state = model.state_dict()
    path = run / "checkpoints" / "best.pt"
    Checkpoint(model=state, config=to_dict(cfg), categories=categories, iteration=7).save(path)
    return path, state


@pytest.fixture(scope="module")
def run(synthetic: Path, tmp_path_factory) -> dict:
    """The checkpoint, its operating point, its dynamic export, and a second run exported static at batch 3."""
    root = tmp_path_factory.mktemp("export")
    sets = synthetic_overrides(synthetic) + [f"model.postprocess.detections_per_img={CAP}"]
    ckpt, state = _write_run(root / "run", sets)
    categories = Checkpoint.load(ckpt).categories
    report = OperatingPointReport(
        "precision", 0.9, OperatingPoint(0.1, 0.9, 0.5, 0.64, True),
        {c["name"]: ClassPoint(c["id"], OperatingPoint(0.1 + i / 100, 0.9, 0.5, 0.64, True))
         for i, c in enumerate(categories)},
        {"checkpoint": "checkpoints/best.pt", "iteration": 7},
    )
    save_report(report, root / "run")
    dynamic = root / "dynamic.onnx"
    assert run_cli(lambda: export.main(["--checkpoint", str(ckpt), "--output", str(dynamic), "--dynamic"])) == 0
    # Static graphs take one padded size: 96 x 96 here (size_divisible 32), so a non-square photo is refused.
    static_ckpt, _ = _write_run(root / "static", sets + ["input.min_size=[96]", "input.max_size=96", "input.size_divisible=32"], state)
    static = root / "static.onnx"
    assert run_cli(lambda: export.main(["--checkpoint", str(static_ckpt), "--output", str(static), "--batch-size", "3"])) == 0
    return {"ckpt": ckpt, "static_ckpt": static_ckpt, "dynamic": dynamic, "static": static, "report": report,
            "sets": sets, "root": root}


def _torch_detector(ckpt_path: Path) -> Detector:
    ckpt = Checkpoint.load(ckpt_path)
    detector = Detector.from_config(ckpt.build_config(), num_classes=len(ckpt.categories))
    detector.model.load_state_dict(ckpt.model)
    return detector.eval()


def assert_same_detections(ours: list[dict], ref: list[dict]) -> None:
    """Equal counts; rows matched one to one on label, boxes (1e-2 px) and scores (1e-4).

    The rows are ordered by score; two scores closer than float noise may swap places, so a row
    is matched to any unused row of the other list, not only the one at its position.
    """
    assert len(ours) == len(ref)
    for image, (a, b) in enumerate(zip(ours, ref)):
        assert a["scores"].shape == b["scores"].shape, (image, a["scores"].shape, b["scores"].shape)
        used = torch.zeros(len(b["scores"]), dtype=torch.bool)
        for box, score, label in zip(a["boxes"], a["scores"], a["labels"]):
            fits = ((b["boxes"] - box).abs().amax(dim=1) <= 1e-2) & ((b["scores"] - score).abs() <= 1e-4)
            fits &= (b["labels"] == label) & ~used
            assert fits.any(), (image, box.tolist(), float(score), int(label))
            used[int(fits.nonzero()[0])] = True
        assert a["labels"].dtype == b["labels"].dtype == torch.int64


def test_class_nms_is_per_image_and_class() -> None:
    """Hand-made case: IoU(0, 1) = 0.81 suppresses within a class only; the threshold drops box 3."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 8.1], [20, 20, 30, 30], [0, 0, 10, 10]]]).repeat(2, 1, 1)
    scores = torch.full((2, 2, 4), -1.0)
    scores[0, 0, :3] = torch.tensor([0.9, 0.8, 0.7])  # image 0, class 0: box 1 overlaps box 0
    scores[0, 1, 1] = 0.6  # the same box in class 1 survives
    scores[1, 1, 3] = 0.5  # image 1
    scores[1, 0, 3] = -0.9  # below the score threshold
    kept = class_nms(boxes, scores, 0.5, -0.5)
    assert sorted(map(tuple, kept.tolist())) == [(0, 0, 0), (0, 0, 2), (0, 1, 1), (1, 1, 3)]
    assert class_nms(boxes, scores, 0.85, -0.5).shape == (5, 3)  # 0.81 < 0.85: box 1 stays


@pytest.mark.slow
def test_metadata_makes_the_file_self_contained(run: dict) -> None:
    props = {p.key: p.value for p in onnx.load(str(run["dynamic"])).metadata_props}
    assert props["retinanet.format"] == METADATA_FORMAT
    ckpt = Checkpoint.load(run["ckpt"])
    assert json.loads(props["retinanet.categories"]) == ckpt.categories
    assert json.loads(props["retinanet.preprocess"]) == {
        "min_size": 64, "max_size": 64, "size_divisible": 128, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    post = json.loads(props["retinanet.postprocess"])
    assert (post["score_thresh"], post["topk_candidates"], post["nms_thresh"], post["detections_per_img"]) == (
        0.05, 1000, 0.5, CAP)
    assert json.loads(props["retinanet.operating_point"]) == run["report"].to_dict()
    assert json.loads(props["retinanet.source"]) == {"checkpoint": str(run["ckpt"]), "iteration": 7}
    detector = OnnxDetector(run["dynamic"])
    assert detector.category_ids == ckpt.category_ids and detector.input_shape[1] == 3
    assert [isinstance(d, int) for d in detector.input_shape] == [False, True, False, False]


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_equals_pytorch_on_photos(run: dict, batch: int) -> None:
    torch_det, onnx_det = _torch_detector(run["ckpt"]), OnnxDetector(run["dynamic"])
    photos = [_photo(p) for p in PHOTOS]
    assert len({tuple(p.shape) for p in photos}) >= 5  # several sizes and aspect ratios
    ours, ref = [], []
    for start in range(0, len(photos), batch):
        ours += onnx_det(photos[start : start + batch])
        with torch.no_grad():
            ref += torch_det(photos[start : start + batch])
    assert_same_detections(ours, ref)
    counts = [len(d["scores"]) for d in ref]
    assert 0 in counts and CAP in counts and any(0 < c < CAP for c in counts), counts  # none, capped, in between


@pytest.mark.slow
def test_dynamic_graph_runs_other_sizes(run: dict) -> None:
    """Inputs of other padded sizes than the traced 128 x 128, through the graph and through PostProcess."""
    onnx_det = OnnxDetector(run["dynamic"])
    ckpt = Checkpoint.load(run["ckpt"])
    cfg = ckpt.build_config()
    model = build_model(cfg).eval()
    model.load_state_dict(ckpt.model)
    photos = [_photo(p) for p in PHOTOS[:3]]
    for min_size, max_size in ((200, 300), (128, 500)):
        batch, sizes = prepare_images(photos, min_size, max_size, 128)
        assert tuple(batch.shape[-2:]) != (128, 128)
        orig = [tuple(p.shape[-2:]) for p in photos]
        ours = [d.as_dict() for d in onnx_det.detect_prepared(batch, sizes, orig)]
        with torch.no_grad():
            ref = [d.as_dict() for d in build_postprocess(cfg)(model(batch), sizes, orig)]
        assert_same_detections(ours, ref)
        assert sum(len(d["scores"]) for d in ref) > 0


@pytest.mark.slow
def test_black_and_nan_images_behave_as_pytorch(run: dict) -> None:
    torch_det, onnx_det = _torch_detector(run["ckpt"]), OnnxDetector(run["dynamic"])
    photo = _photo(PHOTOS[0]).float() / 255
    with_nan = photo.clone()
    with_nan[:, :50, :80] = float("nan")
    images = [torch.zeros(3, 90, 140), with_nan, torch.full((3, 64, 64), float("nan"))]
    ours = onnx_det(images)
    with torch.no_grad():
        ref = torch_det(images)
    assert_same_detections(ours, ref)
    holed = photo.clone()
    holed[:, :50, :80] = 0.0
    assert_same_detections(onnx_det([holed]), ours[1:2])  # NaN pixels read as 0, on both paths


@pytest.mark.slow
def test_static_graph_batches_and_refuses_other_shapes(run: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    torch_det, onnx_det = _torch_detector(run["static_ckpt"]), OnnxDetector(run["static"])
    assert onnx_det.input_shape == [3, 3, 96, 96]
    squares = [_photo(p)[:, :200, :200] for p in PHOTOS[:4]]
    ours = onnx_det(squares)  # 4 images: a full chunk of 3, then 1 filled with blank images
    with torch.no_grad():
        ref = torch_det(squares)
    assert_same_detections(ours, ref)
    with pytest.raises(RunFileError, match=r"takes input batches of shape \(3, 3, 96, 96\), got \(1, 3, 96, 64\)"):
        onnx_det([_photo(PHOTOS[0])])  # 640 x 427 -> 96 x 64

    monkeypatch.setattr("sys.argv", ["predict.py"])
    code = run_cli(lambda: predict.main(["--model", str(run["static"]), "--input", str(PHOTOS[0]),
                                         "--output-dir", str(tmp_path / "p")]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [
        f"error: {run['static']}: takes input batches of shape (3, 3, 96, 96), got (1, 3, 96, 64); export with "
        "--dynamic for other sizes (scripts/export.py --checkpoint CKPT --dynamic)"]


@pytest.mark.slow
def test_evaluate_model_equals_checkpoint(run: dict, tmp_path: Path) -> None:
    common = ["--config", DEMO, "--set", *run["sets"]]
    assert evaluate.main(common + ["--checkpoint", str(run["ckpt"]), "--output-dir", str(tmp_path / "ckpt")]) == 0
    other_sizes = ["input.min_size=[48]", "input.max_size=48"]  # --model prepares images as its metadata says
    assert evaluate.main(common + [*other_sizes, "--model", str(run["dynamic"]), "--output-dir", str(tmp_path / "onnx")]) == 0
    by_ckpt = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    by_model = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    assert by_model["runtime"].startswith("onnxruntime ") and "runtime" not in by_ckpt
    for name in STAT_NAMES:
        a, b = by_ckpt[name], by_model[name]
        assert (a is None and b is None) or abs(a - b) <= 1e-4, (name, a, b)
    ckpt_dets = json.loads((tmp_path / "ckpt" / "detections.json").read_text())
    model_dets = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    assert len(ckpt_dets) == len(model_dets) > 0
    assert sorted((d["image_id"], d["category_id"]) for d in ckpt_dets) == sorted(
        (d["image_id"], d["category_id"]) for d in model_dets)


@pytest.mark.slow
def test_predict_model_uses_the_exported_operating_point(run: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in PHOTOS[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    assert predict.main(["--model", str(run["dynamic"]), "--input", str(folder), "--output-dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    names = [c["name"] for c in Checkpoint.load(run["ckpt"]).categories]
    listed = f"{names[0]} 0.1, {names[1]} 0.11, {names[2]} 0.12"
    assert f"score thresholds from {run['dynamic']} (metadata) (precision >= 0.9, per class): {listed}" in out
    assert predict.main(["--checkpoint", str(run["ckpt"]), "--input", str(folder), "--output-dir", str(tmp_path / "c")]) == 0
    by_model = json.loads((tmp_path / "m" / "detections.json").read_text())
    by_ckpt = json.loads((tmp_path / "c" / "detections.json").read_text())
    assert len(by_model) == len(by_ckpt) > 0
    key = lambda r: (r["file_name"], r["category_id"], r["score"])  # noqa: E731
    for a, b in zip(sorted(by_model, key=key), sorted(by_ckpt, key=key)):
        assert a["file_name"] == b["file_name"] and a["category_id"] == b["category_id"]
        assert abs(a["score"] - b["score"]) <= 1e-4 and np.allclose(a["bbox"], b["bbox"], atol=2e-2)


@pytest.mark.slow
def test_predict_model_equals_checkpoint_on_a_large_photo(run: dict, tmp_path: Path) -> None:
    """A 2048x1371 JPEG, read at reduced size by predict.py for both: the same detections from the file and the checkpoint."""
    folder, _ = make_large_photos(tmp_path / "large", count=7)
    records = {}
    for flag, path in (("--model", run["dynamic"]), ("--checkpoint", run["ckpt"])):
        out = tmp_path / flag.strip("-")
        assert predict.main([flag, str(path), "--input", str(folder), "--output-dir", str(out), "--score-thresh", "0"]) == 0
        records[flag] = sorted(json.loads((out / "detections.json").read_text()), key=lambda r: (r["file_name"], -r["score"]))
    assert len(records["--model"]) == len(records["--checkpoint"]) > 0
    for a, b in zip(records["--model"], records["--checkpoint"]):
        assert a["file_name"] == b["file_name"] and a["category_id"] == b["category_id"]
        assert abs(a["score"] - b["score"]) <= 1e-4 and np.allclose(a["bbox"], b["bbox"], atol=2e-2)
    assert max(max(r["bbox"][0] + r["bbox"][2] for r in records["--checkpoint"]), 0) > 1000  # boxes in file pixels


def _onnx_without_metadata(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["boxes"])], "plain",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


def test_onnx_without_metadata_is_one_line_error(tmp_path: Path) -> None:
    plain = _onnx_without_metadata(tmp_path / "plain.onnx")
    with pytest.raises(RunFileError, match=f"^{plain}: no RetinaNet metadata .*scripts/export.py --checkpoint CKPT$"):
        OnnxDetector(plain)
    with pytest.raises(RunFileError, match="ONNX model not found"):
        OnnxDetector(tmp_path / "none.onnx")


@pytest.mark.slow
def test_cli_errors_are_one_line(run: dict, synthetic: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["export.py"])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    plain = _onnx_without_metadata(tmp_path / "plain.onnx")
    no_meta = f"error: {plain}: no RetinaNet metadata (key retinanet.format is None, expected '{METADATA_FORMAT}'); "
    cases = [
        (export.main, ["--checkpoint", str(tmp_path / "none.pt")], 1,
         f"error: {tmp_path / 'none.pt'}: checkpoint not found; check the path"),
        (export.main, ["--checkpoint", str(junk)], 1, f"error: {junk}: not a readable checkpoint"),
        (export.main, ["--checkpoint", str(run["ckpt"]), "--opset", "11"], 2,
         "error: --opset 11: unsupported; the exporter writes opsets 18..23 (default 18)"),
        (predict.main, ["--model", str(plain), "--input", str(PHOTOS[0]), "--output-dir", str(tmp_path / "p")], 1,
         no_meta + "export the model with scripts/export.py --checkpoint CKPT"),
        (evaluate.main, ["--config", DEMO, "--model", str(plain), "--set", *synthetic_overrides(synthetic)], 1,
         no_meta + "export the model with scripts/export.py --checkpoint CKPT"),
    ]
    for main, argv, code, message in cases:
        assert run_cli(lambda: main(argv)) == code, argv
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(message), (argv, err)
        assert not any("Traceback" in line for line in err), argv
    assert not (tmp_path / "junk.onnx").exists()


def _detect_in_batches(detector, photos: list[torch.Tensor], batch: int) -> list[dict]:
    out = []
    for start in range(0, len(photos), batch):
        with torch.no_grad():
            out += detector(photos[start : start + batch])
    return out


def test_fold_constants_puts_frozen_bn_into_the_weights() -> None:
    """norm=frozen_bn (a multiply on the weights at each forward; norm=bn: `test_folded_export_equals_unfolded`),
    with BN statistics far from identity: the folded copy has no BN left and the same outputs."""
    cfg = load_config(DEMO, ["model.backbone.weights=none", "model.backbone.norm=frozen_bn", "model.num_classes=3"])
    model = build_model(cfg)
    for m in model.modules():
        if hasattr(m, "running_var"):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_()
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    model.eval()
    folded = fold_constants(model)
    assert not any("BatchNorm" in type(m).__name__ for m in folded.modules())
    assert any("BatchNorm" in type(m).__name__ for m in model.modules())  # the input is untouched
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model(x), folded(x)
    torch.testing.assert_close(b.cls_logits, a.cls_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.box_deltas, a.box_deltas, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="eval-mode"):
        fold_constants(model.train())


@pytest.mark.slow
def test_folded_export_equals_unfolded(run: dict, caplog) -> None:
    caplog.set_level(logging.INFO)
    ckpt = Checkpoint.load(run["ckpt"])
    cfg = replace(ckpt.build_config(), **{"model.num_classes": len(ckpt.categories)})
    model = build_model(cfg).eval()
    model.load_state_dict(ckpt.model)
    props = {p.key: p.value for p in onnx.load(str(run["dynamic"])).metadata_props}
    unfolded = export_onnx(model, build_postprocess(cfg), ModelMetadata.from_props(props, run["dynamic"]),
                           run["root"] / "unfolded.onnx", dynamic=True, fold=False)
    # The exporter's known-harmless warning and its passes' INFO lines are not shown to the user.
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("onnx_ir", "onnxscript"))] == []
    ops = {name: [n.op_type for n in onnx.load(str(name)).graph.node] for name in (run["dynamic"], unfolded)}
    assert "BatchNormalization" not in ops[run["dynamic"]] and ops[unfolded].count("BatchNormalization") == 20
    photos = [_photo(p) for p in PHOTOS]
    folded_dets = _detect_in_batches(OnnxDetector(run["dynamic"]), photos, 3)
    assert_same_detections(folded_dets, _detect_in_batches(OnnxDetector(unfolded), photos, 3))
    assert sum(len(d["scores"]) for d in folded_dets) > 0


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
def test_openvino_f32_equals_pytorch_on_photos(run: dict, batch: int) -> None:
    """The dynamic .onnx file at batch 1; at batch 3 the same graph as an IR with the metadata in its rt_info."""
    path = run["dynamic"]
    if batch == 3:
        path = save_ir(read_onnx(path), OnnxDetector(path).metadata, run["root"] / "dynamic.xml")
    photos = [_photo(p) for p in PHOTOS]
    ref = _detect_in_batches(_torch_detector(run["ckpt"]), photos, batch)
    detector = OpenVinoDetector(path, precision="f32")
    assert detector.precision == "f32" and detector.describe().startswith("OpenVINO ")
    assert detector.category_ids == Checkpoint.load(run["ckpt"]).category_ids
    assert_same_detections(_detect_in_batches(detector, photos, batch), ref)
    counts = [len(d["scores"]) for d in ref]
    assert 0 in counts and any(c > 0 for c in counts), counts


@pytest.mark.slow
def test_openvino_f32_static_graph_equals_pytorch(run: dict) -> None:
    detector = OpenVinoDetector(run["static"], precision="f32")
    assert detector.input_shape == [3, 3, 96, 96]
    squares = [_photo(p)[:, :200, :200] for p in PHOTOS[:4]]  # a chunk of 3, then 1 filled with blank images
    assert_same_detections(detector(squares), _detect_in_batches(_torch_detector(run["static_ckpt"]), squares, 4))
    with pytest.raises(RunFileError, match=r"takes input batches of shape \(3, 3, 96, 96\)"):
        detector([_photo(PHOTOS[0])])


def test_precision_resolution(monkeypatch) -> None:
    monkeypatch.setattr("retinanet.deploy.openvino_detector.cpu_has_amx", lambda: True)
    assert resolve_precision("auto", ["FP32", "BF16"]) == ("bf16", "auto: the CPU has AMX (amx_bf16)")
    monkeypatch.setattr("retinanet.deploy.openvino_detector.cpu_has_amx", lambda: False)
    assert resolve_precision("auto", ["FP32", "BF16"]) == ("f32", "auto: no AMX on this CPU")
    assert resolve_precision("f32", ["FP32"]) == ("f32", "requested")
    with pytest.raises(ConfigError, match="^--precision bf16: this CPU has no bf16 units"):
        resolve_precision("bf16", ["FP32", "INT8"])


def test_bad_input_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    plain_onnx = _onnx_without_metadata(tmp_path / "plain.onnx")
    plain_ir = tmp_path / "plain.xml"
    ov.save_model(ov.convert_model(str(plain_onnx)), str(plain_ir))
    for path in (plain_onnx, plain_ir):
        with pytest.raises(RunFileError, match=f"^{path}: no RetinaNet metadata .*scripts/export.py --checkpoint CKPT$"):
            OpenVinoDetector(path, precision="f32")
    monkeypatch.setattr("sys.argv", ["export.py"])
    ckpt = tmp_path / "none.pt"
    cases = [
        (export.main, ["--checkpoint", str(ckpt), "--int8"],
         "error: --int8: post-training quantization needs calibration images; add --calibration-config CONFIG"),
        (export.main, ["--checkpoint", str(ckpt), "--int8", "--format", "onnx", "--calibration-config", DEMO],
         "error: --int8 writes an OpenVINO IR: use --format openvino"),
        (predict.main, ["--model", str(plain_ir), "--runtime", "onnxruntime", "--input", str(PHOTOS[0])],
         f"error: --runtime onnxruntime: {plain_ir} is an OpenVINO IR; use --runtime openvino"),
    ]
    for main, argv, message in cases:
        assert run_cli(lambda: main(argv)) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), (argv, err)
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # as if it were not installed
    assert run_cli(lambda: predict.main(["--model", str(plain_onnx), "--runtime", "openvino", "--input",
                                         str(PHOTOS[0])])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: openvino is not installed; export, onnxruntime and OpenVINO inference need "
                   "`pip install -e .[export]` (requirements.txt pins the tested versions)"]


@pytest.mark.slow
def test_int8_export_records_its_calibration(run: dict, synthetic: Path, tmp_path: Path) -> None:
    calibration = tmp_path / "calibration.yaml"
    calibration.write_text(f"_base_: {DEMO}\ndata:\n  train:\n    images: {synthetic / 'train'}\n"
                           f"    annotations: {synthetic / 'annotations' / 'instances_train.json'}\n")
    out = tmp_path / "model_int8.xml"
    argv = ["--checkpoint", str(run["static_ckpt"]), "--output", str(out), "--batch-size", "3", "--int8",
            "--calibration-config", str(calibration), "--calibration-images", "4"]
    assert run_cli(lambda: export.main(argv)) == 0
    detector = OpenVinoDetector(out, precision="f32")
    meta = detector.metadata
    assert meta.precision == "int8" and detector.precision == "int8"
    assert {k: meta.calibration[k] for k in ("config", "split", "images")} == {
        "config": str(calibration), "split": "train", "images": 4}
    assert meta.calibration["tool"].startswith("nncf ")
    assert detector.describe().startswith("OpenVINO ") and " CPU int8 (other layers f32" in detector.describe()
    assert sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(out)).get_ops()) > 0
    squares = [_photo(p)[:, :200, :200] for p in PHOTOS[:3]]
    assert len(detector(squares)) == 3
    assert json.loads(json.dumps(meta.calibration)) == meta.calibration


def test_export_drops_only_the_known_harmless_library_lines(caplog) -> None:
    caplog.set_level(logging.INFO)
    lines = [
        ("onnx_ir._convenience", logging.WARNING, "Attribute type is ambiguous because it is an empty sequence. "
         "Please create an Attr with an explicit type. Defaulted to INTS"),
        ("torch.utils.cpp_extension", logging.WARNING, "No CUDA runtime is found, using CUDA_HOME='/usr/local'"),
        ("onnx_ir.passes.common.unused_removal", logging.INFO, "Removed 69 unused nodes"),
        ("onnxscript.optimizer", logging.INFO, "No unused functions to remove"),
        ("onnx_ir._convenience", logging.WARNING, "a real problem"),
        ("onnxscript.optimizer", logging.ERROR, "a failed pass"),
        ("torch.utils.cpp_extension", logging.WARNING, "another warning"),
    ]
    with quiet_library_logs():
        for name, level, message in lines:
            logging.getLogger(name).log(level, message)
    assert [r.getMessage() for r in caplog.records] == ["a real problem", "a failed pass", "another warning"]
    caplog.clear()
    for name, level, message in lines:  # outside the export, every line shows again
        logging.getLogger(name).log(level, message)
    assert len(caplog.records) == len(lines)
