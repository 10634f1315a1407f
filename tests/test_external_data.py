"""Models above 2 GB: ONNX with external data, through every step, on a tiny model.

`export.external_data: always` writes the tiny model the way hubert-xlarge (3.8 GB) must be
written: its weights in one `<model>.onnx.data` file beside the graph. These tests take it through
the export, the graph passes, ONNX Runtime FP32/INT8 and OpenVINO FP32/INT8, the manifest's hashes,
`check`, `check --golden` and Ray's object store; the real model is the slow test at the end
(docs/large-models.md has its measured time and memory).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hubert_export import build as build_module
from hubert_export import export as export_module
from hubert_export.artifact import Artifact
from hubert_export.backends import get_backend
from hubert_export.build import check_artifact, export_artifact
from hubert_export.errors import HubertExportError
from hubert_export.export import (EXTERNAL_DATA_SUFFIX, export_onnx, load_onnx, save_onnx, uses_external_data)
from hubert_export.golden import check_golden
from hubert_export.model import HubertForCTC
from hubert_export.passes import PORTABLE_PASSES, fusion_counts, run_passes
from hubert_export.recipes import default_recipe
from hubert_export.tasks import HUBERT
from tests.conftest import TINY_LARGE, save_reference_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def large_ctc_checkpoint(tmp_path_factory) -> Path:
    """hubert-large's layout (layer-norm feature encoder, stable layer norm) at toy size, with the
    attention mask input that large and xlarge checkpoints take."""
    import transformers

    path = save_reference_checkpoint(tmp_path_factory.mktemp("tiny-large-ctc"), "HubertForCTC", **TINY_LARGE)
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(path)
    return path


def _eager_logits(checkpoint: Path, values: np.ndarray) -> np.ndarray:
    model = HubertForCTC.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return model(torch.from_numpy(values)).logits.numpy()


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_the_export_writes_one_data_file_and_computes_what_eager_does(large_ctc_checkpoint, tmp_path, exporter):
    model = HubertForCTC.from_pretrained(large_ctc_checkpoint).eval()
    path = tmp_path / "model.onnx"
    returned = export_onnx(model, HUBERT.task("ctc"), path, external_data="always", exporter=exporter)
    # One weights file beside the graph, no loose tensor files, and the graph file holds no weights.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx" + EXTERNAL_DATA_SUFFIX]
    stored = onnx.load(str(path), load_external_data=False)
    external = _external_tensors(stored)
    assert len(external) > 10
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    weights = sum(p.numel() * 4 for p in model.parameters())
    # Every weight is in the data file (the graph keeps only tensors under 256 bytes).
    assert 0.95 * weights < (tmp_path / "model.onnx.data").stat().st_size < 1.05 * weights
    assert sum(len(t.raw_data) for t in stored.graph.initializer) < 0.05 * weights
    # The model handed back references its weights (absolute locations), it does not hold them.
    assert _external_tensors(returned) and all(Path(e.value).is_absolute() for t in _external_tensors(returned)
                                               for e in t.external_data if e.key == "location")
    values = np.random.default_rng(0).standard_normal((2, 6_000)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input_values": values})[0]
    np.testing.assert_allclose(logits, _eager_logits(large_ctc_checkpoint, values), atol=1e-4, rtol=0)


def test_the_policy_and_the_threshold(large_ctc_checkpoint, monkeypatch):
    model = HubertForCTC.from_pretrained(large_ctc_checkpoint)
    assert not uses_external_data(model, "auto") and uses_external_data(model, "always")
    assert not uses_external_data(model, "never")
    size = sum(p.numel() * 4 for p in model.parameters())
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", size - 1)  # what 1.8 GB is to xlarge
    assert uses_external_data(model, "auto")
    monkeypatch.setattr(export_module, "_PROTOBUF_LIMIT", size - 1)  # a model over 2 GB
    with pytest.raises(HubertExportError, match="beyond the 2 GB an ONNX file can hold.*external_data to auto"):
        uses_external_data(model, "never")
    with pytest.raises(HubertExportError, match="'sometimes' is not one of auto, always, never"):
        uses_external_data(model, "sometimes")


def test_graph_passes_read_external_weights_and_the_result_saves_beside_its_data(large_ctc_checkpoint, tmp_path):
    model = HubertForCTC.from_pretrained(large_ctc_checkpoint).eval()
    source = tmp_path / "exported" / "model.onnx"
    export_onnx(model, HUBERT.task("ctc"), source, external_data="always")
    passed = run_passes(load_onnx(source), PORTABLE_PASSES)
    assert fusion_counts(passed)["fuse_qkv_projections"] == TINY_LARGE["num_hidden_layers"]
    target = tmp_path / "passed" / "model.onnx"
    target.parent.mkdir()
    save_onnx(passed, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    # Written with relative locations: the pair moves as a directory.
    moved = tmp_path / "moved"
    shutil.move(target.parent, moved)
    assert {e.value for t in _external_tensors(onnx.load(str(moved / "model.onnx"), load_external_data=False))
            for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    values = np.random.default_rng(1).standard_normal((1, 9_001)).astype(np.float32)
    logits = ort.InferenceSession(str(moved / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input_values": values})[0]
    np.testing.assert_allclose(logits, _eager_logits(large_ctc_checkpoint, values), atol=1e-4, rtol=0)


BUILDS = [
    ("onnx", "fp32", {}),
    ("onnx", "int8", {}),
    ("onnx", "int8", {"calibration.method": "dynamic"}),
    ("openvino", "fp32", {}),
    ("openvino", "int8", {}),
]


@pytest.mark.parametrize("target,precision,extra", BUILDS,
                         ids=["onnx-fp32", "onnx-int8-static", "onnx-int8-dynamic", "openvino-fp32", "openvino-int8"])
def test_an_artifact_built_through_external_data_passes_build_check_and_golden(
        large_ctc_checkpoint, calibration_dir, tmp_path, monkeypatch, target, precision, extra):
    gathered = []
    real_gather = export_module.gather_external_data
    monkeypatch.setattr(export_module, "gather_external_data", lambda p: (gathered.append(p), real_gather(p)))
    # The eager model is let go of while the back end builds (its quantiser or converter holds the
    # weights meanwhile) and read again for the parity check.
    loaded, alive_during_build = [], []
    real_load, backend_class = build_module.load_model, type(get_backend(target))
    real_build = backend_class.build

    def load(*args, **kwargs):
        result = real_load(*args, **kwargs)
        loaded.append(weakref.ref(result[2]))
        return result

    def build(self, inputs):
        gc.collect()
        alive_during_build.append(inputs.model is not None or loaded[0]() is not None)
        return real_build(self, inputs)

    monkeypatch.setattr(build_module, "load_model", load)
    monkeypatch.setattr(backend_class, "build", build)
    recipe = default_recipe(target, precision).with_overrides(
        **{"export.external_data": "always", "calibration.data": calibration_dir, "calibration.subset_size": 4, **extra})
    out = tmp_path / "artifact"
    result = export_artifact(large_ctc_checkpoint, out, recipe)
    assert gathered, "the export did not go through external data"
    assert alive_during_build == [False] and len(loaded) == 2
    assert result.passed, result.report.failures
    artifact = Artifact.open(out)
    manifest = artifact.manifest
    assert manifest.recipe["export"]["external_data"] == "always"
    if target == "onnx":
        # The weights file is a model file of the artifact, listed and hashed like the graph.
        data = out / "model.onnx.data"
        assert manifest.backend["files"] == ["model.onnx", "model.onnx.data"]
        assert manifest.backend["external_data"] == "model.onnx.data"
        assert data in artifact.model_files
        assert manifest.files["model.onnx.data"].bytes == data.stat().st_size > 0
        # Readable by whoever may read the graph (ONNX Runtime's quantiser writes it 0600).
        assert data.stat().st_mode == (out / "model.onnx").stat().st_mode
        if precision == "int8":
            ops = {n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
            assert {"DynamicQuantizeLinear"} <= ops if extra else {"QuantizeLinear", "DequantizeLinear"} <= ops
            assert manifest.backend["int8_layers"] > 0
    else:
        assert "model.onnx.data" not in manifest.files and manifest.backend["files"] == ["openvino_model.xml",
                                                                                       "openvino_model.bin"]
        if precision == "int8":
            assert manifest.backend["int8_layers"] > 0
    # No scratch files left behind: every file of the artifact is in the manifest.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*manifest.files, "manifest.json"])
    assert check_artifact(out, latency_repeats=0).passed
    assert check_golden(out, latency_repeats=0).passed
    if target == "onnx":
        # A changed weight in the data file is caught by the hashes before anything runs.
        with open(out / "model.onnx.data", "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 1]))
        with pytest.raises(HubertExportError, match="model.onnx.data does not match the hash"):
            check_golden(out, latency_repeats=0)


def test_an_external_data_artifact_moves_through_rays_object_store_in_pieces(
        large_ctc_checkpoint, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the Ray tests need the [ray] extra")
    from hubert_export import distributed

    out = tmp_path / "artifact"
    recipe = default_recipe("onnx").with_overrides(**{"export.external_data": "always"})
    assert export_artifact(large_ctc_checkpoint, out, recipe, latency_repeats=0).passed
    data_bytes = (out / "model.onnx.data").stat().st_size
    # Pieces of 64 KiB: the data file goes as several objects, none of them the whole file.
    monkeypatch.setattr(distributed, "STORE_CHUNK_BYTES", 1 << 16)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        files = distributed.share_directory(out, "store")
        index = ray.get(files.ref)
        assert len(index["model.onnx.data"]) == -(-data_bytes // (1 << 16)) > 1
        assert max(len(ray.get(ref)) for ref in index["model.onnx.data"]) == 1 << 16

        @ray.remote(num_cpus=1)
        def unpack(shared):
            from hubert_export.golden import check_golden as golden

            local = shared.local()
            return str(local), golden(local, latency_repeats=0).passed

        local, passed = ray.get(unpack.remote(files))
    finally:
        if started_here:
            ray.shutdown()
    # The copy a worker unpacked is the artifact, byte for byte: its hashes and its golden check pass.
    assert passed
    assert (Path(local) / "model.onnx.data").read_bytes() == (out / "model.onnx.data").read_bytes()
    shutil.rmtree(local, ignore_errors=True)


# ------------------------------------------------------------------------------------------ hubert-xlarge
@pytest.mark.slow
def test_hubert_xlarge_end_to_end(tmp_path):
    """A random-init hubert-xlarge (964 M parameters, 3.85 GB of FP32 weights) built for ONNX Runtime
    and OpenVINO, FP32 and INT8, each checked and golden-checked, and moved through Ray
    (benchmarks/xlarge.py, one process per step). About 35 minutes and 14 GiB at the peak on 2 cores."""
    work = Path(os.environ.get("HUBERT_EXPORT_XLARGE_WORK", tmp_path))
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "xlarge.py"), "--work", str(work),
                           "--results", str(results)], cwd=REPO, timeout=4 * 3600)
    assert proc.returncode == 0
    recorded = json.loads((results / "xlarge.json").read_text())["steps"]
    for step, record in recorded.items():
        assert record["exit_code"] == 0, step
        if record.get("parity") is not None:
            assert record["parity"]["passed"], (step, record["parity"])
    assert recorded["onnx-fp32"]["files"]["model.onnx.data"] > 3.5e9
