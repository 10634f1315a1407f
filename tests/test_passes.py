"""Graph passes, each alone: pure, interface-preserving, parity-preserving, and really firing."""

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper

from hubert_export import HubertExportError, HubertForCTC, HubertModel
from hubert_export import passes
from hubert_export.export import export_onnx
from hubert_export.tasks import get_task

from .conftest import TINY_LARGE, save_reference_checkpoint


@pytest.fixture(scope="module")
def exported(ctc_checkpoint, tmp_path_factory) -> onnx.ModelProto:
    path = tmp_path_factory.mktemp("passes") / "ctc.onnx"
    export_onnx(HubertForCTC.from_pretrained(ctc_checkpoint), get_task("ctc"), path)
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def exported_large(tmp_path_factory) -> onnx.ModelProto:
    """Pre-LN layout with an attention mask input: the other graph shape the passes must handle."""
    directory = tmp_path_factory.mktemp("passes-large")
    checkpoint = save_reference_checkpoint(directory / "ck", "HubertModel", **TINY_LARGE)
    export_onnx(HubertModel.from_pretrained(checkpoint), get_task("feature-extraction"), directory / "m.onnx",
                with_attention_mask=True)
    return onnx.load(str(directory / "m.onnx"))


def _inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5_003)).astype(np.float32)
    mask = np.ones((2, 5_003), dtype=np.int64)
    mask[1, 3_000:] = 0
    names = {i.name for i in model.graph.input}
    return {"input_values": x, "attention_mask": mask} if "attention_mask" in names else {"input_values": x}


@pytest.mark.parametrize("name", list(passes.PASSES))
@pytest.mark.parametrize("graph", ["exported", "exported_large"])
def test_each_pass_alone_is_pure_and_keeps_parity(name, graph, request):
    model = request.getfixturevalue(graph)
    before = model.SerializeToString()
    result = passes.run_passes(model, [name], log=lambda _: None)
    assert model.SerializeToString() == before  # the caller's model is untouched
    assert passes._io_signature(result) == passes._io_signature(model)
    worst = passes.check_parity(model, result, _inputs(model), atol=1e-5) if name != "optimize_for_onnxruntime" \
        else _ort_optimized_parity(model, result)
    assert worst <= 1e-5


def _ort_optimized_parity(model, result):
    # contrib ops run only with ONNX Runtime's optimiser present, so compare at its default level
    import onnxruntime as ort

    inputs = _inputs(model)
    ref = passes._run_ort(model, inputs)
    session = ort.InferenceSession(result.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    return max(float(np.abs(got[k] - ref[k]).max()) for k in ref)


def test_fusions_really_fire(exported):
    layers = 2
    fused = passes.run_passes(exported, ["fuse_qkv_projections", "fuse_gelu"], log=lambda _: None)
    counts = passes.fusion_counts(fused)
    assert counts["fuse_qkv_projections"] == layers
    assert counts["fuse_gelu"] >= layers  # one per FFN, plus the conv encoder's and pos conv's GELUs
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops["Gelu"] == counts["fuse_gelu"] and ops["Erf"] == 0
    assert ops["MatMul"] == Counter(n.op_type for n in exported.graph.node)["MatMul"] - 2 * layers


def test_optimize_for_onnxruntime_fuses_bias_gelu_and_matmul_scaling(exported):
    optimized = passes.run_passes(exported, passes.ONNXRUNTIME_OFFLINE_PASSES, log=lambda _: None)
    ops = Counter(n.op_type for n in optimized.graph.node)
    assert ops["BiasGelu"] == 2 and ops["FusedMatMul"] == 2  # one each per layer: FFN, attention scores
    assert len(optimized.graph.node) < len(exported.graph.node)


def test_remove_dead_nodes_drops_unused_work(exported):
    model = onnx.ModelProto()
    model.CopyFrom(exported)
    model.graph.node.append(helper.make_node("Relu", ["input_values"], ["nobody_reads_this"], name="dead_relu"))
    cleaned = passes.remove_dead_nodes(model)
    assert "dead_relu" not in {n.name for n in cleaned.graph.node}
    assert len(cleaned.graph.node) == len(exported.graph.node)


def test_unknown_pass_is_a_clear_error(exported):
    with pytest.raises(HubertExportError, match="unknown graph pass 'fuse_everything'"):
        passes.run_passes(exported, ["fuse_everything"], log=lambda _: None)


def test_check_parity_catches_a_broken_graph(exported):
    broken = onnx.ModelProto()
    broken.CopyFrom(exported)
    weight = max(broken.graph.initializer, key=lambda t: len(t.raw_data))
    data = bytearray(weight.raw_data)
    data[:64] = bytes(64)  # zero a few weights
    weight.raw_data = bytes(data)
    with pytest.raises(HubertExportError, match="outputs differ"):
        passes.check_parity(exported, broken, _inputs(exported))
