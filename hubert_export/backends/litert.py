"""LiteRT (the renamed TensorFlow Lite): `model.tflite` from the PyTorch model, run by LiteRT's interpreter.

  fp32  `litert_torch.convert` of the canonical model (weight norm folded), float everywhere
  fp16  the same file with FP16 weights (ai-edge-quantizer's float casting; computed in FP32)
  int8  ai-edge-quantizer, LiteRT's own quantiser: `calibration.method: dynamic` stores INT8
        weights and quantises activations on the fly (dynamic range); `static` (the default) is
        INT8 weights and activations of every fully-connected layer and convolution, calibrated on
        audio (see STATIC_INT8_OPS for why not every op). Should a model's inputs or outputs be
        quantised, the runner quantises and dequantises with the file's own scales.

The converter traces the model with `torch.export` at one shape, and LiteRT models are fixed-shape
in practice (the XNNPACK delegate plans its buffers for one shape), so the artifact is built for
the recipe's opt shape and accepts exactly that shape; its manifest's `input_contract` says so, and
`transcribe` then runs recordings through that window. What the converter needed from the model:
nothing beyond what the ONNX export needs (exact-erf GELU, GroupNorm, LayerNorm, the positional
conv's even-kernel padding and SDPA with a boolean key mask all lower to TFLite builtins); the
weight-normed positional convolution is folded into a plain convolution for the conversion, as for
ONNX. int64 inputs (`attention_mask`) become int32, LiteRT's index type.

The extra is installed with `pip install 'hubert-export[litert]'`, in an environment of its own:
its converter pins typing-extensions below the version the core's pydantic needs (see docs/backends.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from hubert_export.artifact import Artifact
from hubert_export.backends import Backend, BackendBuild, BuildInputs
from hubert_export.contract import InputContract
from hubert_export.errors import HubertExportError
from hubert_export.recipes import Recipe, Shape
from hubert_export.runner import Runner

MODEL_NAME = "model.tflite"
SIGNATURE = "serving_default"
EXTRA_HINT = "pip install 'hubert-export[litert]' (in its own virtual environment: see docs/backends.md)"
# Static INT8 quantises the weights and activations of these ops (the model's MatMuls and the
# feature encoder's convolutions after the first, a depthwise one), as the ONNX Runtime back end
# does. ai-edge-quantizer's full-integer recipe (every op, waveform input included) measured on the
# shipped model: 0.949 of frame argmaxes agreeing with eager on the test speech, 0.59 on one
# synthetic case, CER against eager 0.5; these two ops alone: 0.995 on the same speech.
STATIC_INT8_OPS = ("FULLY_CONNECTED", "CONV_2D")

log = logging.getLogger(__name__)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter's C++ start-up banners


class LiteRtBackend(Backend):
    target = "litert"
    needs_onnx = False  # converted from the PyTorch model

    def check_available(self, recipe: Recipe) -> None:
        """Refuse, before any work, a build without the converter installed."""
        missing = _missing_packages(("litert_torch", "ai_edge_litert", "ai_edge_quantizer"))
        if missing:
            raise HubertExportError(f"--target litert needs the [litert] extra ({', '.join(missing)} not "
                                    f"installed): {EXTRA_HINT}")

    def graph_passes(self, recipe: Recipe) -> list[str]:
        return []  # converted from PyTorch: the ONNX graph passes do not apply

    def input_contract(self, recipe: Recipe, attention_mask: bool) -> InputContract:
        """The one shape the artifact is built for: the recipe's opt shape."""
        return InputContract.fixed(recipe.shapes.opt, attention_mask)

    def build(self, inputs: BuildInputs) -> BackendBuild:
        recipe = inputs.recipe
        shape = inputs.contract.opt
        float_model = _convert(inputs, shape)
        section: dict[str, Any] = {
            "files": [MODEL_NAME], "litert_torch": _version("litert-torch"),
            "ai_edge_litert": _version("ai-edge-litert"), "signature": SIGNATURE,
            "built_shape": {"batch": shape.batch, "samples": shape.samples},
        }
        if recipe.precision == "fp32":
            model_bytes = float_model
        else:
            model_bytes = _quantize(inputs, float_model, shape, section)
        (inputs.out_dir / MODEL_NAME).write_bytes(model_bytes)
        return BackendBuild(section)

    def load(self, artifact: Artifact, *, threads: int | None = None) -> LiteRtRunner:
        manifest = artifact.manifest
        if manifest.input_contract.window is None:
            raise HubertExportError(f"artifact {artifact.path}: manifest.json's input_contract is a range, and a "
                                    "LiteRT model takes one shape: rebuild the artifact")
        options = artifact.recipe().litert
        return LiteRtRunner(
            artifact.path / MODEL_NAME, input_names=manifest.input_names, output_names=manifest.output_names,
            contract=manifest.input_contract, threads=threads if threads is not None else options.num_threads,
        )


def _missing_packages(modules: tuple[str, ...]) -> list[str]:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


