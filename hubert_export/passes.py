"""Graph passes over the exported ONNX model: each one a pure `onnx.ModelProto -> onnx.ModelProto`.

Every pass leaves its input unchanged, keeps the graph's input and output names and dynamic
dimensions, and keeps numerical parity with its input; `run_passes` checks the first two after each
pass and the tests measure the third (tests/test_passes.py).

    fold_constants            constant folding, rewrite clean-ups, unused-node removal, CSE
                              (onnxscript's optimiser)
    fuse_qkv_projections      three projections of one input -> one wide MatMul (+ Add) + Split
                              (an onnxscript rewrite rule)
    optimize_for_onnxruntime  ONNX Runtime's own portable fusions, applied offline

Gone, measured to do nothing: `remove_dead_nodes` (fold_constants already drops nodes no output
needs; tests/test_passes.py shows it) and `fuse_gelu` (in the only pipeline that ran it, ONNX
Runtime's offline optimiser fuses the same erf-GELUs itself: identical operator counts without it).

Fusion passes record how many fusions a model carries in its `metadata_props`
(`fusion_counts(model)` reads them), so a build log or a test can tell that a pass really fired.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hubert_export.errors import HubertExportError, InternalError

logger = logging.getLogger(__name__)

# metadata_props key prefix under which fusion passes record their counts.
FUSION_COUNT_KEY = "hubert_export.fusions."


def _record_fusions(model: onnx.ModelProto, pass_name: str, count: int) -> None:
    # Cumulative: re-running a pass on its own output must not forget the fusions already there.
    key = FUSION_COUNT_KEY + pass_name
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = str(int(prop.value) + count)
            return
    model.metadata_props.add(key=key, value=str(count))


def fusion_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many fusions each fusion pass made on `model` (and its ancestors), by pass name."""
    return {p.key[len(FUSION_COUNT_KEY):]: int(p.value) for p in model.metadata_props
            if p.key.startswith(FUSION_COUNT_KEY)}


# --------------------------------------------------------------------------------------------------
# fold_constants


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, onnxscript's safe rewrite rules, unused-node removal, initializer dedup, CSE.

    The exporter already runs this optimiser; running it again after our own edits (or on a model
    loaded from elsewhere) folds the shape arithmetic and duplicate subexpressions they leave.
    """
    import onnxscript.optimizer

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the optimiser edits the proto it is given as well as returning a new one
    try:
        optimized = onnxscript.optimizer.optimize(copy, num_iterations=1)
    except Exception as exc:  # the optimiser raises many types; the user needs one line
        raise HubertExportError(
            f"constant folding failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
            "drop fold_constants from the pass list"
        ) from exc
    return _restore_node_names(model, optimized)


def _restore_node_names(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> onnx.ModelProto:
    """Give a node that a rewrite rule replaced the name of the node it replaced: same op type, same
    first output. The INT8 policy finds layers by name (`quantization.LAYER_GROUPS`), and onnxscript's
    rules name their replacements `node_Conv_0`: the optional-bias rule rewrote every Conv of a
    random-init (zero-bias) hubert-large, its float feature encoder matched nothing and was quantised,
    and the artifact failed its gate (padded-batch cosine 0.22)."""
    producer = {node.output[0]: (node.op_type, node.name) for node in original.graph.node if node.output}
    kept = {node.name for node in original.graph.node}
    for node in rewritten.graph.node:
        if node.name in kept or not node.output:
            continue
        op_type, name = producer.get(node.output[0], (None, None))
        if op_type == node.op_type and name:
            node.name = name
    return rewritten


# --------------------------------------------------------------------------------------------------
# fp16_with_fp32_islands

FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
# No arithmetic: they run in the precision of their float inputs, so the input's path to a pinned
# first convolution (Unsqueeze) stays FP32 and a Shape needs no Cast.
_PRECISION_NEUTRAL_OPS = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Transpose", "Identity", "Flatten", "Shape",
                                    "Size", "Slice", "Gather", "Expand", "Concat", "Split"})


def _to_half(array: np.ndarray) -> np.ndarray:
    """Float32 -> float16 with values beyond half's range clamped to its largest finite ones (the
    exporters' float32-min attention fill stays a finite, very negative number, not -inf)."""
    limit = float(np.finfo(np.float16).max)
    return np.clip(array, -limit, limit).astype(np.float16)


