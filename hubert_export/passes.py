"""Graph passes over the exported ONNX model: each one a pure `onnx.ModelProto -> onnx.ModelProto`.

Every pass copies its input (the caller's model is never changed), keeps the graph's input and
output names and dynamic dimensions, and keeps numerical parity with its input; `run_passes`
checks the first two after each pass and `check_parity` measures the third.

    fold_constants            constant folding, rewrite clean-ups, CSE (onnxscript's optimiser)
    remove_dead_nodes         nodes, initializers, value_info and functions no output needs
    fuse_qkv_projections      three projections of one input -> one wide MatMul (+ Add) + Split
    fuse_gelu                 the erf-GELU subgraph -> one Gelu (com.microsoft, or ai.onnx >= 20)
    optimize_for_onnxruntime  ONNX Runtime's own portable fusions, applied offline

Fusion passes record how many fusions a model carries in its `metadata_props`
(`fusion_counts(model)` reads them), so a build log or a test can tell that a pass really fired.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from hubert_export.errors import EXIT_PARITY_FAILED, HubertExportError

# metadata_props key prefix under which fusion passes record their counts.
FUSION_COUNT_KEY = "hubert_export.fusions."
CONTRIB_DOMAIN = "com.microsoft"
# The first opset with a standard Gelu.
STANDARD_GELU_OPSET = 20

_SQRT2 = math.sqrt(2.0)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise HubertExportError("the ONNX model imports no default (ai.onnx) opset: re-export it with hubert_export.export")


def _is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _graph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name a graph's nodes read, its subgraphs included.

    A superset of its outer-scope references (names defined inside are included too): good enough
    to decide what an outer graph must keep alive, since extra names only keep more.
    """
    names: set[str] = set()
    for node in graph.node:
        names.update(_node_reads(node))
    names.update(o.name for o in graph.output)
    return names


def _node_reads(node: onnx.NodeProto) -> set[str]:
    names = {name for name in node.input if name}
    for sub in _subgraphs(node):
        names |= _graph_reads(sub)
    return names


def _use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many times each value is read: node inputs, subgraph references and graph outputs."""
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                counts[name] = counts.get(name, 0) + 1
        for sub in _subgraphs(node):
            for name in _graph_reads(sub):
                counts[name] = counts.get(name, 0) + 1
    for output in graph.output:
        # Counted generously: a graph output can never be fused away.
        counts[output.name] = counts.get(output.name, 0) + 2
    return counts


class _Constants(Mapping[str, np.ndarray]):
    """The values of a graph's constants (initializers and Constant nodes), read on first use.

    Converting every weight of hubert-base up front costs a second; passes look at a few. An
    initializer that is also a graph input is only a default the caller may override, so it is not
    a constant. Values are read-only views: passes build new tensors, never edit these.
    """

    def __init__(self, graph: onnx.GraphProto) -> None:
        inputs = {i.name for i in graph.input}
        self._tensors: dict[str, onnx.TensorProto | np.ndarray] = {
            t.name: t for t in graph.initializer if t.name not in inputs}
        for node in graph.node:
            if node.op_type == "Constant" and _is_default_domain(node) and len(node.attribute) == 1:
                attr = node.attribute[0]
                if attr.name == "value":
                    self._tensors[node.output[0]] = attr.t
                elif attr.name in _CONSTANT_ATTRIBUTES:
                    dtype, read = _CONSTANT_ATTRIBUTES[attr.name]
                    self._tensors[node.output[0]] = np.array(read(attr), dtype=dtype)
        self._values: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            tensor = self._tensors[name]
            self._values[name] = tensor if isinstance(tensor, np.ndarray) else _tensor_value(tensor)
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        """A constant's shape, without reading its data."""
        tensor = self._tensors[name]
        return tuple(tensor.shape) if isinstance(tensor, np.ndarray) else tuple(tensor.dims)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