def _quantize(inputs: BuildInputs, float_model: bytes, shape: Shape, section: dict[str, Any]) -> bytes:
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer import recipe as quant_recipes
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    recipe = inputs.recipe
    section["ai_edge_quantizer"] = _version("ai-edge-quantizer")
    quant = quantizer.Quantizer(float_model)
    calibration = None
    if recipe.precision == "fp16":
        log.info("casting weights to FP16 (ai-edge-quantizer)")
        quant.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                     num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
        section["quantization"] = "fp16 weights"
    elif recipe.calibration.method == "dynamic":
        log.info("quantising to INT8, dynamic range (ai-edge-quantizer)")
        quant.load_quantization_recipe(quant_recipes.dynamic_wi8_afp32())
        section["quantization"] = "dynamic"
    else:
        from hubert_export.runner import fit_inputs

        batches = inputs.calibration_inputs()
        log.info(f"quantising to static INT8, calibrated on {len(batches)} recordings (ai-edge-quantizer)")
        for op in STATIC_INT8_OPS:
            quant.add_static_config(regex=".*", operation_name=getattr(qtyping.TFLOperationName, op),
                                    activation_num_bits=8, weight_num_bits=8)
        feeds = [_feed(fit_inputs(b, shape.batch, shape.samples), inputs.input_names) for b in batches]
        with _quiet():
            calibration = quant.calibrate({SIGNATURE: feeds})
        section["quantization"] = "static"
        section["int8_ops"] = list(STATIC_INT8_OPS)
        section["calibration_samples"] = len(batches)
    with _quiet():
        result = quant.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


def _convert(inputs: BuildInputs, shape: Shape) -> bytes:
    import litert_torch
    import torch  # the converter's side only: the runner (check --golden on a device) needs no torch

    from hubert_export.export import folded_weight_norm
    from hubert_export.tasks import ExportModule

    model = inputs.model
    wrapper = ExportModule(model, inputs.recipe.export.output_hidden_states).eval()
    example = {"input_values": torch.zeros(shape.batch, shape.samples)}
    example["input_values"][:, ::7] = 0.5
    if "attention_mask" in inputs.input_names:
        example["attention_mask"] = torch.ones(shape.batch, shape.samples, dtype=torch.int64)
    log.info(f"converting to LiteRT at batch {shape.batch} x {shape.samples} samples (litert-torch)")
    with torch.no_grad(), folded_weight_norm(model), _quiet():
        try:
            edge = litert_torch.convert(wrapper, sample_kwargs=example)
        except Exception as exc:  # the converter raises many types; the user needs one line
            raise HubertExportError(f"LiteRT conversion failed: {type(exc).__name__}: "
                                    f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from exc
        scratch = inputs.work_dir / "float.tflite"
        edge.export(str(scratch))
    return scratch.read_bytes()


def _feed(inputs: dict[str, np.ndarray], input_names: list[str]) -> dict[str, np.ndarray]:
    return {n: (inputs[n].astype(np.int32) if n == "attention_mask" else inputs[n]) for n in input_names}


@contextlib.contextmanager
def _quiet():
    """The converter and quantiser print progress bars and banners meant for their developers."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


class LiteRtRunner(Runner):
    """LiteRT's interpreter (XNNPACK delegate, `threads` threads) on one fixed-shape signature."""

    def __init__(self, model_path: Path, *, input_names: list[str], output_names: list[str],
                 contract: InputContract, threads: int = 0) -> None:
        self.name = "litert"
        self.model_path = model_path
        self.input_names = input_names
        self.output_names = output_names
        self.contract = contract  # one shape
        self.threads = threads

    def _activate(self) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise HubertExportError(f"this artifact is a LiteRT model and needs the [litert] extra: "
                                    f"{EXTRA_HINT}") from None
        try:
            # num_threads None lets the interpreter choose; XNNPACK is its default CPU delegate.
            self.interpreter = Interpreter(model_path=str(self.model_path),
                                           num_threads=self.threads if self.threads > 0 else None)
            self.signature = self.interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as exc:
            raise HubertExportError(f"LiteRT cannot load {self.model_path.name} ({str(exc).splitlines()[0][:200]}): "
                                    "the file is corrupt or was modified; rebuild the artifact") from None
        self.input_details = self.signature.get_input_details()
        self.output_details = self.signature.get_output_details()
        # The converter names outputs output_0, output_1, ... in the order the module returns them.
        self.output_keys = sorted(self.output_details, key=lambda key: int(key.rsplit("_", 1)[-1]))

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.contract.check(inputs)
        feed = {name: _to_tensor(inputs[name], self.input_details[name]) for name in self.input_names}
        outputs = self.signature(**feed)
        return {name: _from_tensor(outputs[key], self.output_details[key])
                for name, key in zip(self.output_names, self.output_keys)}

    def _deactivate(self) -> None:
        self.signature = None
        self.interpreter = None


def _to_tensor(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if scale and dtype.kind in "iu":  # a full-integer model's quantised input
        info = np.iinfo(dtype)
        return np.clip(np.round(value / scale) + zero_point, info.min, info.max).astype(dtype)
    return np.ascontiguousarray(value, dtype=dtype)


def _from_tensor(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if scale and value.dtype.kind in "iu":
        return ((value.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return value.astype(np.float32, copy=False)