def fp16_with_fp32_islands(model: onnx.ModelProto, fp32_nodes: Iterable[str]) -> onnx.ModelProto:
    """The FP16 precision policy written into the graph: every float tensor in half except around
    the nodes named in `fp32_nodes`, which compute in FP32 between Cast nodes; inputs and outputs
    stay FP32. What TensorRT builds as a strongly typed network and ONNX Runtime runs as it is.

    A pinned node reads FP32 weights (never half-rounded ones) and, when its input comes from the
    graph's FP32 input through ops without arithmetic, that input unrounded. One Cast per tensor
    and target type, named after the scope of the node that needs it. Subgraphs are refused.
    (onnxruntime.transformers.float16's node_block_list rounds a pinned node's weights to half and
    back, and its input too, which is what the pin exists to prevent.)
    """
    keep = set(fp32_nodes)
    graph = onnx.shape_inference.infer_shapes(model).graph
    _refuse_subgraphs(graph)
    types, constants = _element_types(graph)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    del out.graph.value_info[:]  # types change; consumers re-infer them
    conversion = _HalfConversion(out.graph, types, {t.name: t for t in graph.initializer}, constants)
    for node in graph.node:
        conversion.add(node, _target_type(node, keep, conversion.produced))
    _cast_outputs_to_fp32(out.graph.output, conversion.produced, conversion.new_nodes)
    out.graph.node.extend(conversion.new_nodes)
    _drop_unused_initializers(out.graph)
    return out


