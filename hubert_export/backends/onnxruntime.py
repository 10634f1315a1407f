"""ONNX Runtime: FP32, INT8 (dynamic, or static QDQ calibrated on audio), FP16 on the CUDA provider.

The artifact is `model.onnx`. FP32 ships the exporter's graph as it is (portable ONNX); the session
applies ONNX Runtime's fusions at load ("all" level by default), as ONNX Runtime recommends.
Baking them in at build time (`onnxruntime.offline_fusions: true`, for minimal runtimes that cannot
optimise at load) measured no faster on a full ONNX Runtime: hubert-base, 10 s, 2 threads, 0.822 s
against 0.816 s per run, with sessions starting in 1.5 s instead of 0.44 s and builds 3.7 s longer.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from hubert_export.artifact import Artifact
from hubert_export.backends import Backend, BackendBuild, BuildInputs
from hubert_export.errors import HubertExportError
from hubert_export.isa import resolve_overflow_fix
from hubert_export.quantization import FLOAT_GROUP_REASONS, check_grouped, group_patterns, matching
from hubert_export.passes import ONNXRUNTIME_OFFLINE_PASSES, PORTABLE_PASSES
from hubert_export.recipes import Recipe
from hubert_export.contract import InputContract, check_inputs
from hubert_export.runner import Runner

log = logging.getLogger(__name__)
MODEL_NAME = "model.onnx"
EXTERNAL_DATA_NAME = MODEL_NAME + ".data"  # its weights, when it has external data (export.EXTERNAL_DATA_SUFFIX)
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OnnxRuntimeBackend(Backend):
    target = "onnx"

    def graph_passes(self, recipe: Recipe) -> list[str]:
        if recipe.precision != "fp32":
            # One wide q/k/v MatMul quantises its input once instead of three times (dynamic INT8,
            # hubert-base 10 s: 0.515 s against 0.522 s without the passes).
            return list(PORTABLE_PASSES)
        # FP32: the session's load-time optimiser makes the passes moot (hubert-base 10 s: 0.816 s with
        # them, 0.817 s without), so the exporter's graph ships as it is, without 2 s of build time.
        return list(ONNXRUNTIME_OFFLINE_PASSES) if recipe.onnxruntime.offline_fusions else []

    def build(self, inputs: BuildInputs) -> BackendBuild:
        precision = inputs.recipe.precision
        target = inputs.out_dir / MODEL_NAME
        section: dict[str, Any] = {"files": [MODEL_NAME], "onnxruntime": ort.__version__}
        digests: dict[str, str] = {}
        if precision == "fp32":
            digest = inputs.graph.write(target)
            if digest is not None:
                digests[MODEL_NAME] = digest
        elif precision == "int8":
            method = inputs.recipe.calibration.method
            log.info(f"quantising to INT8 ({method})")
            patterns = inputs.recipe.calibration.ignored_scopes
            # 7-bit weights where INT8 products saturate (CPUs without VNNI: hubert_export/isa.py).
            reduce_range = resolve_overflow_fix(inputs.recipe.calibration.overflow_fix,
                                                inputs.recipe.deployment_isa) == "enable"
            if method == "dynamic":
                excluded = resolve_ignored_nodes(inputs.graph.model(), patterns)
                _quantize_dynamic(inputs.graph.file(), target, excluded, reduce_range, inputs.graph.external_data)
            else:
                section["calibration_samples"], excluded, float_nodes = _quantize_static(inputs, target, reduce_range)
                groups = inputs.recipe.calibration.float_groups
                section["float_groups"] = {g: FLOAT_GROUP_REASONS.get(g, "recipe") for g in groups}
                section["float_layers"] = float_nodes
                log.info(f"INT8: {len(float_nodes)} Conv/MatMul nodes left in float ({', '.join(groups) or 'no group'})")
            section["quantization"] = method
            section["format"] = (("dynamic U8S8 MatMul" if method == "dynamic" else "static QDQ U8S8 per-channel")
                                 + (", 7-bit weights (reduce_range)" if reduce_range else ", 8-bit weights"))
            section["excluded_nodes"] = excluded
            section["int8_layers"] = int8_layer_count(onnx.load(str(target), load_external_data=False))
            if section["int8_layers"] == 0:
                raise HubertExportError("INT8 quantisation left every Conv/MatMul in float: the artifact would be an "
                                        "FP32 model labelled INT8; narrow calibration.float_groups/ignored_scopes, "
                                        "or build --precision fp32")
        elif precision == "fp16":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise HubertExportError(
                    "ONNX Runtime FP16 needs the CUDA execution provider (onnxruntime-gpu and an NVIDIA GPU), "
                    "which this machine lacks: use --precision fp32 or int8, or --target tensorrt on a GPU machine"
                )
            from hubert_export.backends.tensorrt import fp16_policy_graph
            from hubert_export.export import save_onnx

            # The graph TensorRT builds: half, with the FP16 policy's layers (tensorrt.fp32_layers) in FP32.
            model, pinned = fp16_policy_graph(inputs.graph.model(), inputs.recipe.tensorrt.fp32_layers)
            save_onnx(model, target)
            section["providers"] = ["CUDAExecutionProvider"]
            section["fp32_layer_count"] = len(pinned)
        # A model with external data (export.external_data; over 2 GB) has its weights beside it in
        # model.onnx.data: a model file of the artifact, hashed in the manifest like model.onnx.
        if (inputs.out_dir / EXTERNAL_DATA_NAME).is_file():
            # ONNX Runtime's quantiser writes it through a temporary file, mode 0600: an artifact
            # served by another user must be readable like model.onnx.
            shutil.copymode(target, inputs.out_dir / EXTERNAL_DATA_NAME)
            section["files"].append(EXTERNAL_DATA_NAME)
            section["external_data"] = EXTERNAL_DATA_NAME
        return BackendBuild(section, digests)

    def load(self, artifact: Artifact, *, threads: int | None = None,
             optimization_level: str | None = None) -> OnnxRuntimeRunner:
        manifest = artifact.manifest
        options = manifest.recipe.get("onnxruntime", {})
        providers = manifest.backend.get("providers")
        return OnnxRuntimeRunner(
            artifact.path / MODEL_NAME,
            threads=threads if threads is not None else options.get("intra_op_threads", 0),
            optimization_level=optimization_level or options.get("graph_optimization_level", "all"),
            providers=providers,
            contract=artifact.input_contract,
        )


def resolve_ignored_nodes(model: onnx.ModelProto, patterns: Sequence[str]) -> list[str]:
    """The names of the nodes `calibration.ignored_scopes` keeps in float: each pattern is a regular
    expression searched in node names (as OpenVINO's build does), where ONNX Runtime's quantiser
    takes exact names only. A pattern that matches nothing is refused: it would exclude nothing
    without a word."""
    names = [node.name for node in model.graph.node if node.name]
    excluded: list[str] = []
    for pattern in patterns:
        found = matching(names, [pattern])
        if not found:
            example = next((n for n in names if "encoder/layers.0/" in n), names[0] if names else "")
            raise HubertExportError(f"calibration.ignored_scopes pattern {pattern!r} matches no node of the ONNX "
                                    f"graph: use regular expressions over ONNX node names such as {example!r}")
        excluded += [name for name in found if name not in excluded]
    return excluded


def int8_layer_count(model: onnx.ModelProto) -> int:
    """The Conv/MatMul layers that compute in INT8: integer ops (dynamic), or float ops whose input
    is dequantised (static QDQ, which ONNX Runtime fuses into integer kernels at load)."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    integer = sum(n.op_type in ("MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul") for n in model.graph.node)
    qdq = sum(n.op_type in ("Conv", "MatMul") and producers.get(n.input[0]) == "DequantizeLinear"
              for n in model.graph.node)
    return integer + qdq


def _quantize_dynamic(source: Path, target: Path, excluded: list[str], reduce_range: bool, external: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # MatMul only: ONNX Runtime's dynamic ConvInteger kernels are slower than float Conv on x86.
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=excluded, reduce_range=reduce_range, extra_options={"MatMulConstBOnly": True},
                     use_external_data_format=external)


def _quantize_static(inputs: BuildInputs, target: Path, reduce_range: bool) -> tuple[int, list[str], list[str]]:
    """Static QDQ INT8; returns the calibration count, the nodes the recipe's ignored_scopes exclude
    and the Conv/MatMul nodes its float_groups keep in float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = inputs.calibration_inputs()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {k: v for k, v in item.items() if k in inputs.input_names}

    external = inputs.graph.external_data  # then every file on the way has its weights beside it
    with tempfile.TemporaryDirectory(dir=inputs.work_dir) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(inputs.graph.file()), str(prepared), skip_symbolic_shape=True,
                          save_as_external_data=external, all_tensors_to_one_file=True,
                          external_data_location=prepared.name + ".data")
        # Resolved on the graph the quantiser reads: pre-processing may merge or rename nodes.
        prepared_model = onnx.load(str(prepared), load_external_data=False)
        excluded = resolve_ignored_nodes(prepared_model, inputs.recipe.calibration.ignored_scopes)
        weighted = [n.name for n in prepared_model.graph.node if n.op_type in ("Conv", "MatMul")]
        check_grouped(weighted)
        float_nodes = matching(weighted, group_patterns(inputs.recipe.calibration.float_groups))
        quantize_static(
            str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            reduce_range=reduce_range, op_types_to_quantize=["MatMul", "Conv"],
            nodes_to_exclude=float_nodes + [n for n in excluded if n not in float_nodes],
            extra_options={"CalibTensorRangeSymmetric": False, "MatMulConstBOnly": True},
            use_external_data_format=external,
        )
    return len(batches), excluded, float_nodes


class OnnxRuntimeRunner(Runner):
    def __init__(self, model_path: Path, *, threads: int = 0, optimization_level: str = "all",
                 providers: list[str] | None = None, contract: InputContract | None = None) -> None:
        self.name = "onnxruntime"
        self.model_path = model_path
        self.threads = threads
        self.optimization_level = optimization_level
        self.providers = providers or ["CPUExecutionProvider"]
        self.contract = contract  # None: a bare .onnx outside an artifact (bench)

    def _activate(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = _OPT_LEVELS[self.optimization_level]
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise HubertExportError(
                f"ONNX Runtime cannot load {self.model_path.name} ({str(exc).splitlines()[0][:200]}): "
                "the file is corrupt or was modified; rebuild the artifact"
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(inputs, self.contract, self.input_names)
        feed = {name: inputs[name] for name in self.input_names}
        return dict(zip(self.output_names, self.session.run(None, feed)))

    def _deactivate(self) -> None:
        self.session = None