_CONSTANT_ATTRIBUTES = {
    "value_float": (np.float32, lambda a: a.f), "value_floats": (np.float32, lambda a: a.floats),
    "value_int": (np.int64, lambda a: a.i), "value_ints": (np.int64, lambda a: a.ints),
}


def _tensor_value(tensor: onnx.TensorProto) -> np.ndarray:
    if tensor.HasField("raw_data") and tensor.data_location != onnx.TensorProto.EXTERNAL:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if dtype.kind in "fiub" and dtype.itemsize in (1, 2, 4, 8) and tensor.data_type != onnx.TensorProto.BFLOAT16:
            # zero-copy view of little-endian raw bytes (ONNX stores raw data little-endian)
            return np.frombuffer(tensor.raw_data, dtype=dtype.newbyteorder("<")).reshape(tuple(tensor.dims))
    return numpy_helper.to_array(tensor)


class _Names:
    """Fresh value / node names that collide with nothing in the graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken: set[str] = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
        self.taken.update(t.name for t in graph.initializer)
        for node in graph.node:
            self.taken.update(node.input)
            self.taken.update(node.output)
            self.taken.add(node.name)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def _delete_where(repeated, doomed: Callable[[object], bool]) -> None:
    """Delete entries in place, last first: rebuilding would copy every weight that stays."""
    for i in reversed([i for i, item in enumerate(repeated) if doomed(item)]):
        del repeated[i]


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def _drop_unused_initializers(graph: onnx.GraphProto, candidates: Iterable[str]) -> None:
    """Remove the candidate initializers that no node or output reads any more (after a fusion)."""
    candidates = set(candidates)
    if candidates:
        read = _graph_reads(graph) | {i.name for i in graph.input}
        _delete_where(graph.initializer, lambda t: t.name in candidates and t.name not in read)


def _drop_value_info_of_missing_values(graph: onnx.GraphProto) -> None:
    """value_info must not describe values a fusion removed: checkers and tools would trip on it."""
    present = {name for node in graph.node for name in node.output}
    _delete_where(graph.value_info, lambda v: v.name not in present)


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
    """Constant folding, onnxscript's safe rewrite rules, initializer dedup and CSE.

    The exporter already runs this optimiser; running it again after our own edits (or on a model
    loaded from elsewhere) folds the shape arithmetic and duplicate subexpressions they leave.
    """
    import onnxscript.optimizer

    try:
        # onnxscript deserialises a ModelProto into its own IR and returns a new proto.
        return onnxscript.optimizer.optimize(_copy(model), num_iterations=1)
    except Exception as exc:  # the optimiser raises many types; the user needs one line
        raise HubertExportError(
            f"constant folding failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
            "drop fold_constants from the pass list"
        ) from exc


# --------------------------------------------------------------------------------------------------
# remove_dead_nodes


def remove_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes no graph output depends on, then the initializers, value_info and local functions
    nobody reads. Graph inputs stay, used or not: they are the model's calling convention."""
    out = _copy(model)
    graph = out.graph
    live = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    # Nodes are topologically sorted (an ONNX requirement), so one backward sweep finds them all.
    for node in reversed(graph.node):
        if any(name and name in live for name in node.output):
            kept.append(node)
            live |= _node_reads(node)
    kept.reverse()
    if len(kept) != len(graph.node):
        _replace_nodes(graph, kept)

    inputs = {i.name for i in graph.input}
    _delete_where(graph.initializer, lambda t: t.name not in live and t.name not in inputs)
    _delete_where(graph.sparse_initializer, lambda t: t.values.name not in live and t.values.name not in inputs)
    defined = inputs | {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    defined |= {n for node in graph.node for n in node.output}
    _delete_where(graph.value_info, lambda v: v.name not in defined)

    _drop_unused_functions(out)
    return out


def _drop_unused_functions(model: onnx.ModelProto) -> None:
    functions = {(f.domain, f.name, getattr(f, "overload", "")): f for f in model.functions}
    if not functions:
        return
    used: set[tuple[str, str, str]] = set()
    pending = [n for n in _all_nodes(model.graph.node)]
    while pending:
        node = pending.pop()
        key = (node.domain, node.op_type, getattr(node, "overload", ""))
        if key in functions and key not in used:
            used.add(key)
            pending.extend(_all_nodes(functions[key].node))
    _delete_where(model.functions, lambda f: (f.domain, f.name, getattr(f, "overload", "")) not in used)


def _all_nodes(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    found = []
    for node in nodes:
        found.append(node)
        for sub in _subgraphs(node):
            found.extend(_all_nodes(sub.node))
    return found


# --------------------------------------------------------------------------------------------------
# fuse_qkv_projections


def fuse_qkv_projections(model: onnx.ModelProto) -> onnx.ModelProto:
    """Three `MatMul(x, W_i)` (+ `Add(., b_i)`) on one input -> one `MatMul(x, [W_q|W_k|W_v])`
    (+ one `Add`) and a `Split` whose outputs keep the original names.

    One wide GEMM runs closer to the CPU's matrix-multiply ceiling than three narrow ones, and
    reads the activations once. Groups of exactly three are fused: that is attention's q/k/v; two
    or four projections of one input are some other structure and are left alone. Biases are
    fused when all three projections have one; otherwise the existing Adds stay after the Split.
    The number of fusions is recorded (see `fusion_counts`).
    """
    out = _copy(model)
    graph = out.graph
    nodes = list(graph.node)
    constants = _Constants(graph)
    uses = _use_counts(graph)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)

    groups: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        if node.op_type != "MatMul" or not _is_default_domain(node) or len(node.input) != 2:
            continue
        x, w = node.input
        if x in constants or w not in constants or len(constants.shape(w)) != 2:
            continue
        groups.setdefault(x, []).append(i)

    opset = _default_opset(out)
    names = _Names(graph)
    insert_at: dict[int, list[onnx.NodeProto]] = {}
    remove: set[int] = set()
    new_initializers: list[onnx.TensorProto] = []
    maybe_unused: set[str] = set()
    for x, members in groups.items():
        if len(members) != 3:
            continue
        matmuls = [nodes[i] for i in members]
        weights = [constants[m.input[1]] for m in matmuls]
        if len({w.shape[0] for w in weights}) != 1 or len({w.dtype for w in weights}) != 1:
            continue
        biases = [_bias_add(nodes, i, consumers, uses, constants) for i in members]
        with_bias = all(b is not None for b in biases)

        stem = matmuls[0].name or x
        w_name = names(f"{x}_qkv_weight")
        new_initializers.append(numpy_helper.from_array(np.concatenate(weights, axis=1), w_name))
        fused = names(f"{x}_qkv")
        replacement = [onnx.helper.make_node("MatMul", [x, w_name], [fused], name=names(f"{stem}_qkv"))]
        if with_bias:
            b_name = names(f"{x}_qkv_bias")
            new_initializers.append(numpy_helper.from_array(np.concatenate([b for _, b in biases]), b_name))
            biased = names(f"{x}_qkv_biased")
            replacement.append(onnx.helper.make_node("Add", [fused, b_name], [biased], name=names(f"{stem}_qkv_bias")))
            fused = biased
            split_outputs = [nodes[i].output[0] for i, _ in biases]
            for i, _ in biases:
                remove.add(i)
                maybe_unused.update(nodes[i].input)
        else:
            split_outputs = [m.output[0] for m in matmuls]
        sizes = [int(w.shape[1]) for w in weights]
        split_name = names(f"{stem}_qkv_split")
        if opset >= 13:
            sizes_name = names(f"{x}_qkv_sizes")
            new_initializers.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), sizes_name))
            replacement.append(onnx.helper.make_node("Split", [fused, sizes_name], split_outputs, axis=-1,
                                                     name=split_name))
        else:
            replacement.append(onnx.helper.make_node("Split", [fused], split_outputs, axis=-1, split=sizes,
                                                     name=split_name))
        # x is defined before the first projection, so the fused nodes may sit where it was.
        insert_at[members[0]] = replacement
        remove.update(members)
        maybe_unused.update(m.input[1] for m in matmuls)

    if insert_at:
        rebuilt: list[onnx.NodeProto] = []
        for i, node in enumerate(nodes):
            rebuilt.extend(insert_at.get(i, []))
            if i not in remove:
                rebuilt.append(node)
        _replace_nodes(graph, rebuilt)
        graph.initializer.extend(new_initializers)
        _drop_unused_initializers(graph, maybe_unused)
        _drop_constant_nodes_nobody_reads(graph, maybe_unused)
        _drop_value_info_of_missing_values(graph)
    _record_fusions(out, "fuse_qkv_projections", len(insert_at))
    return out


