"""TensorRT: FP16 (default) or FP32 engines, built on and for one NVIDIA GPU, TensorRT 10 or later.

The artifact is `model.plan`, a serialised engine. It is specific to the TensorRT version and the
GPU's compute capability it was built with: both are recorded in the manifest and checked on load.

Build: the portable ONNX graph (the common passes only, never ONNX Runtime's contrib fusions) is
prepared by pure ONNX -> ONNX steps that run without TensorRT (`prepare_for_tensorrt`): every node
named by its module scope (`name_nodes_by_scope`, so that precision patterns select the same
layers whichever exporter wrote the graph), then checked against the ONNX-TensorRT parser's
operator table (`check_tensorrt_support`). For FP16 the precision policy is written into the graph
itself (`passes.fp16_with_fp32_islands`: a half graph, the layers matching the recipe's
`tensorrt.fp32_layers` in FP32 between Cast nodes; the policy and its evidence:
`hubert_export.precision`), and TensorRT builds it as a strongly typed network: every layer runs
in the type the graph gives it, as it would on ONNX Runtime. The weakly typed builder
(BuilderFlag.FP16 with per-layer pins under OBEY_PRECISION_CONSTRAINTS) is deprecated since
TensorRT 10.12 and removed in 11; it is not kept, since nothing measured it faster here (no GPU).
TF32 (on by default in TensorRT on Ampere and newer) is cleared unless `tensorrt.tf32` asks for
it: an FP32 engine, or an FP32 island, then computes in FP32 (`builder_flags`). One optimisation
profile per shape range is added, and the engine is built with a timing cache that persists
between builds:

    recipe tensorrt.timing_cache, or by default
    ${XDG_CACHE_HOME:-~/.cache}/hubert-export/tensorrt/trt<version>-sm<major><minor>.timing-cache

Outside the artifact (so --overwrite and new output directories reuse it) and keyed by TensorRT
version and compute capability, because timing data from another version or GPU is invalid.

The runner uses TensorRT's own Python API and cuda-python (the `[tensorrt]` extra installs both;
no CUDA build of torch is needed): device buffers are allocated once and grown only when a larger
shape arrives, `set_input_shape` is checked, and each call records its time with and without the
host<->device copies (`last_timing`), as trtexec reports both.

Nothing here that needs TensorRT or a GPU could be run where it was written: the engine build and
runner are written against TensorRT 10's documented Python API and cuda-python's runtime
bindings, and are exercised only by the GPU-marked tests.
"""

from __future__ import annotations

import ast
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hubert_export.artifact import Artifact
from hubert_export.backends import Backend, BackendBuild, BuildInputs
from hubert_export.contract import InputContract
from hubert_export.errors import HubertExportError, InternalError
from hubert_export.passes import PORTABLE_PASSES, fp16_with_fp32_islands
from hubert_export.audio import MIN_SAMPLES
from hubert_export.recipes import Recipe, Shape, ShapeRange, Shapes
from hubert_export.runner import Runner

log = logging.getLogger(__name__)
MODEL_NAME = "model.plan"
PREPARED_NAME = "tensorrt.onnx"

