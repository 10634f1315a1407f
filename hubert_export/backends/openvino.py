"""OpenVINO: an IR (`openvino_model.xml` + `.bin`) from OpenVINO's own ONNX converter; INT8 by NNCF.

  fp32  the converted IR as is
  fp16  the same graph with FP16-compressed weights (`save_model(compress_to_fp16=True)`): half the
        size on disk; the CPU plugin decompresses them and computes in FP32
  int8  NNCF post-training quantisation (FakeQuantize on the inputs of every Conv and MatMul,
        the feature encoder's convolutions included), calibrated on audio; with
        `calibration.max_accuracy_drop`, NNCF's accuracy-controlled mode reverts the layers that
        cost the most agreement with the FP32 model to float until the drop is within bounds
        (SmoothQuant off there: see `_quantize`)

Every artifact is compiled with INFERENCE_PRECISION_HINT f32: on CPUs with AVX512-BF16 or AMX the
CPU plugin otherwise runs float layers in bfloat16 (measured on hubert-base: max abs error 0.03
and 2% of frame argmaxes changed for the FP32 IR, at 0.5x its f32 latency; no speed difference
for the INT8 IR).

Measured on the build machine (AMD EPYC with AVX-512 VNNI, 2 threads; hubert-base architecture,
random weights, 10 s batch 1, interleaved median of 5): ONNX Runtime FP32 832 ms, OpenVINO FP32
853 ms, OpenVINO INT8 294 ms (0.35x); mixed and performance presets, with or without SmoothQuant,
all within noise of each other.
"""

from __future__ import annotations

import dataclasses

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from hubert_export.artifact import Artifact
from hubert_export.backends import Backend, BackendBuild, BuildInputs
from hubert_export.contract import InputContract
from hubert_export.errors import HubertExportError
from hubert_export.isa import deployment_isa, resolve_overflow_fix
from hubert_export.quantization import (FLOAT_GROUP_REASONS, REVERT_ORDER, check_grouped, compute_layers, covered_by,
                                        group_patterns, matching)
from hubert_export.passes import PORTABLE_PASSES
from hubert_export.recipes import Recipe
from hubert_export.runner import Runner

log = logging.getLogger(__name__)
# optimum-intel's names: OVModelForCTC.from_pretrained(artifact) finds the IR only by them (it looks for
# `openvino*_*.xml` and otherwise tries to convert a PyTorch checkpoint that is not there).
MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
_WEIGHTED_OPS = ("Convolution", "GroupConvolution", "MatMul")
# benchmarks/results/int8-accuracy-x86-avx2.md, random-init hubert-base, 10 s: OpenVINO INT8 0.98x
# OpenVINO FP32 (0.97x with only the feed-forward in INT8), ONNX Runtime static INT8 0.76x its FP32.
NO_INT8_SPEEDUP = ("OpenVINO INT8 runs no faster than OpenVINO FP32 on {isa} CPUs (no VNNI; measured 0.98x on "
                   "hubert-base): the artifact is smaller, not faster; for speed there build --target onnx "
                   "--precision int8 (0.76x its FP32)")