def _bias_add(nodes: list[onnx.NodeProto], matmul: int, consumers: dict[str, list[int]],
              uses: dict[str, int], constants: dict[str, np.ndarray]) -> tuple[int, np.ndarray] | None:
    """(index, b) of the `Add(y, b)` that is MatMul y's only reader, b a 1-D constant of y's width."""
    y = nodes[matmul].output[0]
    if uses.get(y, 0) != 1 or len(consumers.get(y, [])) != 1:
        return None
    index = consumers[y][0]
    add = nodes[index]
    if add.op_type != "Add" or not _is_default_domain(add) or len(add.input) != 2:
        return None
    other = add.input[1] if add.input[0] == y else add.input[0]
    if other == y or other not in constants:
        return None
    bias = constants[other]
    weight = constants[nodes[matmul].input[1]]
    # Only a plain per-column bias: anything that broadcasts differently would change the shape.
    if bias.shape != (weight.shape[1],) or bias.dtype != weight.dtype:
        return None
    return index, bias


def _drop_constant_nodes_nobody_reads(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Constant nodes that fed a fused node (weights given as Constant rather than initializer)."""
    read = _graph_reads(graph)
    _delete_where(graph.node, lambda n: n.op_type == "Constant" and n.output[0] in candidates and n.output[0] not in read)


# --------------------------------------------------------------------------------------------------
# fuse_gelu


def fuse_gelu(model: onnx.ModelProto, domain: str | None = CONTRIB_DOMAIN) -> onnx.ModelProto:
    """The exact (erf) GELU subgraph `x * 0.5 * (1 + erf(x / sqrt(2)))` -> one `Gelu` node.

    One node instead of five: one pass over the activations instead of five, and the kernel the
    runtime has for it. `domain="com.microsoft"` gives ONNX Runtime's contrib Gelu (ONNX Runtime
    only); `domain=""` the standard Gelu, which needs opset >= 20; `domain=None` picks the standard
    op when the model's opset allows it and the contrib op otherwise. Matches Div by sqrt(2) or Mul
    by 1/sqrt(2), either operand order of every Add and Mul, and the 0.5 applied before or after
    the product with x. The number of fusions is recorded (see `fusion_counts`).
    """
    opset = _default_opset(model)
    if domain is None:
        domain = "" if opset >= STANDARD_GELU_OPSET else CONTRIB_DOMAIN
    if domain == "ai.onnx":
        domain = ""
    if domain not in ("", CONTRIB_DOMAIN):
        raise HubertExportError(f"fuse_gelu: unknown domain {domain!r}: use {CONTRIB_DOMAIN!r} or '' (standard opset >= 20)")
    if domain == "" and opset < STANDARD_GELU_OPSET:
        raise HubertExportError(
            f"fuse_gelu: the standard Gelu needs opset >= {STANDARD_GELU_OPSET} but the model is opset {opset}: "
            f"export with opset {STANDARD_GELU_OPSET} or use domain={CONTRIB_DOMAIN!r}"
        )

    out = _copy(model)
    graph = out.graph
    constants = _Constants(graph)
    uses = _use_counts(graph)
    producers = {name: node for node in graph.node for name in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    matcher = _GeluMatcher(constants, uses, producers, consumers)

    names = _Names(graph)
    replacement: dict[int, onnx.NodeProto] = {}  # id(final node) -> Gelu
    removed: set[int] = set()
    maybe_unused: set[str] = set()
    for node in graph.node:
        if node.op_type != "Erf" or not _is_default_domain(node):
            continue
        match = matcher.match(node)
        if match is None or any(id(n) in removed for n in match[1]):
            continue
        x, matched = match
        final = matched[-1]
        attrs = {"approximate": "none"} if domain == "" else {}
        gelu = onnx.helper.make_node("Gelu", [x], [final.output[0]], name=names(f"{final.name or x}_gelu"),
                                     domain=domain, **attrs)
        replacement[id(final)] = gelu
        removed.update(id(n) for n in matched)
        for n in matched:
            maybe_unused.update(n.input)

    if replacement:
        rebuilt = []
        for node in graph.node:
            if id(node) in replacement:
                # The last node of the pattern: x and everything before it are already defined.
                rebuilt.append(replacement[id(node)])
            elif id(node) not in removed:
                rebuilt.append(node)
        del graph.node[:]
        graph.node.extend(rebuilt)
        _drop_unused_initializers(graph, maybe_unused)
        _drop_constant_nodes_nobody_reads(graph, maybe_unused)
        _drop_value_info_of_missing_values(graph)
        if domain == CONTRIB_DOMAIN and not any(o.domain == CONTRIB_DOMAIN for o in out.opset_import):
            out.opset_import.add(domain=CONTRIB_DOMAIN, version=1)
    _record_fusions(out, "fuse_gelu", len(replacement))
    return out


class _GeluMatcher:
    def __init__(self, constants: dict[str, np.ndarray], uses: dict[str, int],
                 producers: dict[str, onnx.NodeProto], consumers: dict[str, list[onnx.NodeProto]]) -> None:
        self.constants = constants
        self.uses = uses
        self.producers = producers
        self.consumers = consumers

    def match(self, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
        """(x, the pattern's nodes with the output node last) when `erf` is the heart of a GELU."""
        scale = self.producers.get(erf.input[0])
        if scale is None or not self._sole_reader(scale.output[0], erf):
            return None
        if self._op(scale, "Div") and self._is(scale.input[1], _SQRT2):
            x = scale.input[0]
        elif self._op(scale, "Mul"):
            x = self._other_than_constant(scale, 1 / _SQRT2)
        else:
            return None
        if x is None or x in self.constants:
            return None
        add = self._sole_consumer(erf.output[0], "Add")
        if add is None or self._operand_other_than(add, erf.output[0], 1.0) is None:
            return None
        mul = self._sole_consumer(add.output[0], "Mul")
        if mul is None:
            return None
        other = mul.input[1] if mul.input[0] == add.output[0] else mul.input[0]
        if other == add.output[0]:
            return None
        if self._is(other, 0.5):  # 0.5 * (1 + erf), then * x
            last = self._sole_consumer(mul.output[0], "Mul")
            if last is None or set(last.input) != {mul.output[0], x}:
                return None
            return x, [scale, erf, add, mul, last]
        if other == x:  # x * (1 + erf), then * 0.5
            last = self._sole_consumer(mul.output[0], "Mul")
            if last is None or self._operand_other_than(last, mul.output[0], 0.5) is None:
                return None
            return x, [scale, erf, add, mul, last]
        half = self.producers.get(other)  # (x * 0.5) * (1 + erf)
        if half is None or not self._op(half, "Mul") or not self._sole_reader(other, mul):
            return None
        if self._other_than_constant(half, 0.5) != x:
            return None
        return x, [scale, erf, add, half, mul]

    @staticmethod
    def _op(node: onnx.NodeProto, op_type: str) -> bool:
        return node.op_type == op_type and _is_default_domain(node) and len(node.input) == 2

    def _sole_reader(self, name: str, node: onnx.NodeProto) -> bool:
        readers = self.consumers.get(name, [])
        return self.uses.get(name, 0) == 1 and len(readers) == 1 and readers[0] is node

    def _sole_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        readers = self.consumers.get(name, [])
        if self.uses.get(name, 0) != 1 or len(readers) != 1 or not self._op(readers[0], op_type):
            return None
        return readers[0]

    def _is(self, name: str, target: float) -> bool:
        value = self.constants.get(name)
        # One element only: a larger constant could broadcast the result to a new shape.
        if value is None or value.size != 1 or value.ndim > 1 or not np.issubdtype(value.dtype, np.floating):
            return False
        # 1e-6 for float32 and wider; a float16 constant cannot get that close to sqrt(2).
        tolerance = max(1e-6, 2 * float(np.finfo(value.dtype).eps) * abs(target))
        return abs(float(value.reshape(())) - target) <= tolerance

    def _other_than_constant(self, node: onnx.NodeProto, target: float) -> str | None:
        """The operand of a binary node that is not the constant `target`."""
        a, b = node.input
        if self._is(b, target):
            return a
        if self._is(a, target):
            return b
        return None

    def _operand_other_than(self, node: onnx.NodeProto, name: str, target: float) -> str | None:
        """`name` when node is `op(name, target)` in either order."""
        a, b = node.input
        if (a == name and self._is(b, target)) or (b == name and self._is(a, target)):
            return name
        return None


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
    "remove_dead_nodes": remove_dead_nodes,
    "fuse_qkv_projections": fuse_qkv_projections,
    "fuse_gelu": fuse_gelu,
    "optimize_for_onnxruntime": optimize_for_onnxruntime,
}
# Portable: standard ONNX in, standard ONNX out; fit for every back end.
PORTABLE_PASSES: list[str] = ["fold_constants", "remove_dead_nodes", "fuse_qkv_projections"]
# The ONNX Runtime FP32 pipeline with `onnxruntime.offline_fusions`: the result uses com.microsoft ops.
ONNXRUNTIME_OFFLINE_PASSES: list[str] = [*PORTABLE_PASSES, "fuse_gelu", "optimize_for_onnxruntime"]