def _refuse_subgraphs(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise HubertExportError(f"fp16_with_fp32_islands: node {node.name} ({node.op_type}) has a subgraph, "
                                    "which this pass does not convert: build in fp32")


def _element_types(graph: onnx.GraphProto) -> tuple[dict[str, int], dict[str, onnx.TensorProto]]:
    """Each tensor's element type in the shape-inferred `graph` (before the pass), and the FP32
    values of its Constant nodes by output name (they get half copies, as initializers do)."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    constants: dict[str, onnx.TensorProto] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            types.update({o: next((a.t.data_type for a in node.attribute if a.name == "value"), 0) for o in node.output})
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.data_type == FLOAT:
                constants[node.output[0]] = value
    return types, constants


def _target_type(node: onnx.NodeProto, keep: set[str], produced: dict[str, int]) -> int:
    """The float type `node` computes in: FP32 when pinned, or when it has no arithmetic and reads
    FP32 only (so the input's path to a pinned node stays unrounded); else half."""
    if node.name in keep:
        return FLOAT
    if node.op_type in _PRECISION_NEUTRAL_OPS:
        float_inputs = [i for i in node.input if produced.get(i) in (FLOAT, HALF)]
        return FLOAT if all(produced[i] == FLOAT for i in float_inputs) else HALF
    return HALF


class _HalfConversion:
    """The converted graph as it is written, node by node: each tensor's element type after the
    pass (`produced`), the half weight copies and Casts made so far (each made once, then reused),
    and the new node list in order."""

    def __init__(self, graph: onnx.GraphProto, types: dict[str, int], initializers: dict[str, onnx.TensorProto],
                 constants: dict[str, onnx.TensorProto]) -> None:
        self.graph = graph  # the output graph: half copies of initializers are added to it
        self.types = types
        self.initializers = initializers
        self.constants = constants
        self.produced: dict[str, int] = {i.name: types.get(i.name, 0) for i in graph.input}
        self.produced.update({name: t.data_type for name, t in initializers.items()})
        self.half_weights: dict[str, str] = {}
        self.casts: dict[tuple[str, int], str] = {}
        self.new_nodes: list[onnx.NodeProto] = []

    def add(self, node: onnx.NodeProto, target: int) -> None:
        """`node` computing in `target`: its float inputs converted to it, its outputs recorded."""
        scope = node.name.rsplit("/", 1)[0] if "/" in node.name else "/model"
        converted = onnx.NodeProto()
        converted.CopyFrom(node)
        converted.input[:] = [self.as_type(i, target, scope) for i in node.input]
        for attribute in converted.attribute:  # ops whose output type is an attribute
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i in (FLOAT, HALF):
                attribute.i = target
            if node.op_type == "ConstantOfShape" and attribute.name == "value" and attribute.t.data_type == FLOAT:
                value = numpy_helper.to_array(attribute.t)
                value = _to_half(value) if target == HALF else value
                attribute.t.CopyFrom(numpy_helper.from_array(value, attribute.t.name))
        self.new_nodes.append(converted)
        for output in node.output:
            original = self.types.get(output, 0)
            if node.op_type == "Constant":
                self.produced[output] = original  # constants stay as written; consumers cast them (folded)
            elif original in (FLOAT, HALF) or (node.op_type in ("Cast", "ConstantOfShape") and original == FLOAT):
                self.produced[output] = target
            else:
                self.produced[output] = original

    def as_type(self, name: str, target: int, scope: str) -> str:
        """The tensor `name` as `target`: itself, its half copy (a weight) or a Cast's output."""
        if not name or self.produced.get(name) not in (FLOAT, HALF) or self.produced[name] == target:
            return name
        if (name in self.initializers or name in self.constants) and target == HALF:  # no Cast at run time
            return self._half_weight(name, scope)
        return self._cast(name, target, scope)

    def _half_weight(self, name: str, scope: str) -> str:
        if name not in self.half_weights:
            source = self.initializers[name] if name in self.initializers else self.constants[name]
            half = numpy_helper.from_array(_to_half(numpy_helper.to_array(source)), f"{name}_fp16")
            if name in self.initializers:
                self.graph.initializer.append(half)
            else:
                self.new_nodes.append(helper.make_node("Constant", [], [half.name], value=half,
                                                       name=f"{scope}/Constant_fp16_{len(self.half_weights)}"))
            self.half_weights[name] = half.name
            self.produced[half.name] = HALF
        return self.half_weights[name]

    def _cast(self, name: str, target: int, scope: str) -> str:
        key = (name, target)
        if key not in self.casts:
            suffix = "fp16" if target == HALF else "fp32"
            self.casts[key] = f"{name}_to_{suffix}"
            self.new_nodes.append(helper.make_node("Cast", [name], [self.casts[key]], to=target,
                                                   name=f"{scope}/Cast_to_{suffix}_{len(self.casts)}"))
            self.produced[self.casts[key]] = target
        return self.casts[key]


def _cast_outputs_to_fp32(outputs: Iterable[onnx.ValueInfoProto], produced: dict[str, int],
                          nodes: list[onnx.NodeProto]) -> None:
    """Outputs keep their FP32 interface: the last half tensor is renamed and cast up under the output's name."""
    for output in outputs:
        if produced.get(output.name) == HALF:
            internal = f"{output.name}_fp16"
            for node in nodes:
                node.output[:] = [internal if o == output.name else o for o in node.output]
                node.input[:] = [internal if i == output.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [internal], [output.name], to=FLOAT,
                                          name=f"/model/{output.name}/Cast_to_fp32"))


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    # Mostly the FP32 originals of weights that every reader now takes as half copies.
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


# --------------------------------------------------------------------------------------------------
# fuse_qkv_projections


def fuse_qkv_projections(model: onnx.ModelProto) -> onnx.ModelProto:
    """Three `MatMul(x, W_i)` (+ `Add(., b_i)`) on one input -> one `MatMul(x, [W_q|W_k|W_v])`
    (+ one `Add`) and a `Split` that takes the three projections' place.

    One wide GEMM runs closer to the CPU's matrix-multiply ceiling than three narrow ones, and
    reads the activations once. Groups of exactly three are fused: that is attention's q/k/v; two
    or four projections of one input are some other structure and are left alone. Biases are
    fused when all three projections have one; otherwise the existing Adds stay after the Split.
    The number of fusions is recorded (see `fusion_counts`).

    Written on onnx_ir rather than as an onnxscript pattern rule: the rewriter's multi-output
    matcher (onnxscript 0.7) binds all three MatMuls of the pattern to the same node and stops
    there, so a q/k/v rule never fires.
    """
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    ir_model = ir.serde.deserialize_model(model)  # wraps the proto's tensors: no weight is copied
    graph = ir_model.graph
    order = {node: i for i, node in enumerate(graph)}
    inputs = [*graph.inputs, *(value for node in graph for value in node.outputs)]
    count = 0
    for x in inputs:
        matmuls = sorted({use.node for use in x.uses() if _is_projection(use.node, x)}, key=order.__getitem__)
        weights = [m.inputs[1].const_value for m in matmuls]
        if len(matmuls) != 3 or len({w.shape[0] for w in weights}) != 1 or len({w.dtype for w in weights}) != 1:
            continue
        biases = [_bias_add(m) for m in matmuls]
        with_bias = all(b is not None for b in biases)
        replaced = [add for add, _ in biases] if with_bias else matmuls
        stem = matmuls[0].name or x.name

        def initializer(suffix: str, array: np.ndarray, prefix: str = f"{x.name}_qkv_") -> ir.Value:
            value = ir.Value(name=prefix + suffix, const_value=ir.tensor(array))
            graph.register_initializer(value)
            return value

        weight = initializer("weight", np.concatenate([w.numpy() for w in weights], axis=1))
        new_nodes = [ir.Node("", "MatMul", [x, weight], name=f"{stem}_qkv")]
        if with_bias:
            bias = initializer("bias", np.concatenate([b.numpy() for _, b in biases]))
            new_nodes.append(ir.Node("", "Add", [new_nodes[-1].outputs[0], bias], name=f"{stem}_qkv_bias"))
        sizes = initializer("sizes", np.array([w.shape[1] for w in weights], dtype=np.int64))
        split = ir.Node("", "Split", [new_nodes[-1].outputs[0], sizes], [ir.Attr("axis", ir.AttributeType.INT, -1)],
                        num_outputs=3, name=f"{stem}_qkv_split")
        new_nodes.append(split)
        graph.insert_before(matmuls[0], new_nodes)  # x and the constants are defined by then
        for old, new in zip((r.outputs[0] for r in replaced), split.outputs):
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            # The same value: its name (graph outputs among them), type and shape carry over.
            new.type, new.shape, name, old.name = old.type, old.shape, old.name, None
            new.name = name
        graph.remove([*matmuls, *(replaced if with_bias else [])], safe=True)
        count += 1
    if count:
        RemoveUnusedNodesPass()(ir_model)  # the three separate weights and biases
    out = ir.serde.serialize_model(ir_model)
    _record_fusions(out, "fuse_qkv_projections", count)
    return out


def _is_projection(node, x) -> bool:
    """`MatMul(x, W)` with W a 2-D constant (not a graph input that a caller could override)."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return False
    weight = node.inputs[1]
    return (node.inputs[0] is x and x.const_value is None and weight is not None
            and weight.const_value is not None and not weight.is_graph_input() and len(weight.const_value.shape) == 2)


def _bias_add(matmul):
    """(Add node, b) for the `Add(y, b)` that is MatMul y's only reader, b a 1-D constant of y's width."""
    y = matmul.outputs[0]
    uses = list(y.uses())
    if len(uses) != 1 or y.is_graph_output():  # y itself must survive the fusion
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    if other is y or other is None or other.const_value is None or other.is_graph_input():
        return None
    bias, weight = other.const_value, matmul.inputs[1].const_value
    # Only a plain per-column bias: anything that broadcasts differently would change the shape.
    if tuple(bias.shape) != (weight.shape[1],) or bias.dtype != weight.dtype:
        return None
    return add, bias


# --------------------------------------------------------------------------------------------------
# optimize_for_onnxruntime


def optimize_for_onnxruntime(model: onnx.ModelProto, level: str = "extended") -> onnx.ModelProto:
    """ONNX Runtime's own graph optimiser, run offline on the CPU provider.

    The artifact then ships ORT's fusions (LayerNorm / SkipLayerNorm, Gelu / BiasGelu,
    FusedMatMul, ...) and its sessions start faster. Levels "basic" and "extended" are portable;
    "all" is refused because its layout transforms (NCHWc and the like) are specific to the CPU that
    ran them: let the session apply it at load time instead. The result needs ONNX Runtime
    (contrib ops). Limit: the model is handed over in memory, so it must be under protobuf's 2 GB
    with its weights inside (no external data).
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    if level == "all":
        raise HubertExportError(
            "optimize_for_onnxruntime: level 'all' bakes in layout transforms specific to this machine's CPU: "
            "use level 'extended' offline and let the session apply 'all' at load time"
        )
    if level not in levels:
        raise HubertExportError(f"optimize_for_onnxruntime: unknown level {level!r}: use 'basic' or 'extended'")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise HubertExportError(
            "optimize_for_onnxruntime: the model's weights are in external data, which the offline optimiser "
            "cannot read: load it with onnx.load(path, load_external_data=True), or skip this pass"
        )
    interface = {v.name: v for v in (*model.graph.input, *model.graph.output)}
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # nothing is run: threads would only cost start-up time
    with tempfile.TemporaryDirectory(prefix="hubert-ort-opt-") as scratch:
        target = Path(scratch) / "optimized.onnx"
        options.optimized_model_filepath = str(target)
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise HubertExportError(
                f"ONNX Runtime cannot load the model to optimise it ({str(exc).splitlines()[0][:200]}): "
                "drop optimize_for_onnxruntime from the pass list"
            ) from exc
        optimized = onnx.load(str(target))
    # The optimiser may rewrite the I/O's symbolic dims: the interface stays the exporter's.
    for value in (*optimized.graph.input, *optimized.graph.output):
        if value.name in interface:
            value.CopyFrom(interface[value.name])
    return optimized