# Ops between a FakeQuantize and the layer it feeds (layout changes, dequantisation converts).
_TRANSPARENT_OPS = {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Convert"}


class OpenVinoBackend(Backend):
    target = "openvino"

    def graph_passes(self, recipe: Recipe) -> list[str]:
        # The configuration whose latency and INT8 accuracy the benchmarks and tests measured.
        return list(PORTABLE_PASSES)

    def input_contract(self, recipe: Recipe, attention_mask: bool) -> InputContract:
        """The recipe's range, or the one shape of `openvino.static_shape`, which the runner compiles for."""
        static = recipe.openvino.static_shape
        if static is not None:
            return InputContract.fixed(static, attention_mask)
        return InputContract.over(recipe.shapes.range, attention_mask)

    def build(self, inputs: BuildInputs) -> BackendBuild:
        precision = inputs.recipe.precision
        log.info("converting to OpenVINO IR")
        model = _convert(inputs)
        section: dict[str, Any] = {"files": [MODEL_XML, MODEL_BIN], "openvino": ov.get_version(),
                                   "weights": "fp16" if precision == "fp16" else "fp32",
                                   "compile": compile_config(inputs.recipe)}
        section["float_compute_at_build"] = float_compute(section["compile"]["INFERENCE_PRECISION_HINT"])
        if precision == "int8":
            import nncf
            from nncf.common.logging import nncf_logger

            level = nncf_logger.level
            nncf.set_log_level(logging.WARNING)  # its INFO lines repeat our own progress lines
            try:
                model, section["quantization"] = _quantize(inputs, model)
            finally:
                nncf.set_log_level(level)
            section["nncf"] = nncf.__version__
            section["int8_layers"] = section["quantization"]["quantized_layers"]
            isa = deployment_isa(inputs.recipe.deployment_isa)
            if isa.name.startswith("x86") and not isa.vnni:
                section["speed_note"] = NO_INT8_SPEEDUP.format(isa=isa.name)
                log.warning(section["speed_note"])
        ov.save_model(model, str(inputs.out_dir / MODEL_XML), compress_to_fp16=precision == "fp16")
        return BackendBuild(section, failures=_accuracy_control_failures(section.get("quantization", {})))

    def load(self, artifact: Artifact, *, threads: int | None = None,
             performance_hint: str | None = None) -> OpenVinoRunner:
        manifest = artifact.manifest
        # As built and verified; artifacts from before backend.compile was recorded get the recipe's.
        config = dict(manifest.backend.get("compile") or compile_config(artifact.recipe()))
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if performance_hint is not None:
            config["PERFORMANCE_HINT"] = performance_hint.upper()
        # The manifest names the IR: artifacts built before the optimum-intel names have model.xml.
        xml = next((f for f in artifact.model_files if f.suffix == ".xml"), artifact.path / MODEL_XML)
        return OpenVinoRunner(xml, config=config, input_names=manifest.input_names,
                              output_names=manifest.output_names, contract=manifest.input_contract)


def _accuracy_control_failures(quantization: dict[str, Any]) -> list[str]:
    """Why an accuracy-controlled build fails: the drop was not reached, or reaching it left no layer
    in INT8 (an FP32 model labelled INT8, which a build must never hand over as a success)."""
    control = quantization.get("accuracy_control")
    if not control:
        return []
    figures = (f"{control['metric']} drop {control['drop']:.4f} against the requested {control['max_drop']:g}, "
               f"with {', '.join(control['float_groups'])} in float")
    if not control["reached"]:
        return [f"accuracy control did not reach the drop: {figures}: raise calibration.max_accuracy_drop, "
                "calibrate on more representative audio, or use fp16/fp32"]
    if not quantization["compute_int8_layers"]:
        useful = [s for s in control["steps"] if s["compute_int8_layers"]]
        best = max(useful, key=lambda s: s["metric"]) if useful else None
        closest = (f"; the best candidate with INT8 there ({best['compute_int8_layers']} layers) had a drop of "
                   f"{1 - best['metric']:.4f}") if best else ""
        return [f"accuracy control reached the drop only by reverting every convolution, attention and feed-forward "
                f"layer to float ({quantization['quantized_layers']} INT8 layers left; {figures}{closest}): that is an "
                "FP32 model, so build --precision fp32, or raise calibration.max_accuracy_drop"]
    return []


def _convert(inputs: BuildInputs) -> ov.Model:
    model = ov.convert_model(str(inputs.graph.file()))
    # The converter keeps ONNX value names as tensor names; check, since runners look them up by name.
    for kind, ports, expected in (("inputs", model.inputs, inputs.input_names),
                                  ("outputs", model.outputs, inputs.output_names)):
        found = [p.get_names() for p in ports]
        if len(found) != len(expected) or any(name not in names for name, names in zip(expected, found)):
            raise RuntimeError(f"OpenVINO converted the model with {kind} {found}, expected {expected}")
    return model


def inference_precision(recipe: Recipe) -> str:
    """The INFERENCE_PRECISION_HINT a recipe's artifact runs with (see `OpenVinoOptions.inference_precision`):
    auto is bf16 for plain INT8 on a deployment ISA with bf16 instructions, f32 otherwise. Accuracy
    control promises a drop measured in f32 too."""
    if recipe.openvino.inference_precision != "auto":
        return recipe.openvino.inference_precision
    plain_int8 = recipe.precision == "int8" and recipe.calibration.max_accuracy_drop is None
    return "bf16" if plain_int8 and deployment_isa(recipe.deployment_isa).bf16 else "f32"


def float_compute(hint: str) -> str:
    """What this CPU computes the float layers in under `hint`: the plugin ignores bf16 without the instructions."""
    return hint if hint == "f32" or "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


def compile_config(recipe: Recipe) -> dict[str, str]:
    """The CPU plugin's compile properties for a recipe (all strings, JSON-able): the manifest's
    `backend.compile`, which every later load of the artifact uses."""
    options = recipe.openvino
    # CPU_RUNTIME_CACHE_CAPACITY 0: OpenVINO 2026.4's CPU plugin reuses cached kernels wrongly after a
    # one-frame input (400..719 samples) with a 7-conv feature encoder: every later, longer input
    # came out wrong (hubert-base: max abs error 2.6, argmax agreement 0). Without the cache each
    # new shape rebuilds its kernels: measured +4% latency when every call changes length.
    config = {"PERFORMANCE_HINT": options.performance_hint.upper(),
              "INFERENCE_PRECISION_HINT": inference_precision(recipe), "CPU_RUNTIME_CACHE_CAPACITY": "0"}
    if options.num_threads:
        config["INFERENCE_NUM_THREADS"] = str(options.num_threads)
    if options.cache_dir is not None:
        config["CACHE_DIR"] = str(options.cache_dir)
    return config


# ------------------------------------------------------------------------------------------ INT8
def _quantize(build: BuildInputs, model: ov.Model) -> tuple[ov.Model, dict[str, Any]]:
    import nncf
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
                                                       OverflowFix)

    cal = build.recipe.calibration
    check_grouped(_weighted_layers(model))
    items = build.calibration_inputs()
    names = build.input_names

    def model_inputs(item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: item[n] for n in names}

    dataset = nncf.Dataset(items, model_inputs)
    alpha = cal.smooth_quant_alpha
    # 7-bit weights where INT8 products saturate (CPUs without VNNI: hubert_export/isa.py). NNCF's
    # default protects the first convolution only, which the default float groups keep in float anyway.
    overflow_fix = resolve_overflow_fix(cal.overflow_fix, build.recipe.deployment_isa)
    advanced = AdvancedQuantizationParameters(
        overflow_fix={"enable": OverflowFix.ENABLE, "first_layer": OverflowFix.FIRST_LAYER, "disable": OverflowFix.DISABLE}[overflow_fix])
    if alpha is not None:
        advanced = dataclasses.replace(advanced, smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha))
    options: dict[str, Any] = dict(
        preset=nncf.QuantizationPreset.PERFORMANCE if cal.preset == "performance" else nncf.QuantizationPreset.MIXED,
        model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items),
        fast_bias_correction=cal.fast_bias_correction,
        ignored_scope=_ignored_scope(model, cal.ignored_scopes, group_patterns(cal.float_groups)))
    details: dict[str, Any] = {"method": "nncf-ptq", "calibration_samples": len(items), "preset": cal.preset,
                               "smooth_quant_alpha": alpha, "ignored_scopes": list(cal.ignored_scopes),
                               "float_groups": {g: FLOAT_GROUP_REASONS.get(g, "recipe") for g in cal.float_groups},
                               "fast_bias_correction": cal.fast_bias_correction, "overflow_fix": overflow_fix,
                               "format": "NNCF FakeQuantize, u8 activations x s8 weights"
                                         + (", 7-bit weights" if overflow_fix == "enable" else
                                            ", 7-bit weights in the first convolution" if overflow_fix == "first_layer"
                                            else "")}
    if cal.max_accuracy_drop is None:
        log.info(f"quantising to INT8 with NNCF on {len(items)} recordings")
        quantized = nncf.quantize(model, dataset, advanced_parameters=advanced, **options)
    else:
        quantized, details["accuracy_control"] = _quantize_with_accuracy_control(
            build, model, items, model_inputs, dataset, advanced, options)
        details["method"] = "nncf-ptq-accuracy-control"
        details["float_groups"] = {
            g: FLOAT_GROUP_REASONS.get(g, "recipe") if g in cal.float_groups else "reverted by accuracy control"
            for g in details["accuracy_control"]["float_groups"]}
    quantized_ops, float_ops = _layer_precisions(quantized)
    if not quantized_ops and cal.max_accuracy_drop is None:
        raise HubertExportError("INT8 quantisation left every Conv/MatMul in float: the artifact would be an FP32 "
                                "model labelled INT8; narrow calibration.float_groups/ignored_scopes, or build "
                                "--precision fp32")
    details.update(_int8_counts(quantized_ops))
    details["float_layers"] = float_ops
    log.info(f"INT8: {len(quantized_ops)} layers quantised, {len(float_ops)} left in float")
    return quantized, details


