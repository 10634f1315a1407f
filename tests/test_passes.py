"""Graph passes, each alone: pure, interface-preserving, parity-preserving, and really firing."""

import logging
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hubert_export import HubertExportError, HubertForCTC, HubertModel
from hubert_export import passes
from hubert_export.errors import EXIT_INTERNAL, InternalError
from hubert_export.export import export_onnx
from hubert_export.tasks import HUBERT

from .conftest import TINY_LARGE, save_reference_checkpoint


@pytest.fixture(scope="module")
def exported(ctc_checkpoint, tmp_path_factory) -> onnx.ModelProto:
    path = tmp_path_factory.mktemp("passes") / "ctc.onnx"
    export_onnx(HubertForCTC.from_pretrained(ctc_checkpoint), HUBERT.task("ctc"), path)
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def exported_large(tmp_path_factory) -> onnx.ModelProto:
    """Pre-LN layout with an attention mask input: the other graph shape the passes must handle."""
    directory = tmp_path_factory.mktemp("passes-large")
    checkpoint = save_reference_checkpoint(directory / "ck", "HubertModel", **TINY_LARGE)
    export_onnx(HubertModel.from_pretrained(checkpoint), HUBERT.task("feature-extraction"), directory / "m.onnx",
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
    result = passes.run_passes(model, [name])
    assert model.SerializeToString() == before  # the caller's model is untouched
    assert passes._io_signature(result) == passes._io_signature(model)
    worst = check_parity(model, result, _inputs(model), atol=1e-5) if name != "optimize_for_onnxruntime" \
        else _ort_optimized_parity(model, result)
    assert worst <= 1e-5


def _ort_optimized_parity(model, result):
    # contrib ops run only with ONNX Runtime's optimiser present, so compare at its default level
    import onnxruntime as ort

    inputs = _inputs(model)
    ref = _run_ort(model, inputs)
    session = ort.InferenceSession(result.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    return max(float(np.abs(got[k] - ref[k]).max()) for k in ref)


def test_fusions_really_fire(exported):
    layers = 2
    fused = passes.run_passes(exported, ["fold_constants", "fuse_qkv_projections"])
    assert passes.fusion_counts(fused)["fuse_qkv_projections"] == layers
    before = Counter(n.op_type for n in passes.fold_constants(exported).graph.node)
    ops = Counter(n.op_type for n in fused.graph.node)
    # per layer: three MatMuls and three bias Adds become one of each, plus one Split
    assert ops["MatMul"] == before["MatMul"] - 2 * layers and ops["Add"] == before["Add"] - 2 * layers
    assert ops["Split"] == before["Split"] + layers


def test_optimize_for_onnxruntime_fuses_bias_gelu_and_matmul_scaling(exported):
    optimized = passes.run_passes(exported, passes.ONNXRUNTIME_OFFLINE_PASSES)
    ops = Counter(n.op_type for n in optimized.graph.node)
    assert ops["BiasGelu"] == 2 and ops["FusedMatMul"] == 2  # one each per layer: FFN, attention scores
    assert ops["Erf"] == 0  # every erf-GELU fused by ONNX Runtime itself (why fuse_gelu was deleted)
    assert len(optimized.graph.node) < len(exported.graph.node)


def test_fold_constants_removes_dead_nodes(exported):
    """Why there is no remove_dead_nodes pass: the optimiser fold_constants runs drops unused work."""
    model = onnx.ModelProto()
    model.CopyFrom(exported)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "dead_weight"))
    model.graph.node.extend([
        helper.make_node("Relu", ["input_values"], ["nobody_reads_this"], name="dead_relu"),
        helper.make_node("Mul", ["nobody_reads_this", "input_values"], ["nor_this"], name="dead_mul"),
        helper.make_node("Add", ["dead_weight", "dead_weight"], ["nor_that"], name="dead_add"),
    ])
    cleaned = passes.fold_constants(model)
    names = {n.name for n in cleaned.graph.node}
    assert not names & {"dead_relu", "dead_mul", "dead_add"}
    assert "dead_weight" not in {t.name for t in cleaned.graph.initializer}
    assert len(cleaned.graph.node) == len(passes.fold_constants(exported).graph.node)