# --------------------------------------------------------------------------------------------------
# registry, runner, parity


PASSES: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "fold_constants": fold_constants,
    "fuse_qkv_projections": fuse_qkv_projections,
    "optimize_for_onnxruntime": optimize_for_onnxruntime,
}
# Portable: standard ONNX in, standard ONNX out; fit for every back end.
PORTABLE_PASSES: list[str] = ["fold_constants", "fuse_qkv_projections"]
# The ONNX Runtime FP32 pipeline with `onnxruntime.offline_fusions`: the result uses com.microsoft ops.
ONNXRUNTIME_OFFLINE_PASSES: list[str] = [*PORTABLE_PASSES, "optimize_for_onnxruntime"]


def run_passes(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """Run the named passes in order, logging node counts and time of each; checks after each one
    that the graph's inputs and outputs (names, types, dynamic dims) are unchanged."""
    unknown = [name for name in names if name not in PASSES]
    if unknown:
        raise HubertExportError(f"unknown graph pass {unknown[0]!r}: choose from {', '.join(PASSES)}")
    signature = _io_signature(model)
    for name in names:
        before, fusions = len(model.graph.node), fusion_counts(model)
        start = time.perf_counter()
        model = PASSES[name](model)
        elapsed = time.perf_counter() - start
        fused = fusion_counts(model).get(name, 0) - fusions.get(name, 0)
        extra = f", {fused} fusion{'s' * (fused != 1)}" if name in fusion_counts(model) else ""
        logger.info("pass %s: %d -> %d nodes%s (%.2f s)", name, before, len(model.graph.node), extra, elapsed)
        if _io_signature(model) != signature:
            raise InternalError(
                f"graph pass {name} changed the model's inputs or outputs: drop it from the pass list and report the bug"
            )
    return model


def _io_signature(model: onnx.ModelProto) -> tuple:
    def describe(values: Iterable[onnx.ValueInfoProto]) -> list[tuple]:
        described = []
        for v in values:
            tensor = v.type.tensor_type
            dims = tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in tensor.shape.dim)
            described.append((v.name, tensor.elem_type, dims if tensor.HasField("shape") else None))
        return described

    initializers = {t.name for t in model.graph.initializer}
    # Initializers listed as inputs (old-style overridable weights) are not part of the calling convention.
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return tuple(describe(inputs)), tuple(describe(model.graph.output))