def _ignored_scope(model: ov.Model, patterns: tuple[str, ...], group_patterns: list[str] = ()):
    """NNCF's ignored scope for the recipe's patterns (each must match a layer) and float groups
    (which may match nothing: a model without a head has no head group)."""
    import nncf

    if not patterns and not group_patterns:
        return None
    # NNCF only says that some pattern matched nothing; name the pattern and what names look like.
    layer_names = [op.get_friendly_name() for op in model.get_ordered_ops()]
    for pattern in patterns:
        if not any(re.search(pattern, n) for n in layer_names):
            example = next((n for n in layer_names if "encoder/layers.0/" in n), layer_names[0])
            raise HubertExportError(
                f"calibration.ignored_scopes pattern {pattern!r} matches no layer of the model: use regular "
                f"expressions over OpenVINO layer names such as {example!r}")
    # NNCF matches patterns with re.fullmatch; the recipe's patterns are searched, as everywhere else.
    return nncf.IgnoredScope(patterns=[f".*(?:{p}).*" for p in (*patterns, *group_patterns)], validate=False)


def _quantize_with_accuracy_control(build: BuildInputs, model: ov.Model, items: list[dict[str, np.ndarray]],
                                    model_inputs, dataset, advanced, options) -> tuple[ov.Model, dict[str, Any]]:
    """Quantise once with the recipe's float groups, then revert whole layer groups to float, most
    sensitive first (REVERT_ORDER, ranked once by benchmarks/int8_sensitivity.py), until the metric
    drop is within `calibration.max_accuracy_drop`.

    A revert takes the quantised model and feeds the group's layers their inputs from before the
    FakeQuantize nodes (`revert_to_float`): no new quantisation, so a step costs one compile and one
    pass over the recordings. NNCF's own accuracy control re-ranks ~70 layer groups of hubert-base
    after each revert (about 3 minutes a ranking here) and did not finish in 12 minutes; a
    quantisation per revert still took minutes on hubert-base. Each step logs the metric. An
    unreachable drop returns the best candidate with `reached: false`, which fails the build.
    """
    import nncf

    cal = build.recipe.calibration
    drop = cal.max_accuracy_drop
    output = build.output_names[0]
    metric = _agreement_metric(build.task.name)
    core = ov.Core()
    # The metric is agreement with the FP32 model, so the calibration audio needs no labels and
    # serves as the validation set as well.
    fp32 = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    references = [fp32(model_inputs(item))[fp32.output(output)] for item in items]
    del fp32

    # Candidates are scored as the artifact will run: float layers in the recipe's inference precision.
    hint = inference_precision(build.recipe)

    def score(candidate: ov.Model) -> float:
        compiled = core.compile_model(candidate, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        return float(np.mean([metric(ref, compiled(model_inputs(item))[compiled.output(output)])
                              for ref, item in zip(references, items)]))

    float_groups = list(cal.float_groups)
    # Groups with no Conv/MatMul in this model (conv6 of a 3-conv encoder, a head-less model) are skipped.
    weighted = _weighted_layers(model)
    candidates = [g for g in REVERT_ORDER
                  if not covered_by(g, float_groups) and matching(weighted, group_patterns([g]))]
    log.info(f"accuracy control: max {metric.__name__} drop {drop:g} on {len(items)} recordings, "
             f"up to {len(candidates)} layer groups to revert")
    scope = _ignored_scope(model, cal.ignored_scopes, group_patterns(float_groups))
    # Weights kept as float constants behind FakeQuantize nodes (not yet compressed to INT8), so a
    # revert gives a layer its exact float weights back; the chosen model is compressed at the end.
    uncompressed = dataclasses.replace(advanced, backend_params={**advanced.backend_params, "compress_weights": False})
    quantized = nncf.quantize(model, dataset, advanced_parameters=uncompressed, **{**options, "ignored_scope": scope})
    best, best_value, best_groups = quantized, score(quantized), list(float_groups)
    steps = [{"float_groups": list(float_groups), "metric": best_value,
              **_int8_counts(_layer_precisions(quantized)[0])}]
    log.info(f"accuracy control: start ({', '.join(float_groups) or 'nothing'} in float): "
             f"{metric.__name__} {best_value:.4f}, drop {1 - best_value:.4f}")
    for index, group in enumerate(candidates, start=1):
        if 1.0 - best_value <= drop:
            break
        float_groups.append(group)
        candidate = revert_to_float(quantized, matching(weighted, group_patterns(float_groups)), model)
        value = score(candidate)
        steps.append({"float_groups": list(float_groups), "metric": value,
                      **_int8_counts(_layer_precisions(candidate)[0])})
        log.info(f"accuracy control: revert {index}/{len(candidates)} {group}: {metric.__name__} {value:.4f}, "
                 f"drop {1 - value:.4f}")
        if value >= best_value:
            best, best_value, best_groups = candidate, value, list(float_groups)
    from openvino._offline_transformations import compress_quantize_weights_transformation

    compress_quantize_weights_transformation(best)
    reached = 1.0 - best_value <= drop
    if not reached:
        log.warning(f"accuracy control: drop {1 - best_value:.4f} is above {drop:g} with every layer group "
                    "reverted that can be: the artifact is the best candidate and the build fails")
    return best, {"metric": metric.__name__, "max_drop": drop, "drop_type": "absolute", "fp32_metric": 1.0,
                  "int8_metric": best_value, "drop": 1.0 - best_value, "reached": reached,
                  "float_groups": best_groups, "steps": steps}


def revert_to_float(quantized: ov.Model, layer_names: list[str], original: ov.Model | None = None) -> ov.Model:
    """A copy of `quantized` in which the named Conv/MatMul layers read their inputs (activations and
    weights) from before their FakeQuantize nodes: those layers compute in float, the rest as before.

    With `original` (the model before quantisation), the named layers also get back their original
    biases: NNCF's bias correction shifted them to offset INT8's error, which is an error in float.
    """
    reverted = quantized.clone()
    names = set(layer_names)
    original_ops = {op.get_friendly_name(): op for op in original.get_ordered_ops()} if original is not None else {}
    for op in reverted.get_ordered_ops():
        if op.get_type_name() not in _WEIGHTED_OPS or op.get_friendly_name() not in names:
            continue
        for port in op.inputs():
            # Weights reach a grouped convolution through a Reshape after their FakeQuantize.
            consumer, source = port, port.get_source_output().get_node()
            while source.get_type_name() in _TRANSPARENT_OPS:
                consumer, source = source.input(0), source.input(0).get_source_output().get_node()
            if source.get_type_name() == "FakeQuantize":
                consumer.replace_source_output(source.input_value(0))
        for target in op.output(0).get_target_inputs():
            add = target.get_node()
            before = original_ops.get(add.get_friendly_name())
            if add.get_type_name() != "Add" or before is None or before.get_type_name() != "Add":
                continue
            for index in range(2):
                bias, old_bias = add.input_value(index).get_node(), before.input_value(index).get_node()
                if bias.get_type_name() == "Constant" and old_bias.get_type_name() == "Constant":
                    add.input(index).replace_source_output(
                        ov.op.Constant(old_bias.get_data().copy()).output(0))
    return reverted


def _weighted_layers(model: ov.Model) -> list[str]:
    """The names of the Conv/MatMul layers: what the layer groups and NNCF's scopes are matched against."""
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in _WEIGHTED_OPS]


