"""ONNX Runtime: FP32, INT8 (dynamic, or static QDQ calibrated on audio), FP16 on the CUDA provider.

The artifact is `model.onnx`. FP32 artifacts carry ONNX Runtime's own portable fusions
(`optimize_for_onnxruntime`, level "extended"), applied once at build time; the machine-specific
"all" level is applied by the session at load, as ONNX Runtime recommends.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from hubert_export.artifact import Artifact
from hubert_export.backends import BuildContext
from hubert_export.errors import HubertExportError
from hubert_export.export import save_onnx
from hubert_export.passes import run_passes
from hubert_export.runner import Runner, check_inputs

MODEL_NAME = "model.onnx"
# On top of the common passes: ONNX Runtime's contrib-op fusions, baked in once at build time.
ORT_PASSES = ["fuse_gelu", "optimize_for_onnxruntime"]
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def build(ctx: BuildContext) -> dict[str, Any]:
    precision = ctx.recipe.precision
    target = ctx.out_dir / MODEL_NAME
    section: dict[str, Any] = {"files": [MODEL_NAME], "onnxruntime": ort.__version__}
    if precision == "fp32":
        model = run_passes(ctx.onnx_model(), ORT_PASSES, log=ctx.log)
        save_onnx(model, target)
        section["passes"] = ORT_PASSES
    elif precision == "int8":
        method = ctx.recipe.calibration.method
        ctx.log(f"quantising to INT8 ({method})")
        if method == "dynamic":
            _quantize_dynamic(ctx.onnx_path, target)
        else:
            section["calibration_samples"] = _quantize_static(ctx, target)
        section["quantization"] = method
    elif precision == "fp16":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise HubertExportError(
                "ONNX Runtime FP16 needs the CUDA execution provider (onnxruntime-gpu and an NVIDIA GPU), "
                "which this machine lacks: use --precision fp32 or int8, or --target tensorrt on a GPU machine"
            )
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(ctx.onnx_model(), keep_io_types=True)
        onnx.save(model, str(target))
        section["providers"] = ["CUDAExecutionProvider"]
    return section


def _quantize_dynamic(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # MatMul only: ONNX Runtime's dynamic ConvInteger kernels are slower than float Conv on x86.
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     extra_options={"MatMulConstBOnly": True})


def _quantize_static(ctx: BuildContext, target: Path) -> int:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = ctx.calibration_inputs()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {k: v for k, v in item.items() if k in ctx.input_names}

    with tempfile.TemporaryDirectory(dir=ctx.out_dir) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(ctx.onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul", "Conv"],
            nodes_to_exclude=list(ctx.recipe.calibration.ignored_scopes),
            extra_options={"CalibTensorRangeSymmetric": False, "MatMulConstBOnly": True},
        )
    return len(batches)


class OnnxRuntimeRunner(Runner):
    def __init__(self, model_path: Path, *, threads: int = 0, optimization_level: str = "all",
                 providers: list[str] | None = None, shape_range: Any = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = _OPT_LEVELS[optimization_level]
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise HubertExportError(
                f"ONNX Runtime cannot load {model_path.name} ({str(exc).splitlines()[0][:200]}): "
                "the file is corrupt or was modified; rebuild the artifact"
            ) from None
        self.name = "onnxruntime"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.shape_range = shape_range

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(inputs, self.input_names, self.shape_range)
        feed = {name: inputs[name] for name in self.input_names}
        return dict(zip(self.output_names, self.session.run(None, feed)))

    def close(self) -> None:
        self.session = None


def load(artifact: Artifact, *, threads: int | None = None, optimization_level: str | None = None,
         enforce_shape_range: bool = True) -> OnnxRuntimeRunner:
    options = artifact.manifest.get("recipe", {}).get("onnxruntime", {})
    providers = artifact.manifest.get("backend", {}).get("providers")
    return OnnxRuntimeRunner(
        artifact.path / MODEL_NAME,
        threads=threads if threads is not None else options.get("intra_op_threads", 0),
        optimization_level=optimization_level or options.get("graph_optimization_level", "all"),
        providers=providers,
        shape_range=artifact.shape_range() if enforce_shape_range else None,
    )