# Operators the ONNX-TensorRT parser imports (onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15,
# rows marked Y; it reads opsets 9..24, TensorRT 10.0 read 9..20). Per-op restrictions that matter
# for exported graphs are checked separately (`STATIC_INPUTS`); the rest the parser reports itself.
SUPPORTED_OPSETS = (9, 24)
OPSET_TENSORRT_10_0 = 20
SUPPORTED_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN
RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Inputs the parser needs as build-time constants ("`axes` must be an initializer" and the like).
STATIC_INPUTS: dict[str, tuple[int, str]] = {
    **{op: (1, "axes") for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                   "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                                   "Squeeze", "Unsqueeze")},
    "CumSum": (1, "axis"), "TopK": (1, "K"), "OneHot": (1, "depth"),
}


# ------------------------------------------------------------------------------ availability
def check_available(recipe: Recipe) -> None:
    """Refuse, before any work, a build this machine cannot do (build.py calls it first)."""
    if recipe.precision not in ("fp16", "fp32"):
        raise HubertExportError(f"--target tensorrt builds fp16 or fp32 engines, not {recipe.precision}: "
                                "pass --precision fp16 (or fp32); for INT8 use --target onnx or openvino")
    missing = _missing_requirement()
    if missing:
        raise HubertExportError(f"--target tensorrt needs TensorRT and an NVIDIA GPU: this machine has {missing}; "
                                "use --target onnx or openvino here")


def _missing_requirement() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "no tensorrt package (pip install 'hubert-export[tensorrt]' on a GPU machine)"
    except OSError as exc:  # the wheel is there but its CUDA libraries are not
        return f"a tensorrt package whose libraries do not load ({str(exc).splitlines()[0][:120]})"
    try:
        cudart = _cudart()
    except ImportError:
        return "no cuda-python package (pip install 'hubert-export[tensorrt]' on a GPU machine)"
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess:
        return f"no usable CUDA GPU (cudaGetDeviceCount: {getattr(error, 'name', error)})"
    if count == 0:
        return "no CUDA GPU visible (cudaGetDeviceCount: 0 devices)"
    return None


def _cudart():
    """cuda-python's runtime bindings (cuda.bindings.runtime since 12.6, cuda.cudart before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def _cuda_check(result: tuple, what: str) -> Any:
    """cuda-python returns (error, *values): raise on an error, return the value(s)."""
    cudart = _cudart()
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise HubertExportError(f"CUDA {what} failed ({getattr(error, 'name', error)}): check the GPU and driver "
                                "(nvidia-smi), or free GPU memory")
    return values[0] if len(values) == 1 else (values or None)


# ------------------------------------------------------------------------------ ONNX preparation
def _scope_from_metadata(node: onnx.NodeProto) -> str | None:
    """The module scope the dynamo exporter records: name_scopes ['', 'model', 'model.hubert', ..., fx name]."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            # skip the exporter's own pseudo-scopes (`_empty_nn_module_stack_from_metadata_hook`)
            modules = [s for s in scopes[:-1] if isinstance(s, str) and s and not s.startswith("_")]
            from hubert_export.precision import module_scope  # torch: the builder's side only

            return module_scope(modules[-1], root="") if modules else None
    return None


def name_nodes_by_scope(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique `<module scope>/<OpType>` name, as the TorchScript exporter does.

    TorchScript's names (`/model/hubert/encoder/layers.0/layer_norm/LayerNormalization`) are kept;
    dynamo nodes (`node_layer_norm_3`) take the scope the exporter recorded in their metadata;
    nodes a pass created without either take the scope of a neighbour (consumers first). TensorRT
    names its layers after these, so fp32_layers patterns select the same layers for both exporters.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    scopes: list[str | None] = []
    for node in nodes:
        if node.name.startswith("/") and "/" in node.name[1:]:
            scopes.append(node.name.rsplit("/", 1)[0])
        else:
            scopes.append(_scope_from_metadata(node))
    producers = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    # Consumers first, to a fixpoint: a fused projection fed by a LayerNorm belongs to the attention
    # that reads it, not to the norm. Then producers for what is still unnamed (graph outputs).
    for directions in (("consumers",), ("consumers", "producers")):
        changed = True
        while changed:
            changed = False
            for i, node in enumerate(nodes):
                if scopes[i] is not None:
                    continue
                near = [j for o in node.output for j in consumers.get(o, [])]
                if "producers" in directions:
                    near += [producers[x] for x in node.input if x in producers]
                found = next((scopes[j] for j in near if scopes[j] is not None), None)
                if found is not None:
                    scopes[i], changed = found, True
    used: set[str] = set()
    for node, scope in zip(nodes, scopes):
        keep = node.name.startswith("/") and node.name not in used
        base = node.name if keep else f"{scope or '/model'}/{node.op_type}"
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        used.add(name)
    return out


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_tensorrt_support(model: onnx.ModelProto) -> None:
    """Raise one HubertExportError naming every node TensorRT's ONNX parser would refuse."""
    opset = _default_opset(model)
    low, high = SUPPORTED_OPSETS
    if not low <= opset <= high:
        raise HubertExportError(f"the ONNX model uses opset {opset}; TensorRT's parser reads opsets {low}..{high}: "
                                "re-export with --opset 18")
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    problems: list[str] = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.domain}.{node.op_type} ({node.name}: a non-standard operator, e.g. an ONNX "
                            "Runtime fusion; build from the portable export)")
        elif node.op_type not in SUPPORTED_OPS:
            problems.append(f"{node.op_type} ({node.name})")
        elif node.op_type in STATIC_INPUTS:
            index, what = STATIC_INPUTS[node.op_type]
            if len(node.input) > index and node.input[index] and node.input[index] not in constants:
                problems.append(f"{node.op_type} ({node.name}) with a computed `{what}`, which TensorRT needs as "
                                "a constant (run the fold_constants pass)")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise HubertExportError(f"TensorRT's ONNX parser does not support {len(problems)} node(s) of this model: "
                                f"{shown}; re-export with the default exporter, or use --target onnx")


def prepare_for_tensorrt(model: onnx.ModelProto) -> onnx.ModelProto:
    """The TensorRT input: the portable graph with scope names, checked against the parser's table.

    Shapes TensorRT must know at build time were folded by the common `fold_constants` pass; a
    constant input the parser needs that is still computed is reported by the check.
    """
    prepared = name_nodes_by_scope(model)
    check_tensorrt_support(prepared)
    return prepared


def fp32_nodes(model: onnx.ModelProto, patterns: Iterable[str]) -> list[str]:
    """Names of the nodes a precision policy pins to FP32 (TensorRT layers carry the same names)."""
    from hubert_export.precision import compile_patterns, matches  # torch: the builder's side only

    compiled = compile_patterns(patterns)
    return [n.name for n in model.graph.node if n.op_type != "Constant" and matches(n.name, compiled)]


def fp16_policy_graph(model: onnx.ModelProto, patterns: Iterable[str]) -> tuple[onnx.ModelProto, list[str]]:
    """The FP16 graph a strongly typed engine is built from (and ONNX Runtime's CUDA FP16 runs): the
    nodes matching `patterns` in FP32, the rest in half. Returns it and the pinned node names."""
    named = name_nodes_by_scope(model)
    pinned = fp32_nodes(named, patterns)
    return fp16_with_fp32_islands(named, pinned), pinned


# ------------------------------------------------------------------------------ profiles
def _validated(r: ShapeRange, label: str) -> ShapeRange:
    for dim in ("batch", "samples"):
        lo, mid, hi = (getattr(getattr(r, s), dim) for s in ("min", "opt", "max"))
        if not lo <= mid <= hi:
            raise HubertExportError(f"{label}: {dim} min {lo}, opt {mid}, max {hi}: min <= opt <= max is required")
    if r.min.batch < 1:
        raise HubertExportError(f"{label}: batch must be at least 1, got {r.min.batch}")
    if r.min.samples < MIN_SAMPLES:
        raise HubertExportError(f"{label}: min samples {r.min.samples} is below HuBERT's receptive field of "
                                f"{MIN_SAMPLES} samples: raise --min-shape")
    return r


def shape_ranges(shapes: Shapes) -> list[ShapeRange]:
    """The engine's optimisation profiles: the main range first (so that every accepted input has one),
    then the recipe's extra `profiles`, each validated and inside the main range."""
    main = _validated(shapes.range, "shapes")
    ranges = [main]
    for i, profile in enumerate(shapes.profiles):
        _validated(profile, f"shapes.profiles[{i}]")
        for s in (profile.min, profile.max):
            if not main.contains(s.batch, s.samples):
                raise HubertExportError(f"shapes.profiles[{i}]: {s.batch}x{s.samples} lies outside shapes.min..max: "
                                        "widen the main range or shrink the profile")
        ranges.append(profile)
    return ranges


def optimization_profiles(shapes: Shapes, input_names: Sequence[str]
                          ) -> list[dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]]:
    """Per profile, {input: ((min), (opt), (max))}: attention_mask takes input_values' shapes."""
    unknown = [n for n in input_names if n not in ("input_values", "attention_mask")]
    if unknown:
        raise HubertExportError(f"the ONNX model has unexpected input(s) {', '.join(unknown)}: re-export it")
    return [{name: tuple((s.batch, s.samples) for s in (r.min, r.opt, r.max)) for name in input_names}
            for r in shape_ranges(shapes)]