@pytest.mark.parametrize("graph", ["exported", "exported_large"])
def test_fold_constants_keeps_the_names_of_the_nodes_it_rewrites(graph, request):
    """transformers initialises conv biases to zero; onnxscript's optional-bias rule drops them and
    names the new Conv `node_Conv_0`. The INT8 policy finds layers by name (a renamed feature encoder
    was quantised instead of kept float), so every rewritten node takes back its old name."""
    model = request.getfixturevalue(graph)
    folded = passes.fold_constants(model)
    convs = {n.output[0]: n for n in model.graph.node if n.op_type == "Conv"}
    rewritten = [n for n in folded.graph.node if n.op_type == "Conv" and len(n.input) < len(convs[n.output[0]].input)]
    assert rewritten  # the rule fired: the test has something to check
    assert all(n.name == convs[n.output[0]].name for n in rewritten)
    assert {n.name for n in folded.graph.node} <= {n.name for n in model.graph.node}


def _projections(count: int, bias: str | None, rng=np.random.default_rng(0)) -> onnx.ModelProto:
    """`count` projections of one input, each with a bias Add (`bias` "first" or "last") or none."""
    nodes, weights, outputs = [], [], []
    for i in range(count):
        weights.append(numpy_helper.from_array(rng.standard_normal((8, 4 + i)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"p{i}"], name=f"proj{i}"))
        out = f"p{i}"
        if bias:
            weights.append(numpy_helper.from_array(rng.standard_normal(4 + i).astype(np.float32), f"b{i}"))
            operands = [f"b{i}", f"p{i}"] if bias == "first" else [f"p{i}", f"b{i}"]
            nodes.append(helper.make_node("Add", operands, [f"y{i}"], name=f"bias{i}"))
            out = f"y{i}"
        nodes.append(helper.make_node("Relu", [out], [f"out{i}"]))
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, ["b", "t", 4 + i]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 8])],
                              outputs, weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("bias", [None, "first", "last"])
def test_fuse_qkv_projections_on_a_small_graph(bias):
    model = _projections(3, bias)
    before = model.SerializeToString()
    fused = passes.fuse_qkv_projections(model)
    assert model.SerializeToString() == before
    onnx.checker.check_model(fused, full_check=True)
    ops = Counter(n.op_type for n in fused.graph.node)
    assert passes.fusion_counts(fused) == {"fuse_qkv_projections": 1}
    assert (ops["MatMul"], ops["Split"], ops["Add"]) == (1, 1, 1 if bias else 0)
    assert {t.name for t in fused.graph.initializer} == {"x_qkv_weight", "x_qkv_sizes"} | ({"x_qkv_bias"} if bias else set())
    x = np.random.default_rng(1).standard_normal((2, 7, 8)).astype(np.float32)
    assert check_parity(model, fused, {"x": x}, atol=1e-5) <= 1e-5


@pytest.mark.parametrize("count", [2, 4])
def test_fuse_qkv_projections_leaves_other_groups_alone(count):
    fused = passes.fuse_qkv_projections(_projections(count, "first"))
    assert passes.fusion_counts(fused) == {"fuse_qkv_projections": 0}
    assert Counter(n.op_type for n in fused.graph.node)["MatMul"] == count


def test_fuse_qkv_projections_keeps_projections_that_are_graph_outputs():
    model = _projections(3, None)
    model.graph.output.append(helper.make_tensor_value_info("p1", TensorProto.FLOAT, ["b", "t", 5]))
    fused = passes.fuse_qkv_projections(model)
    assert [o.name for o in fused.graph.output] == ["out0", "out1", "out2", "p1"]
    x = np.random.default_rng(1).standard_normal((1, 3, 8)).astype(np.float32)
    assert check_parity(model, fused, {"x": x}, atol=1e-5) <= 1e-5


def test_run_passes_logs_each_pass(exported, caplog):
    with caplog.at_level(logging.INFO, logger="hubert_export.passes"):
        passes.run_passes(exported, ["fold_constants", "fuse_qkv_projections"])
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("pass fold_constants: ") for line in lines)
    assert any(line.startswith("pass fuse_qkv_projections: ") and "2 fusions" in line for line in lines)


def test_unknown_pass_is_a_clear_error(exported):
    with pytest.raises(HubertExportError, match="unknown graph pass 'fuse_everything'"):
        passes.run_passes(exported, ["fuse_everything"])


def test_check_parity_catches_a_broken_graph(exported):
    broken = onnx.ModelProto()
    broken.CopyFrom(exported)
    weight = max(broken.graph.initializer, key=lambda t: len(t.raw_data))
    data = bytearray(weight.raw_data)
    data[:64] = bytes(64)  # zero a few weights
    weight.raw_data = bytes(data)
    with pytest.raises(HubertExportError, match="outputs differ"):
        check_parity(exported, broken, _inputs(exported))


def _renames_an_output(model: onnx.ModelProto) -> onnx.ModelProto:
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    old = broken.graph.output[0].name
    broken.graph.output[0].name = f"{old}_renamed"
    for node in broken.graph.node:
        node.output[:] = [f"{old}_renamed" if o == old else o for o in node.output]
    return broken


