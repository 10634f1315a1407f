"""The build and the gate as library calls: manifest, parity reports, check, INT8, failing gates."""

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hubert_export import HubertExportError, passes
from hubert_export.artifact import Artifact, write_manifest
from hubert_export.build import check_artifact, export_artifact
from hubert_export.errors import EXIT_BAD_INPUT
from hubert_export.parity import BUILTIN_LENGTHS
from hubert_export.recipes import default_recipe



def test_manifest_records_what_built_the_artifact(onnx_artifact, ctc_checkpoint):
    manifest = json.loads((onnx_artifact / "manifest.json").read_text())
    assert manifest["target"] == "onnx" and manifest["precision"] == "fp32" and manifest["task"] == "ctc"
    assert {"hubert_export", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["source"]["checkpoint"] == str(ctc_checkpoint.resolve())
    assert len(manifest["source"]["checkpoint_sha256"]) == 64
    assert [i["name"] for i in manifest["io"]["inputs"]] == ["input_values"]
    assert manifest["io"]["inputs"][0]["shape"] == ["batch", "samples"]
    assert manifest["io"]["outputs"][0] == {"name": "logits", "dtype": "float32", "shape": ["batch", "frames", 12]}
    assert manifest["io"]["dynamic_axes"]["logits"] == {"0": "batch", "1": "frames"}
    assert manifest["input_contract"]["min"] == {"batch": 1, "samples": 400}
    assert manifest["input_contract"]["max"]["samples"] >= 60 * 16_000
    assert manifest["input_contract"]["attention_mask"] is False
    assert {"model.onnx", "config.json"} <= set(manifest["files"])
    Artifact.open(onnx_artifact).verify_files()  # every hash recorded is the file's hash
    parity = manifest["parity"]
    assert parity["passed"] and parity["worst"]["max_abs_error"] < 1e-4
    assert parity["cases"] == len(BUILTIN_LENGTHS) + 1  # the lengths at batch 1, plus the padded batch of 3
    assert parity["latency_seconds"] > 0


def test_artifact_is_plain_onnx_with_the_expected_graph(onnx_artifact):
    model = onnx.load(str(onnx_artifact / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "samples"]
    # FP32 ships the exporter's portable graph: standard ops only, ONNX Runtime fuses at load
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert "LayerNormalization" in {n.op_type for n in model.graph.node}
    assert not passes.fusion_counts(model)
    assert json.loads((onnx_artifact / "manifest.json").read_text())["backend"]["graph_passes"] == []


def test_offline_fusions_bake_onnx_runtime_fusions_into_the_artifact(ctc_checkpoint, tmp_path):
    recipe = default_recipe("onnx").with_overrides(**{"onnxruntime.offline_fusions": True})
    result = export_artifact(ctc_checkpoint, tmp_path / "fused", recipe)
    assert result.passed, result.report.failures
    model = onnx.load(str(tmp_path / "fused" / "model.onnx"))
    assert {"SkipLayerNormalization", "BiasGelu"} & {n.op_type for n in model.graph.node}
    assert passes.fusion_counts(model)["fuse_qkv_projections"] >= 1
    assert json.loads((tmp_path / "fused" / "manifest.json").read_text())["backend"]["graph_passes"] == \
        passes.ONNXRUNTIME_OFFLINE_PASSES


def test_parity_reports_written(onnx_artifact):
    report = json.loads((onnx_artifact / "parity.json").read_text())
    names = [c["name"] for c in report["cases"]]
    assert names[0] == "b1-400" and any(n.startswith("b3-padded") for n in names)
    table = (onnx_artifact / "parity.md").read_text()
    assert "max_abs_error" in table and "PASS" in table


def test_check_passes_and_writes_junit(onnx_artifact, tmp_path):
    junit = tmp_path / "parity.xml"
    report = check_artifact(onnx_artifact, junit=junit)
    assert report.passed and not report.failures
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "0"
    assert len(suite.findall("testcase")) == len(report.cases)


def _perturbed_copy(artifact, destination):
    """A copy whose model weights were changed and whose manifest was re-hashed to match: an
    artifact that is internally consistent but no longer computes what its checkpoint computes."""
    shutil.copytree(artifact, destination)
    model = onnx.load(str(destination / "model.onnx"))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(biggest)
    biggest.CopyFrom(numpy_helper.from_array((weights * 1.05).astype(weights.dtype), biggest.name))
    onnx.save(model, str(destination / "model.onnx"))
    manifest = json.loads((destination / "manifest.json").read_text())
    manifest.pop("files")
    write_manifest(destination, manifest)
    return destination


def test_check_fails_when_the_artifact_drifts(onnx_artifact, tmp_path):
    drifted = _perturbed_copy(onnx_artifact, tmp_path / "drifted")
    report = check_artifact(drifted, report_dir=tmp_path / "reports")
    assert not report.passed
    assert any("max_abs_error" in f for f in report.failures)
    assert json.loads((tmp_path / "reports" / "parity.json").read_text())["passed"] is False


def test_check_refuses_modified_files(onnx_artifact, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(onnx_artifact, tampered)
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(HubertExportError, match="does not match the hash") as info:
        check_artifact(tampered)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_check_refuses_another_checkpoint(onnx_artifact, base_checkpoint, tmp_path):
    with pytest.raises(HubertExportError, match="not the one this artifact was built from"):
        check_artifact(onnx_artifact, reference=base_checkpoint)


def test_tight_threshold_fails_the_build_gate(ctc_checkpoint, tmp_path):
    recipe = default_recipe("onnx").with_overrides(**{"thresholds.max_abs_error": 1e-12})
    result = export_artifact(ctc_checkpoint, tmp_path / "strict", recipe)
    assert not result.passed
    assert any("max_abs_error" in f for f in result.report.failures)
    assert (tmp_path / "strict" / "manifest.json").is_file()  # complete artifact kept for inspection


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_artifacts_pass_their_thresholds(ctc_checkpoint, calibration_dir, tmp_path, method):
    recipe = default_recipe("onnx", "int8").with_overrides(
        **{"calibration.method": method, "calibration.data": calibration_dir})
    result = export_artifact(ctc_checkpoint, tmp_path / method, recipe)
    assert result.passed, result.report.failures
    model = onnx.load(str(tmp_path / method / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    # Really quantised: integer matmuls (dynamic) or quantize/dequantize pairs (static QDQ)
    assert ({"MatMulInteger", "DynamicQuantizeLinear"} <= ops) if method == "dynamic" else ({"QuantizeLinear", "DequantizeLinear"} <= ops)
    # Close (the gate's verdict above), but not the FP32 graph; how close depends on the CPU's INT8
    # arithmetic (hubert_export/isa.py), so the gate, not a figure measured on one CPU, is the bar.
    assert result.report.worst()["max_abs_error"] > 1e-6
    manifest = Artifact.open(tmp_path / method).manifest
    assert manifest.backend["quantization"] == method and manifest.backend["int8_layers"] > 0


def test_feature_extraction_with_hidden_states(large_checkpoint, tmp_path):
    recipe = default_recipe("onnx").with_overrides(**{"export.output_hidden_states": True})
    result = export_artifact(large_checkpoint, tmp_path / "features", recipe)
    assert result.passed, result.report.failures
    outputs = Artifact.open(tmp_path / "features").manifest.output_names
    assert outputs == ["last_hidden_state", "hidden_states"]


def test_missing_model_directory_is_bad_input(tmp_path):
    with pytest.raises(HubertExportError, match="does not exist") as info:
        export_artifact(tmp_path / "nowhere", tmp_path / "out", default_recipe("onnx"))
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert not (tmp_path / "out").exists()


def test_wav2vec2_large_layout_exports_to_onnx_runtime_and_passes_the_gate(tmp_path):
    """wav2vec2-large-lv60's layout (LayerNorm conv stack with bias, pre-LN) with its attention mask."""
    transformers = pytest.importorskip("transformers")
    from .conftest import TINY_LARGE, save_reference_checkpoint

    checkpoint = save_reference_checkpoint(tmp_path / "ck", "Wav2Vec2ForCTC", **TINY_LARGE)
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(checkpoint)
    result = export_artifact(checkpoint, tmp_path / "onnx", default_recipe("onnx"), latency_repeats=0)
    assert result.passed, result.report.failures
    assert result.report.worst()["max_abs_error"] < 1e-4
    manifest = Artifact.open(tmp_path / "onnx").manifest
    assert manifest.source.architecture == "Wav2Vec2ForCTC" and manifest.task == "ctc"
    assert [i.name for i in manifest.io.inputs] == manifest.input_names == ["input_values", "attention_mask"]
    assert check_artifact(tmp_path / "onnx", latency_repeats=0).passed