def select_profile(ranges: Sequence[ShapeRange], batch: int, samples: int) -> int:
    """The tightest profile holding (batch, samples): its kernels were tuned nearest that shape."""
    holding = [i for i, r in enumerate(ranges) if r.contains(batch, samples)]
    if not holding:
        raise HubertExportError(f"no optimisation profile of this engine accepts batch {batch} x {samples} samples")
    return min(holding, key=lambda i: ((ranges[i].max.batch - ranges[i].min.batch + 1)
                                       * (ranges[i].max.samples - ranges[i].min.samples + 1), i))


# ------------------------------------------------------------------------------ environment
def timing_cache_path(recipe: Recipe, trt_version: str, compute_capability: str) -> Path:
    if recipe.tensorrt.timing_cache is not None:
        return Path(recipe.tensorrt.timing_cache).expanduser()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    sm = compute_capability.replace(".", "")
    return root / "hubert-export" / "tensorrt" / f"trt{trt_version}-sm{sm}.timing-cache"


def current_environment() -> dict[str, str]:
    """TensorRT version and GPU of this machine (the current CUDA device), as the manifest records them."""
    import tensorrt as trt

    cudart = _cudart()
    device = _cuda_check(cudart.cudaGetDevice(), "cudaGetDevice")
    properties = _cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = properties.name
    name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
    return {"tensorrt": trt.__version__, "gpu": name,
            "compute_capability": f"{properties.major}.{properties.minor}"}