def _agreement_metric(task: str):
    def frame_argmax_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
        return float((reference.argmax(-1) == candidate.argmax(-1)).mean())

    def mean_cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
        a = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
        b = candidate.reshape(-1, candidate.shape[-1]).astype(np.float64)
        norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
        return float(np.mean(np.where(norms == 0, 1.0, (a * b).sum(-1) / np.maximum(norms, 1e-12))))

    return frame_argmax_agreement if task == "ctc" else mean_cosine_similarity


def _int8_counts(quantized: list[str]) -> dict[str, int]:
    """How many Conv/MatMul layers are INT8 (`quantized`, from `_layer_precisions`), and how many of
    those are where INT8 saves time."""
    return {"quantized_layers": len(quantized), "compute_int8_layers": len(compute_layers(quantized))}


def _layer_precisions(model: ov.Model) -> tuple[list[str], list[str]]:
    """Names of the Conv/MatMul layers whose activations are quantised, and of those left in float."""
    quantized, floating = [], []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _WEIGHTED_OPS:
            continue
        source = op.input(0).get_source_output().get_node()
        while source.get_type_name() in _TRANSPARENT_OPS:
            source = source.input(0).get_source_output().get_node()
        (quantized if source.get_type_name() == "FakeQuantize" else floating).append(op.get_friendly_name())
    return quantized, floating