def run_passes(model: onnx.ModelProto, names: Sequence[str],
               log: Callable[[str], None] = logging.getLogger(__name__).info) -> onnx.ModelProto:
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
        log(f"pass {name}: {before} -> {len(model.graph.node)} nodes{extra} ({elapsed:.2f} s)")
        if _io_signature(model) != signature:
            raise HubertExportError(
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


def check_parity(before: onnx.ModelProto, after: onnx.ModelProto, inputs: dict[str, np.ndarray],
                 atol: float = 1e-5) -> float:
    """Max abs difference between the two models' outputs on `inputs`, run by ONNX Runtime on CPU.

    Raises (exit code EXIT_PARITY_FAILED) when outputs differ in name or shape or by more than atol.
    """
    ref, new = _run_ort(before, inputs), _run_ort(after, inputs)
    if list(ref) != list(new):
        raise HubertExportError(f"outputs changed from {list(ref)} to {list(new)}: the pass broke the graph's interface",
                                exit_code=EXIT_PARITY_FAILED)
    worst = 0.0
    for name, expected in ref.items():
        actual = new[name]
        if actual.shape != expected.shape:
            raise HubertExportError(f"output {name} changed shape from {expected.shape} to {actual.shape}",
                                    exit_code=EXIT_PARITY_FAILED)
        if expected.size:
            worst = max(worst, float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))))
    if not worst <= atol:  # also catches NaN
        raise HubertExportError(f"outputs differ by {worst:.3g} (max abs), more than the allowed {atol:.3g}",
                                exit_code=EXIT_PARITY_FAILED)
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