def check_engine_compatible(recorded: dict[str, Any], current: dict[str, str]) -> None:
    """Refuse an engine this machine cannot run: another TensorRT version or GPU architecture."""
    for key in ("tensorrt", "compute_capability"):
        if not isinstance(recorded.get(key), str):
            raise HubertExportError(f"the manifest's backend section lacks {key!r} (damaged or hand-edited?): "
                                    "rebuild the artifact")
    if recorded["tensorrt"] != current["tensorrt"]:
        raise HubertExportError(f"this engine was built with TensorRT {recorded['tensorrt']} and this machine has "
                                f"TensorRT {current['tensorrt']}; engines only load in the version that built them: "
                                "rebuild the artifact here (hubert-export --target tensorrt) or install that version")
    if recorded["compute_capability"] != current["compute_capability"]:
        raise HubertExportError(f"this engine was built for a GPU of compute capability "
                                f"{recorded['compute_capability']} ({recorded.get('gpu', 'unknown GPU')}) and this "
                                f"GPU ({current.get('gpu')}) is "
                                f"{current['compute_capability']}: rebuild the artifact on this GPU")


# ------------------------------------------------------------------------------ build
def network_flags() -> list[str]:
    """NetworkDefinitionCreationFlag names: strongly typed, so the graph's Casts are the precision policy
    (TensorRT 10 needs no EXPLICIT_BATCH: it is always explicit and the flag is deprecated; TensorRT 11
    types every network strongly)."""
    return ["STRONGLY_TYPED"]


def builder_flags(recipe: Recipe) -> dict[str, list[str]]:
    """BuilderFlag names to set and to clear on the build's config. Precision comes from the graph
    (strongly typed networks refuse FP16/BF16/INT8 flags); TF32, which TensorRT turns on by default
    on Ampere and newer, is cleared unless the recipe's `tensorrt.tf32` asks for it: with it, an
    FP32 engine or FP32 island multiplies with 10-bit mantissas and misses the FP32 gate."""
    return {"set": ["TF32"], "clear": []} if recipe.tensorrt.tf32 else {"set": [], "clear": ["TF32"]}


