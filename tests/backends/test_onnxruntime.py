"""ONNX Runtime back end: INT8 ignored scopes are regular expressions resolved to node names; INT8 weights
follow the deployment ISA."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from hubert_export.artifact import Artifact
from hubert_export.backends.onnxruntime import resolve_ignored_nodes
from hubert_export.build import export_artifact
from hubert_export.errors import EXIT_BAD_INPUT, HubertExportError
from hubert_export.export import export_onnx
from hubert_export.isa import Isa, host_isa
from hubert_export.model import HubertForCTC
from hubert_export.recipes import default_recipe
from hubert_export.tasks import HUBERT

FEED_FORWARD_0 = r"layers\.0/feed_forward/"


@pytest.fixture(scope="module")
def ctc_graph(ctc_checkpoint, tmp_path_factory) -> onnx.ModelProto:
    return export_onnx(HubertForCTC.from_pretrained(ctc_checkpoint), HUBERT.task("ctc"),
                       tmp_path_factory.mktemp("ort") / "ctc.onnx")


def test_patterns_are_searched_in_node_names(ctc_graph):
    excluded = resolve_ignored_nodes(ctc_graph, [FEED_FORWARD_0, r"output_dense/MatMul$"])
    names = {n.name for n in ctc_graph.graph.node}
    assert set(excluded) <= names and len(excluded) == len(set(excluded))  # the union, each name once
    assert "/model/hubert/encoder/layers.0/feed_forward/intermediate_dense/MatMul" in excluded
    assert "/model/hubert/encoder/layers.1/feed_forward/output_dense/MatMul" in excluded
    assert "/model/hubert/encoder/layers.1/feed_forward/intermediate_dense/MatMul" not in excluded
    assert resolve_ignored_nodes(ctc_graph, []) == []


def test_a_pattern_matching_nothing_is_refused_by_name(ctc_graph):
    with pytest.raises(HubertExportError, match=r"pattern 'decoder/' matches no node.*'/model/hubert/encoder/"):
        resolve_ignored_nodes(ctc_graph, [FEED_FORWARD_0, "decoder/"])


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_ignored_scopes_stay_float_and_are_recorded(ctc_checkpoint, calibration_dir, tmp_path, method):
    recipe = default_recipe("onnx", "int8").with_overrides(**{
        "calibration.method": method, "calibration.data": calibration_dir,
        "calibration.ignored_scopes": (FEED_FORWARD_0,)})
    result = export_artifact(ctc_checkpoint, tmp_path / method, recipe, latency_repeats=0)
    assert result.passed, result.report.failures
    excluded = Artifact.open(tmp_path / method).manifest.backend["excluded_nodes"]
    kept = [n for n in excluded if n.endswith("/MatMul")]
    assert len(kept) == 2 and all("layers.0/feed_forward/" in n for n in kept)
    model = onnx.load(str(tmp_path / method / "model.onnx"))
    by_name = {n.name: n for n in model.graph.node}
    for name in kept:  # a float MatMul still, reading float weights (no DequantizeLinear before it)
        assert by_name[name].op_type == "MatMul"
        producers = {o: n for n in model.graph.node for o in n.output}
        assert all(producers[i].op_type != "DequantizeLinear" for i in by_name[name].input if i in producers)
    ops = {n.op_type for n in model.graph.node}
    assert ("MatMulInteger" in ops) if method == "dynamic" else ("DequantizeLinear" in ops)  # the rest is INT8


def test_int8_build_with_a_dead_pattern_fails_and_leaves_nothing(ctc_checkpoint, tmp_path):
    recipe = default_recipe("onnx", "int8").with_overrides(**{
        "calibration.method": "dynamic", "calibration.ignored_scopes": ("no_such_layer",)})
    with pytest.raises(HubertExportError, match="'no_such_layer' matches no node") as info:
        export_artifact(ctc_checkpoint, tmp_path / "out", recipe)
    assert info.value.exit_code == EXIT_BAD_INPUT and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_weights_are_7_bit_for_a_cpu_without_vnni(ctc_checkpoint, calibration_dir, tmp_path, method):
    """Without VNNI, pairs of u8 x s8 products saturate a 16-bit sum unless weights stay within 7 bits
    (hubert_export/isa.py): the deployment ISA decides, and the manifest says which and how many layers."""
    largest_weight = {}
    for isa in ("x86-avx2", "x86-avx512-vnni"):
        recipe = default_recipe("onnx", "int8").with_overrides(**{
            "calibration.method": method, "calibration.data": calibration_dir, "deployment_isa": isa})
        result = export_artifact(ctc_checkpoint, tmp_path / isa, recipe, latency_repeats=0)
        model = onnx.load(str(tmp_path / isa / "model.onnx"))
        weights = [onnx.numpy_helper.to_array(t).astype(np.int32) for t in model.graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]  # not per-channel zero points
        largest_weight[isa] = max(int(np.abs(w).max()) for w in weights)
        manifest = Artifact.open(tmp_path / isa).manifest
        assert manifest.isa.deployment == isa
        assert ("7-bit" in manifest.backend["format"]) == (isa == "x86-avx2")
        integer_ops = sum(n.op_type == "MatMulInteger" for n in model.graph.node)
        assert manifest.backend["int8_layers"] == (integer_ops if method == "dynamic" else len(weights)) > 0
        # The check says when this CPU's INT8 arithmetic is not the one the artifact was built for.
        assert bool(result.report.isa["note"]) == (isa != host_isa().name and Isa(isa).vnni != host_isa().vnni)
    assert largest_weight["x86-avx2"] <= 64 < largest_weight["x86-avx512-vnni"]