def test_a_pass_that_breaks_the_interface_is_our_bug_exit_3(exported, monkeypatch):
    monkeypatch.setitem(passes.PASSES, "fold_constants", _renames_an_output)
    with pytest.raises(InternalError, match="changed the model's inputs or outputs.*report the bug") as info:
        passes.run_passes(exported, ["fold_constants"])
    assert info.value.exit_code == EXIT_INTERNAL == 3


def test_cli_exits_3_on_an_internal_error(ctc_checkpoint, tmp_path, monkeypatch, capsys):
    from hubert_export import cli

    monkeypatch.setitem(passes.PASSES, "fold_constants", _renames_an_output)  # what openvino's build runs
    output = tmp_path / "out"
    code = cli.main(["--target", "openvino", "--model", str(ctc_checkpoint), "--output", str(output), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("hubert-export: internal error: graph pass fold_constants") and err.count("\n") == 1
    assert not output.exists()


def test_fp16_with_fp32_islands_on_a_small_graph():
    """x -> Unsqueeze -> pinned MatMul (FP32 weight) -> Add (a fill beyond half's range) -> MatMul -> y."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((8, 8)).astype(np.float32) * 1e-3 + 1.0  # would round in half
    w1 = rng.standard_normal((8, 4)).astype(np.float32)
    fill = np.full((8,), -3.4e38, dtype=np.float32)
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"], name="/model/Unsqueeze"),
             helper.make_node("MatMul", ["u", "w0"], ["h"], name="/model/first/MatMul"),
             helper.make_node("Max", ["h", "fill"], ["m"], name="/model/clamp/Max"),
             helper.make_node("MatMul", ["m", "w1"], ["y"], name="/model/last/MatMul")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 4])],
        [numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"), numpy_helper.from_array(w0, "w0"),
         numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(fill, "fill")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    half = passes.fp16_with_fp32_islands(model, ["/model/first/MatMul"])
    onnx.checker.check_model(half, full_check=True)
    assert passes._io_signature(half) == passes._io_signature(model)
    by_name = {n.name: n for n in half.graph.node}
    weights = {t.name: t for t in half.graph.initializer}
    first = by_name["/model/first/MatMul"]
    assert list(first.input) == ["u", "w0"] and weights["w0"].data_type == TensorProto.FLOAT  # untouched, no Cast
    assert by_name["/model/Unsqueeze"].input[0] == "x"  # the input path stays FP32
    last = by_name["/model/last/MatMul"]
    assert weights[last.input[1]].data_type == TensorProto.FLOAT16
    clamp = by_name["/model/clamp/Max"]
    fill16 = numpy_helper.to_array(weights[clamp.input[1]])
    assert fill16.dtype == np.float16 and np.isfinite(fill16).all() and fill16[0] == -65504
    cast = next(n for n in half.graph.node if n.op_type == "Cast" and list(n.input) == ["h"])
    assert cast.output[0] == clamp.input[0] and cast.name.startswith("/model/clamp/")  # the island's output, cast down
    assert [n.op_type for n in half.graph.node][-1] == "Cast"  # the FP32 output
    x = rng.standard_normal((3, 8)).astype(np.float32)
    expected = _run_ort(model, {"x": x})["y"]
    actual = _run_ort(half, {"x": x})["y"]
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=2e-2, atol=2e-2)


# The passes' numerical parity, measured (a test utility: the build checks parity on the artifact).
def check_parity(before: onnx.ModelProto, after: onnx.ModelProto, inputs: dict[str, np.ndarray],
                 atol: float = 1e-5) -> float:
    """Max abs difference between the two models' outputs on `inputs`, run by ONNX Runtime on CPU;
    raises when outputs differ in name or shape or by more than atol."""
    ref, new = _run_ort(before, inputs), _run_ort(after, inputs)
    if list(ref) != list(new):
        raise HubertExportError(f"outputs changed from {list(ref)} to {list(new)}: the pass broke the graph's interface")
    worst = 0.0
    for name, expected in ref.items():
        actual = new[name]
        if actual.shape != expected.shape:
            raise HubertExportError(f"output {name} changed shape from {expected.shape} to {actual.shape}")
        if expected.size:
            worst = max(worst, float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))))
    if not worst <= atol:  # also catches NaN
        raise HubertExportError(f"outputs differ by {worst:.3g} (max abs), more than the allowed {atol:.3g}")
    return worst


def _run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Both sides unoptimised: the comparison is of the graphs, not of ORT's own rewrites.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
