"""TensorRT back end: the CPU-testable parts (ONNX preparation, operator allow-list, profiles,
precision selection, environment checks, the refusal on a machine without TensorRT) always run;
engine builds need TensorRT and a CUDA GPU and are skipped, saying why, elsewhere."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from hubert_export.backends import tensorrt as trt_backend
from hubert_export.errors import HubertExportError
from hubert_export.export import export_onnx
from hubert_export.model import HubertForCTC, HubertModel
from hubert_export import passes
from hubert_export.passes import PORTABLE_PASSES, optimize_for_onnxruntime, run_passes
from hubert_export.precision import DEFAULT_POLICY
from hubert_export.recipes import Shape, ShapeRange, Shapes, default_recipe, recipe_from_dict
from hubert_export.tasks import HUBERT

MAIN = ShapeRange(Shape(1, 400), Shape(1, 160_000), Shape(16, 960_000))


@pytest.fixture(scope="module")
def exports(ctc_checkpoint, large_checkpoint, tmp_path_factory):
    """The portable graph build.py hands a back end: base CTC (TorchScript), large with mask (dynamo)."""
    out = tmp_path_factory.mktemp("trt-onnx")
    ctc = export_onnx(HubertForCTC.from_pretrained(ctc_checkpoint), HUBERT.task("ctc"), out / "ctc.onnx")
    large = export_onnx(HubertModel.from_pretrained(large_checkpoint), HUBERT.task("feature-extraction"),
                        out / "large.onnx", with_attention_mask=True, exporter="dynamo")
    return {"torchscript-base": run_passes(ctc, PORTABLE_PASSES), "dynamo-large": run_passes(large, PORTABLE_PASSES)}


def _run(model: onnx.ModelProto, inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})


# ------------------------------------------------------------------------------ ONNX preparation
@pytest.mark.parametrize("which", ["torchscript-base", "dynamo-large"])
def test_prepared_graph_has_unique_scope_names_and_computes_the_same(exports, which):
    model = exports[which]
    prepared = trt_backend.prepare_for_tensorrt(model)
    names = [n.name for n in prepared.graph.node]
    assert len(set(names)) == len(names)
    assert all(n.startswith("/model/") for n in names), [n for n in names if not n.startswith("/model/")][:5]
    assert [n.op_type for n in prepared.graph.node] == [n.op_type for n in model.graph.node]
    rng = np.random.default_rng(0)
    inputs = {"input_values": rng.standard_normal((2, 5_000)).astype(np.float32),
              "attention_mask": np.ones((2, 5_000), dtype=np.int64)}
    for before, after in zip(_run(model, inputs), _run(prepared, inputs)):
        np.testing.assert_array_equal(before, after)  # renaming only


@pytest.mark.parametrize("which", ["torchscript-base", "dynamo-large"])
def test_default_policy_selects_norms_softmax_and_the_first_conv_block(exports, which):
    prepared = trt_backend.prepare_for_tensorrt(exports[which])
    pinned = set(trt_backend.fp32_nodes(prepared, DEFAULT_POLICY))
    by_op = collections.defaultdict(set)
    for node in prepared.graph.node:
        by_op[node.op_type].add(node.name)
    assert by_op["LayerNormalization"] <= pinned and by_op["Softmax"] <= pinned
    assert by_op["Softmax"] and by_op["LayerNormalization"]
    first_conv = sorted(n for n in by_op["Conv"] if "conv_layers.0/" in n)
    assert len(first_conv) == 1 and first_conv[0] in pinned
    if which == "torchscript-base":
        assert by_op["InstanceNormalization"] <= pinned  # the GroupNorm of the base layout
    assert not (by_op["MatMul"] & pinned)  # the matmuls are what FP16 is for
    assert len([n for n in by_op["Conv"] if n not in pinned]) == 3  # convs 1, 2 and the positional conv
    assert trt_backend.fp32_nodes(prepared, ()) == []


def test_recipe_fp32_layers_are_the_patterns_used(exports):
    recipe = recipe_from_dict({"target": "tensorrt", "tensorrt": {"fp32_layers": ["[Ss]oftmax"]}})
    assert recipe.tensorrt.fp32_layers == ("[Ss]oftmax",)
    prepared = trt_backend.prepare_for_tensorrt(exports["torchscript-base"])
    pinned = trt_backend.fp32_nodes(prepared, recipe.tensorrt.fp32_layers)
    assert pinned and all(n.endswith("/Softmax") for n in pinned)
    assert default_recipe("tensorrt").tensorrt.fp32_layers == DEFAULT_POLICY


def test_onnx_runtime_fusions_are_refused(exports):
    fused = optimize_for_onnxruntime(exports["torchscript-base"])  # com.microsoft ops, as ORT artifacts carry
    with pytest.raises(HubertExportError, match=r"com\.microsoft\.Gelu.*portable export") as error:
        trt_backend.prepare_for_tensorrt(fused)
    assert "\n" not in str(error.value)


def _tiny_graph(node: onnx.NodeProto, opset: int = 18, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_operator_outside_the_parser_table_is_named():
    with pytest.raises(HubertExportError, match=r"does not support 1 node.*Det \(/model/Det\)"):
        trt_backend.prepare_for_tensorrt(_tiny_graph(helper.make_node("Det", ["x"], ["y"])))


def test_computed_axes_are_refused_and_constant_axes_accepted():
    computed = helper.make_node("ReduceSum", ["x", "x_axes"], ["y"], name="/model/ReduceSum")
    with pytest.raises(HubertExportError, match=r"ReduceSum.*computed `axes`.*fold_constants"):
        trt_backend.check_tensorrt_support(_tiny_graph(computed))
    axes = onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "x_axes")
    trt_backend.check_tensorrt_support(_tiny_graph(computed, initializers=[axes]))


def test_opset_outside_the_parser_range_is_refused():
    with pytest.raises(HubertExportError, match="opset 25.*9..24"):
        trt_backend.check_tensorrt_support(_tiny_graph(helper.make_node("Relu", ["x"], ["y"]), opset=25))


# ------------------------------------------------------------------------------ FP16 graph, builder config
def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


@pytest.mark.parametrize("which", ["torchscript-base", "dynamo-large"])
def test_fp16_graph_keeps_the_policy_layers_in_fp32_between_casts(exports, which):
    prepared = trt_backend.prepare_for_tensorrt(exports[which])
    half, pinned = trt_backend.fp16_policy_graph(prepared, DEFAULT_POLICY)
    onnx.checker.check_model(half, full_check=True)
    assert passes._io_signature(half) == passes._io_signature(prepared)  # FP32 in, FP32 out, same names
    assert pinned == trt_backend.fp32_nodes(prepared, DEFAULT_POLICY) and pinned
    types = _tensor_types(half)
    floating = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    nodes = {n.name: n for n in half.graph.node}
    for name in pinned:  # every float input of a pinned node is FP32
        assert all(types.get(i) == onnx.TensorProto.FLOAT for i in nodes[name].input if types.get(i) in floating), name
    for node in half.graph.node:
        if node.op_type == "MatMul":  # the matmuls are what FP16 is for
            assert all(types[i] == onnx.TensorProto.FLOAT16 for i in node.input), node.name
    # The pinned first conv reads the original FP32 weights and the input without a half rounding.
    conv0 = next(n for n in half.graph.node if n.op_type == "Conv" and "conv_layers.0/" in n.name)
    source = {t.name: t for t in prepared.graph.initializer}
    assert conv0.input[1] in source and types[conv0.input[1]] == onnx.TensorProto.FLOAT
    producers = {o: n for n in half.graph.node for o in n.output}
    path, tensor = [], conv0.input[0]
    while tensor in producers:
        path.append(producers[tensor].op_type)
        tensor = producers[tensor].input[0]
    assert tensor == "input_values" and "Cast" not in path, path
    casts = [n for n in half.graph.node if n.op_type == "Cast" and n.name.rsplit("/", 1)[-1].startswith("Cast_to_")]
    assert casts and all(n.name.startswith("/model/") for n in casts)


@pytest.mark.parametrize("which, checkpoint, model_class, task", [
    ("torchscript-base", "ctc_checkpoint", HubertForCTC, "ctc"),
    ("dynamo-large", "large_checkpoint", HubertModel, "feature-extraction"),
])
def test_fp16_graph_passes_the_fp16_gate_on_onnx_runtime_cpu(exports, which, checkpoint, model_class, task,
                                                             request, tmp_path):
    """ONNX Runtime's CPU kernels insert casts where they lack FP16: this checks the graph's structure
    and I/O end to end against the eager FP32 model, not FP16 arithmetic (the torch-half policy tests do)."""
    from hubert_export.audio import FeatureExtractorConfig
    from hubert_export.backends.onnxruntime import OnnxRuntimeRunner
    from hubert_export.parity import builtin_cases, run_cases, summarize, thresholds_for
    from hubert_export.runner import EagerRunner

    half, _ = trt_backend.fp16_policy_graph(trt_backend.prepare_for_tensorrt(exports[which]), DEFAULT_POLICY)
    onnx.save(half, str(tmp_path / "fp16.onnx"))
    model = model_class.from_pretrained(request.getfixturevalue(checkpoint))
    with_mask = which == "dynamo-large"
    cases = builtin_cases(FeatureExtractorConfig(return_attention_mask=with_mask), with_mask)
    with EagerRunner(model, HUBERT.task(task), with_attention_mask=with_mask) as reference, \
            OnnxRuntimeRunner(tmp_path / "fp16.onnx") as candidate:
        session_types = {i.name: i.type for i in candidate.session.get_inputs()}
        assert session_types["input_values"] == "tensor(float)"
        outcomes = run_cases(reference, candidate, cases, config=model.config, task=task)
        report = summarize(outcomes, target="onnx", precision="fp16", task=task, thresholds=thresholds_for("fp16"))
    assert report.passed, report.failures
    assert 1e-6 < report.worst()["relative_l2_error"]  # really computed in half, not the FP32 graph


def test_builder_clears_tf32_unless_the_recipe_asks_for_it():
    assert trt_backend.builder_flags(default_recipe("tensorrt")) == {"set": [], "clear": ["TF32"]}
    assert trt_backend.builder_flags(default_recipe("tensorrt", "fp32")) == {"set": [], "clear": ["TF32"]}
    asked = default_recipe("tensorrt").with_overrides(**{"tensorrt.tf32": True})
    assert trt_backend.builder_flags(asked) == {"set": ["TF32"], "clear": []}
    for recipe in (default_recipe("tensorrt"), asked):  # strongly typed: no precision flag is ever set
        assert not {"FP16", "BF16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} & set(trt_backend.builder_flags(recipe)["set"])
    assert trt_backend.network_flags() == ["STRONGLY_TYPED"]


def test_build_applies_exactly_the_flags_builder_flags_returns():
    """build_engine sets and clears the config's flags only through builder_flags (read from its source:
    without TensorRT there is no config to inspect)."""
    import inspect

    source = inspect.getsource(trt_backend.build_engine)
    assert source.count("config.set_flag(") == 1 and source.count("config.clear_flag(") == 1
    assert "flags = builder_flags(recipe)" in source and 'for name in flags["clear"]' in source


# ------------------------------------------------------------------------------ profiles
def test_profiles_give_the_mask_the_same_shapes():
    profiles = trt_backend.optimization_profiles(Shapes(), ["input_values", "attention_mask"])
    assert profiles == [{name: ((1, 400), (1, 160_000), (16, 960_000)) for name in ("input_values", "attention_mask")}]


def test_extra_profiles_come_after_the_main_range():
    recipe = recipe_from_dict({"target": "tensorrt", "shapes": {
        "max": {"batch": 8, "samples": 480_000},
        "profiles": [{"min": {"batch": 1, "samples": 400}, "opt": {"batch": 1, "samples": 32_000},
                      "max": {"batch": 2, "samples": 160_000}}]}})
    profiles = trt_backend.optimization_profiles(recipe.shapes, ["input_values"])
    assert profiles == [{"input_values": ((1, 400), (1, 160_000), (8, 480_000))},
                        {"input_values": ((1, 400), (1, 32_000), (2, 160_000))}]
    ranges = trt_backend.shape_ranges(recipe.shapes)
    assert trt_backend.select_profile(ranges, 1, 16_000) == 1  # the tighter one
    assert trt_backend.select_profile(ranges, 4, 16_000) == 0
    with pytest.raises(HubertExportError, match="no optimisation profile"):
        trt_backend.select_profile(ranges, 9, 16_000)


@pytest.mark.parametrize("shapes, message", [
    (Shapes(min=Shape(1, 400), opt=Shape(1, 100), max=Shape(1, 800)), "samples min 400, opt 100, max 800"),
    (Shapes(min=Shape(2, 400), opt=Shape(1, 800), max=Shape(4, 800)), "batch min 2, opt 1, max 4"),
    (Shapes(min=Shape(1, 200), opt=Shape(1, 800), max=Shape(4, 800)), "below HuBERT's receptive field"),
    (Shapes(profiles=(ShapeRange(Shape(1, 400), Shape(1, 800), Shape(32, 800)),)), r"profiles\[0\].*outside"),
])
def test_bad_shapes_are_refused(shapes, message):
    with pytest.raises(HubertExportError, match=message):
        trt_backend.optimization_profiles(shapes, ["input_values"])


def test_unknown_inputs_are_refused():
    with pytest.raises(HubertExportError, match="unexpected input"):
        trt_backend.optimization_profiles(Shapes(), ["input_values", "speaker_id"])


# ------------------------------------------------------------------------------ environment
def test_timing_cache_defaults_to_a_per_version_per_gpu_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = trt_backend.timing_cache_path(default_recipe("tensorrt"), "10.9.0.34", "8.9")
    assert path == tmp_path / "hubert-export" / "tensorrt" / "trt10.9.0.34-sm89.timing-cache"
    chosen = recipe_from_dict({"target": "tensorrt", "tensorrt": {"timing_cache": str(tmp_path / "t.cache")}})
    assert trt_backend.timing_cache_path(chosen, "10.9.0.34", "8.9") == tmp_path / "t.cache"


RECORDED = {"tensorrt": "10.9.0.34", "gpu": "NVIDIA L4", "compute_capability": "8.9"}


def test_engine_from_the_same_version_and_gpu_loads():
    trt_backend.check_engine_compatible(RECORDED, dict(RECORDED, gpu="NVIDIA L40S"))  # same architecture


@pytest.mark.parametrize("current, message", [
    (dict(RECORDED, tensorrt="10.13.3.9"), r"built with TensorRT 10\.9\.0\.34 and this machine has TensorRT 10\.13"),
    (dict(RECORDED, gpu="NVIDIA H100", compute_capability="9.0"), r"compute capability 8\.9 .*NVIDIA H100.* is 9\.0"),
])
def test_engine_from_another_version_or_gpu_is_refused(current, message):
    with pytest.raises(HubertExportError, match=message):
        trt_backend.check_engine_compatible(RECORDED, current)


def test_manifest_without_the_engine_environment_is_refused():
    with pytest.raises(HubertExportError, match="lacks 'compute_capability'"):
        trt_backend.check_engine_compatible({"tensorrt": "10.9.0.34"}, RECORDED)


def _has_tensorrt_gpu() -> bool:
    return trt_backend._missing_requirement() is None


@pytest.mark.skipif(_has_tensorrt_gpu(), reason="this machine has TensorRT and a GPU: the refusal does not apply")
def test_cli_refuses_tensorrt_here_in_one_line_and_writes_nothing(ctc_checkpoint, tmp_path, capsys):
    from hubert_export.cli import main

    output = tmp_path / "out"
    code = main(["--target", "tensorrt", "--model", str(ctc_checkpoint), "--output", str(output), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("hubert-export: error: --target tensorrt needs TensorRT and an NVIDIA GPU")
    assert "use --target onnx or openvino here" in err and "\n" not in err
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_int8_is_refused_before_anything_else():
    recipe = default_recipe("onnx", "int8")
    # past the recipe's own check, as a library caller constructing a Recipe could
    recipe = type(recipe)(**{**recipe.__dict__, "target": "tensorrt"})
    with pytest.raises(HubertExportError, match="fp16 or fp32 engines, not int8"):
        trt_backend.check_available(recipe)


# ------------------------------------------------------------------------------ engines (GPU only)
@pytest.fixture(scope="module")
def trt_engine_artifact(ctc_checkpoint, tmp_path_factory):
    missing = trt_backend._missing_requirement()
    if missing:
        pytest.skip(f"TensorRT engine builds need TensorRT, cuda-python and an NVIDIA GPU; this machine has {missing}")
    from hubert_export.build import export_artifact

    out = tmp_path_factory.mktemp("trt") / "tiny-trt"
    recipe = default_recipe("tensorrt").with_overrides(**{
        "shapes.max.batch": 4, "shapes.max.samples": 64_000, "shapes.opt.samples": 16_000,
        "tensorrt.timing_cache": str(out.parent / "timing.cache"), "tensorrt.workspace_gb": 1})
    result = export_artifact(ctc_checkpoint, out, recipe)
    return result, recipe


def test_fp16_engine_passes_parity_and_records_its_environment(trt_engine_artifact):
    from hubert_export.artifact import Artifact

    result, _ = trt_engine_artifact
    assert result.passed, result.report.failures
    backend = Artifact.open(result.path).manifest.backend
    assert backend["files"] == ["model.plan"] and (result.path / "model.plan").stat().st_size > 0
    assert backend["compute_capability"] == trt_backend.current_environment()["compute_capability"]
    assert backend["fp32_layers"] == list(DEFAULT_POLICY) and backend["fp32_layer_count"] > 0
    assert backend["network"] == "strongly typed" and backend["builder_flags"] == {"set": [], "clear": ["TF32"]}
    assert (result.path.parent / "timing.cache").stat().st_size > 0


def test_engine_runner_refuses_inputs_outside_the_profile(trt_engine_artifact):
    from hubert_export.artifact import Artifact

    result, _ = trt_engine_artifact
    with trt_backend.TensorRtBackend().load(Artifact.open(result.path)) as runner:
        with pytest.raises(HubertExportError, match="outside this artifact's shape range"):
            runner.infer({"input_values": np.zeros((5, 16_000), dtype=np.float32)})
        out = runner.infer({"input_values": np.zeros((2, 16_000), dtype=np.float32)})
        assert out["logits"].shape[:2] == (2, 49) and np.isfinite(out["logits"]).all()
        assert 0 < runner.last_timing["compute"] <= runner.last_timing["total"]
        pointers = {n: b.pointer for n, b in runner.buffers.items()}
        runner.infer({"input_values": np.zeros((1, 8_000), dtype=np.float32)})  # smaller: buffers reused
        assert {n: b.pointer for n, b in runner.buffers.items()} == pointers