def build_engine(inputs: BuildInputs) -> BackendBuild:
    import tensorrt as trt

    recipe = inputs.recipe
    env = current_environment()
    prepared = prepare_for_tensorrt(inputs.graph.model())
    pinned: list[str] = []
    if recipe.precision == "fp16":
        prepared, pinned = fp16_policy_graph(prepared, recipe.tensorrt.fp32_layers)
        log.info(f"FP16 graph with {len(pinned)} nodes kept in FP32")
    prepared_path = inputs.work_dir / PREPARED_NAME
    from hubert_export.export import save_onnx  # torch: the builder's side only

    save_onnx(prepared, prepared_path)
    profiles = optimization_profiles(recipe.shapes, inputs.input_names)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    creation = 0
    for name in network_flags():  # TensorRT 11 is strongly typed always; its flag may be gone
        flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        creation |= 0 if flag is None else 1 << int(flag)
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(prepared_path)):  # from a file: external weights resolve beside it
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        opset = _default_opset(prepared)
        hint = (f"; this TensorRT may predate opset {opset} (10.0 reads up to {OPSET_TENSORRT_10_0}): try --opset 18"
                if opset > OPSET_TENSORRT_10_0 else "")
        raise HubertExportError(f"TensorRT {trt.__version__} could not parse the ONNX model ({len(errors)} error(s): "
                                f"{' | '.join((e.splitlines() or [''])[0][:200] for e in errors[:3])}){hint}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(recipe.tensorrt.workspace_gb * (1 << 30)))
    config.builder_optimization_level = recipe.tensorrt.builder_optimization_level
    flags = builder_flags(recipe)
    for name in flags["set"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in flags["clear"]:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)

    cache_path = timing_cache_path(recipe, env["tensorrt"], env["compute_capability"])
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.info(f"timing cache {cache_path} is damaged or from another TensorRT/GPU: starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    log.info(f"building the TensorRT engine ({env['gpu']}, strongly typed, timing cache {cache_path})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        # The graph parsed and every node is in the parser's table: a failure here is ours to fix (exit 3).
        raise InternalError("TensorRT could not build an engine from a graph it parsed (see its messages above): "
                            "try a larger tensorrt.workspace_gb or a smaller --max-shape, and report the bug")
    (inputs.out_dir / MODEL_NAME).write_bytes(bytes(serialized))
    _save_timing_cache(config.get_timing_cache(), cache_path)
    ranges = shape_ranges(recipe.shapes)
    return BackendBuild({
        "files": [MODEL_NAME], "tensorrt": env["tensorrt"], "gpu": env["gpu"],
        "compute_capability": env["compute_capability"], "network": "strongly typed",
        "builder_flags": flags, "profiles": [r.to_dict() for r in ranges],
        "fp32_layers": list(recipe.tensorrt.fp32_layers) if recipe.precision == "fp16" else [],
        "fp32_layer_count": len(pinned), "workspace_gb": recipe.tensorrt.workspace_gb,
        "builder_optimization_level": recipe.tensorrt.builder_optimization_level, "timing_cache": str(cache_path),
    })


def _save_timing_cache(cache, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_bytes(bytes(cache.serialize()))
        os.replace(temp, path)  # concurrent builds: each replaces the file whole
    except OSError as exc:  # a read-only cache directory costs build time, not the build
        log.info(f"timing cache not saved to {path} ({exc.strerror})")


# ------------------------------------------------------------------------------ runner
class _DeviceBuffer:
    """One CUDA allocation reused across calls: reallocated only when a larger tensor arrives."""

    def __init__(self) -> None:
        self.pointer = 0
        self.capacity = 0

    def fit(self, nbytes: int) -> int:
        if nbytes > self.capacity:
            self.free()
            self.pointer = _cuda_check(_cudart().cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self.capacity = nbytes
        return int(self.pointer)

    def free(self) -> None:
        if self.capacity:
            _cuda_check(_cudart().cudaFree(self.pointer), "cudaFree")
            self.pointer, self.capacity = 0, 0


class TensorRtRunner(Runner):
    """A deserialised engine run on one CUDA stream with cuda-python: numpy in, numpy out, device
    buffers kept between calls. `last_timing` holds the last call's seconds with the host<->device
    copies ("total") and of the engine alone between CUDA events ("compute")."""

    def __init__(self, plan_path: Path, section: dict[str, Any], contract: InputContract) -> None:
        self.name = "tensorrt"
        self.plan_path = plan_path
        self.section = section
        self.contract = contract
        self.ranges = [ShapeRange(*(Shape(int(p[s]["batch"]), int(p[s]["samples"])) for s in ("min", "opt", "max")))
                       for p in section.get("profiles", [])] or [contract.shape_range]
        self.last_timing: dict[str, float] = {}

    def _activate(self) -> None:
        import tensorrt as trt

        check_engine_compatible(self.section, current_environment())
        cudart = _cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise HubertExportError(f"TensorRT cannot deserialise {self.plan_path.name}: the file is corrupt or was "
                                    "modified; rebuild the artifact")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.buffers = {n: _DeviceBuffer() for n in names}
        self.stream = _cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.events = [_cuda_check(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(2)]
        self.profile = 0

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = _cudart()
        self.contract.check(inputs)
        batch, samples = inputs["input_values"].shape
        start = time.perf_counter()
        profile = select_profile(self.ranges, batch, samples) if self.ranges else 0
        if profile != self.profile:
            if not self.context.set_optimization_profile_async(profile, int(self.stream)):
                raise InternalError(f"TensorRT refused optimisation profile {profile} for batch {batch} x {samples} "
                                    "samples: report the bug")
            self.profile = profile
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            host = np.ascontiguousarray(inputs[name], dtype=self.dtypes[name])
            if not self.context.set_input_shape(name, host.shape):
                raise HubertExportError(f"TensorRT refused input {name} of shape {list(host.shape)} (outside the "
                                        f"engine's profile {profile}): pass an input inside the artifact's shape range")
            pointer = self.buffers[name].fit(host.nbytes)
            _cuda_check(cudart.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, to_device, self.stream),
                        "copy to the GPU")
            self.context.set_tensor_address(name, pointer)
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise InternalError(f"TensorRT left output {name} with an unresolved shape {list(shape)}: report the bug")
            outputs[name] = np.empty(shape, dtype=self.dtypes[name])
            self.context.set_tensor_address(name, self.buffers[name].fit(outputs[name].nbytes))
        _cuda_check(cudart.cudaEventRecord(self.events[0], self.stream), "cudaEventRecord")
        if not self.context.execute_async_v3(int(self.stream)):
            raise HubertExportError(f"TensorRT failed to run batch {batch} x {samples} samples (see its messages)")
        _cuda_check(cudart.cudaEventRecord(self.events[1], self.stream), "cudaEventRecord")
        for name, host in outputs.items():
            _cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, self.buffers[name].pointer, host.nbytes, to_host,
                                               self.stream), "copy from the GPU")
        _cuda_check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        compute_ms = _cuda_check(cudart.cudaEventElapsedTime(self.events[0], self.events[1]), "cudaEventElapsedTime")
        self.last_timing = {"total": time.perf_counter() - start, "compute": compute_ms / 1e3}
        return {name: out.astype(np.float32, copy=False) for name, out in outputs.items()}

    def _deactivate(self) -> None:
        cudart = _cudart()
        for buffer in self.buffers.values():
            buffer.free()
        for event in self.events:
            cudart.cudaEventDestroy(event)
        cudart.cudaStreamDestroy(self.stream)
        self.context = self.engine = self.runtime = None


class TensorRtBackend(Backend):
    target = "tensorrt"

    def check_available(self, recipe: Recipe) -> None:
        check_available(recipe)

    def graph_passes(self, recipe: Recipe) -> list[str]:
        # Folded shape arithmetic: less for the ONNX parser to get wrong (Polygraphy's advice).
        return list(PORTABLE_PASSES)

    def build(self, inputs: BuildInputs) -> BackendBuild:
        return build_engine(inputs)

    def load(self, artifact: Artifact, *, threads: int | None = None) -> TensorRtRunner:
        # threads: TensorRT runs on the GPU; the host thread count does not apply.
        missing = _missing_requirement()
        if missing:
            raise HubertExportError(f"this TensorRT artifact needs TensorRT and an NVIDIA GPU to run: this machine "
                                    f"has {missing}")
        manifest = artifact.manifest
        return TensorRtRunner(artifact.path / MODEL_NAME, manifest.backend, manifest.input_contract)