# ------------------------------------------------------------------------------------------ runner
class OpenVinoRunner(Runner):
    def __init__(self, xml_path: Path, *, config: dict[str, str], input_names: list[str],
                 output_names: list[str], contract: InputContract) -> None:
        self.name = "openvino"
        self.xml_path = xml_path
        self.config = config
        self.input_names = input_names
        self.output_names = output_names
        self.contract = contract  # a fixed one (openvino.static_shape) is compiled for its one shape

    def _activate(self) -> None:
        xml_path = self.xml_path
        rebuild = "the files are corrupt, truncated or were modified; rebuild the artifact"
        for path in (xml_path, xml_path.with_suffix(".bin")):
            if not path.is_file():
                raise HubertExportError(f"OpenVINO model file {path} is missing: rebuild the artifact")
        core = ov.Core()
        try:
            model = core.read_model(str(xml_path))
            window = self.contract.window
            if window is not None:
                model.reshape({name: [window.batch, window.samples] for name in self.input_names})
            self.compiled = core.compile_model(model, "CPU", self.config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            files = f"{xml_path.name}/{xml_path.with_suffix('.bin').name}"
            raise HubertExportError(f"OpenVINO cannot load {files} ({_reason(exc)}): {rebuild}") from None
        self.outputs = [self.compiled.output(n) for n in self.output_names]
        self.request = self.compiled.create_infer_request()

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.contract.check(inputs)
        results = self.request.infer({n: inputs[n] for n in self.input_names})
        return {name: np.array(results[port]) for name, port in zip(self.output_names, self.outputs)}

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None


def _reason(exc: BaseException) -> str:
    """OpenVINO's messages open with source locations ("Exception from src/...", "Check ... failed
    at ..."); the reason is the last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Exception from ", "Check '"))] or lines
    return (lines[-1] if lines else type(exc).__name__)[:200]
