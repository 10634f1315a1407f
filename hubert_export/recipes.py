"""Declarative recipes: one YAML (or JSON) file describes one deployment.

A recipe names the target back end, the precision, the shape range the artifact must accept and
the options of every tool involved. The dataclasses below are the schema: pydantic validates data
against them (`load_recipe`, `recipe_from_dict`, `default_recipe`, `Recipe.with_overrides` all go
through `_validate`), every problem becomes one line naming the file, the field path and the fix,
and `recipe_json_schema()` exports them as JSON Schema for editors (shipped as
recipes/recipe.schema.json; regenerate with `python -m hubert_export.recipes --schema`).

Sections that do not apply to the chosen target or precision (say `calibration` in an FP32 recipe)
are accepted and ignored, so that `--precision fp32` on an INT8 recipe works and every recipe
round-trips through `Recipe.to_dict()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import reprlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
    with_config,
)
from pydantic_core import PydanticCustomError

from hubert_export.audio import MIN_SAMPLES
from hubert_export.errors import HubertExportError
from hubert_export.isa import IsaName
from hubert_export.quantization import DEFAULT_FLOAT_GROUPS, LAYER_GROUPS
from hubert_export.targets import TARGETS, on_change

PrecisionName = Literal["fp32", "fp16", "int8"]
TaskName = Literal["auto", "feature-extraction", "ctc", "sequence-classification"]
PRECISIONS: tuple[str, ...] = get_args(PrecisionName)
TASKS: tuple[str, ...] = get_args(TaskName)

# 18: the oldest opset torch's dynamo exporter writes; 21: the newest every back end here reads.
OPSET_RANGE: tuple[int, int] = (18, 21)
DEFAULT_OPSET = OPSET_RANGE[0]
SAMPLE_RATE = 16_000

# TensorRT layers pinned to FP32 unless a recipe says otherwise, matched with `re.search` against
# layer names (the ONNX node names, "/model/hubert/encoder/layers.3/layer_norm/LayerNormalization").
# The whole first feature-encoder block: un-normalised waveforms (DC offset, near-silence) lose
# their signal in half ahead of the GroupNorm (measured; see hubert_export/precision.py, which
# must list the same patterns); layer norms and softmax on TensorRT's own FP16 guidance.
DEFAULT_FP32_LAYERS: tuple[str, ...] = (
    r"feature_extractor/conv_layers\.0/",
    r"layer_norm|LayerNorm",
    r"[Ss]oftmax",
)

# Recipes are small hand-written files; anything larger is almost certainly the wrong file
# (a model, an audio file) and is refused before parsing.
MAX_RECIPE_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------
# Field types: each is a declaration pydantic enforces and writes into the JSON Schema


def _problem(message: str, at: str = "") -> PydanticCustomError:
    """A validation error with our own wording; `at` extends the field path below the validator's."""
    return PydanticCustomError("recipe", message, {"at": at})


def _whole_float(value: Any) -> Any:
    # Whole floats (17.0, as JSON writers sometimes emit) count as integers; Strict() below keeps
    # booleans and strings out, although Python counts booleans as integers.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _mask_choice(value: Any) -> Any:
    value = _lower(value)
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


def _regex(pattern: str) -> str:
    if not pattern.strip():
        raise _problem("expected a non-empty regular expression")
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise _problem(f"{pattern!r} is not a valid regular expression ({getattr(exc, 'msg', exc)}); "
                       f"escape special characters such as '.' and '[' with a backslash") from None
    return pattern


def _path_text(value: Any) -> Any:
    if isinstance(value, str) and (not value.strip() or "\0" in value):
        raise _problem(f"expected a file path or null, got {_describe(value)}")
    return value


def _resolve(path: Path, info: ValidationInfo) -> Path:
    """Relative paths resolve against the recipe file's directory (when there is one)."""
    path = path.expanduser()
    base_dir = (info.context or {}).get("base_dir")
    return base_dir / path if base_dir is not None and not path.is_absolute() else path


def _smooth_quant_alpha(alpha: float) -> float:
    if alpha != -1 and not 0 <= alpha <= 1:
        raise _problem(f"{alpha:g} is out of range; allowed 0..1, or -1 to disable SmoothQuant")
    return alpha


def _whole(description: str | None = None, **bounds: int) -> Any:
    """An integer field; the bounds sit ahead of Strict/BeforeValidator so that they reach the schema."""
    return Annotated[int, Field(description=description, **bounds), Strict(), BeforeValidator(_whole_float)]


def _number(**bounds: float) -> Any:
    return Annotated[float, Field(allow_inf_nan=False, **bounds), Strict()]


Batch, Count = _whole(ge=1), _whole(ge=1)
Samples = _whole(f"16 kHz samples, 16000 per second; HuBERT's receptive field is {MIN_SAMPLES}", ge=MIN_SAMPLES)
Opset = _whole("18: the oldest opset the exporter writes; 21: the newest every back end reads",
               ge=OPSET_RANGE[0], le=OPSET_RANGE[1])
Threads = _whole("0: the runtime's default", ge=0)
OptimizationLevel = _whole(ge=0, le=5)
Fraction, NonNegative, Cosine = _number(ge=0, le=1), _number(ge=0), _number(ge=-1, le=1)
Positive, Gigabytes = _number(gt=0), _number(gt=0, le=1024)
Alpha = Annotated[float, Field(allow_inf_nan=False, description="0..1, or -1 to disable SmoothQuant"),
                  Strict(), AfterValidator(_smooth_quant_alpha)]
Name = Annotated[str, Field(min_length=1), Strict(), BeforeValidator(_strip)]
FilePath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_resolve)]
Pattern = Annotated[str, Strict(), AfterValidator(_regex)]
Patterns = Annotated[tuple[Pattern, ...], Field(description="regular expressions matched with re.search"),
                     BeforeValidator(lambda v: () if v is None else v)]


def _choice(literal: Any) -> Any:
    """A Literal that also takes any capitalisation and surrounding blanks ("FP16 " -> "fp16")."""
    return Annotated[literal, BeforeValidator(_lower)]


def _known_target(name: str) -> str:
    if name not in TARGETS:
        raise _problem(f"{name!r} is not a target; allowed: {', '.join(TARGETS)}")
    return name


def _target_names(schema: dict[str, Any]) -> None:
    schema["enum"] = list(TARGETS)  # read when the schema is made: back ends registered since count


# A string checked against the back-end registry (hubert_export/targets.py) when a recipe is
# validated, not a Literal fixed at import: a back end registered later is a target too.
Target = Annotated[str, Strict(), BeforeValidator(_lower), AfterValidator(_known_target),
                   Field(json_schema_extra=_target_names)]
DeploymentIsa = Literal[("auto", *get_args(IsaName))]  # type: ignore[valid-type]
LayerGroupName = Literal[tuple(LAYER_GROUPS)]  # type: ignore[valid-type]
LayerGroups = Annotated[tuple[_choice(LayerGroupName), ...],
                        Field(description="layer groups (hubert_export/quantization.py) kept in float by INT8"),
                        BeforeValidator(lambda v: () if v is None else v)]
Precision = _choice(PrecisionName)
Task = _choice(TaskName)

_FORBID_EXTRA = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------
# The schema


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class Shape:
    """One input shape: a batch of `samples`-long 16 kHz waveforms."""

    batch: Batch
    samples: Samples

    def to_dict(self) -> dict[str, int]:
        return {"batch": self.batch, "samples": self.samples}

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


def _check_order(lo: Shape, mid: Shape, hi: Shape, prefix: str) -> None:
    for dim in ("batch", "samples"):
        a, b, c = getattr(lo, dim), getattr(mid, dim), getattr(hi, dim)
        if a > c:
            raise _problem(f"{a} is larger than {prefix}max.{dim} {c}; min <= opt <= max is required",
                           at=f"min.{dim}")
        if not a <= b <= c:
            raise _problem(f"{b} lies outside min..max ({a}..{c}); min <= opt <= max is required",
                           at=f"opt.{dim}")


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class ShapeRange:
    """An inclusive range of input shapes, with the shape the back end should optimise for."""

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, batch: int, samples: int) -> bool:
        return (
            self.min.batch <= batch <= self.max.batch
            and self.min.samples <= samples <= self.max.samples
        )

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {"min": self.min.to_dict(), "opt": self.opt.to_dict(), "max": self.max.to_dict()}

    @property
    def window(self) -> Shape | None:
        """The one shape of a range that allows only one (a LiteRT artifact's window), else None."""
        return self.opt if self.min == self.max else None

    @model_validator(mode="after")
    def _ordered(self) -> ShapeRange:
        _check_order(self.min, self.opt, self.max, prefix="the range's ")
        return self


DEFAULT_SHAPE_RANGE = ShapeRange(
    min=Shape(1, MIN_SAMPLES), opt=Shape(1, 10 * SAMPLE_RATE), max=Shape(16, 60 * SAMPLE_RATE)
)


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class ExportOptions:
    opset: Opset = DEFAULT_OPSET
    output_hidden_states: StrictBool = False
    # "auto": export an attention_mask input only when the checkpoint's feature extractor returns
    # one (HuBERT-large/xlarge do; HuBERT-base, trained without padding masks, does not).
    attention_mask: Annotated[Literal["auto", True, False], BeforeValidator(_mask_choice)] = "auto"
    # "torchscript": torch's tracing exporter (the one Optimum uses), several times faster;
    # "dynamo": torch.export-based, the exporter torch develops going forward. Both are tested.
    exporter: _choice(Literal["torchscript", "dynamo"]) = "torchscript"
    # The weights in an external `<model>.onnx.data` file beside the graph: "auto" when they exceed
    # 1.8 GB (ONNX files cannot exceed protobuf's 2 GB: hubert-xlarge, XLS-R 1B/2B), "always",
    # or "never" (refused for a model over 2 GB). docs/large-models.md.
    external_data: _choice(Literal["auto", "always", "never"]) = "auto"


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class Shapes:
    min: Shape = DEFAULT_SHAPE_RANGE.min
    opt: Shape = DEFAULT_SHAPE_RANGE.opt
    max: Shape = DEFAULT_SHAPE_RANGE.max
    # Extra TensorRT optimisation profiles; each lies inside min..max.
    profiles: Annotated[tuple[ShapeRange, ...], BeforeValidator(lambda v: () if v is None else v)] = ()

    @property
    def range(self) -> ShapeRange:
        return ShapeRange(self.min, self.opt, self.max)

    def contains(self, batch: int, samples: int) -> bool:
        return self.range.contains(batch, samples)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """A dim left out takes its default, moved inside the dims that are given.

        So `max: {samples: 80000}` alone gives opt.samples 80000 rather than an "opt > max" error
        about a value the user never wrote. The defaults are the recipe's own range when the CLI
        overrides some dims of it.
        """
        if not isinstance(data, Mapping):
            return data
        defaults: ShapeRange = (info.context or {}).get("shape_defaults", DEFAULT_SHAPE_RANGE)
        slots = {slot: {} if data.get(slot) is None else data[slot] for slot in ("min", "opt", "max")}
        if not all(isinstance(s, Mapping) for s in slots.values()):
            return data  # pydantic reports the bad slot
        slots = {slot: dict(s) for slot, s in slots.items()}
        for dim in ("batch", "samples"):
            given = {slot: _whole_float(s[dim]) for slot, s in slots.items() if dim in s}
            # Only valid values steer the others; pydantic reports the bad ones.
            floor = 1 if dim == "batch" else MIN_SAMPLES
            valid = {k: v for k, v in given.items() if type(v) is int and v >= floor}
            d_lo, d_mid, d_hi = (getattr(getattr(defaults, slot), dim) for slot in ("min", "opt", "max"))
            lo = valid.get("min", min([d_lo, *valid.values()]))
            hi = valid.get("max", max([d_hi, *valid.values()]))
            mid = valid.get("opt", min(max(d_mid, lo), hi))
            for slot, value in zip(("min", "opt", "max"), (lo, mid, hi)):
                slots[slot].setdefault(dim, value)
        return {**data, **slots}

    @model_validator(mode="after")
    def _profiles_inside(self) -> Shapes:
        _check_order(self.min, self.opt, self.max, prefix="shapes.")
        main = self.range
        for i, profile in enumerate(self.profiles):
            for slot in ("min", "max"):
                s = getattr(profile, slot)
                if not main.contains(s.batch, s.samples):
                    raise _problem(f"{s.batch}x{s.samples} lies outside the shape range {_fmt_range(main)} "
                                   f"(shapes.min..shapes.max); widen shapes.min/max or shrink the profile",
                                   at=f"profiles.[{i}].{slot}")
        return self


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class CalibrationOptions:
    data: FilePath | None = None  # None: the built-in calibration set
    subset_size: Count = 300
    method: _choice(Literal["dynamic", "static"]) = "static"
    preset: _choice(Literal["performance", "mixed"]) = "mixed"
    # -1 (the default) disables SmoothQuant; None: NNCF's own default (on, for transformers). Measured
    # on random-init hubert-base with the default float groups: SmoothQuant on left one-frame inputs
    # at relative L2 0.45 and a 3-frame input at argmax agreement 0.33; off, 0.16 and 1.00 (OpenVINO).
    smooth_quant_alpha: Alpha | None = -1.0
    ignored_scopes: Patterns = ()
    # Layer groups left in float (their activations and weights), besides ignored_scopes: by
    # default the feature-encoder convolutions, measured as where INT8's error comes from (see
    # hubert_export/quantization.py). [] quantises every Conv and MatMul: fastest, least accurate.
    float_groups: LayerGroups = DEFAULT_FLOAT_GROUPS
    fast_bias_correction: StrictBool = True
    max_accuracy_drop: Fraction | None = None  # set: NNCF accuracy-controlled quantisation
    # 7-bit weights against the 16-bit saturation of INT8 products on CPUs without VNNI
    # (hubert_export/isa.py): enable everywhere (ONNX Runtime's reduce_range, NNCF's overflow_fix),
    # first_layer (NNCF's default; ONNX Runtime: 8 bits), disable, or auto: as the deployment ISA needs.
    overflow_fix: _choice(Literal["auto", "enable", "first_layer", "disable"]) = "auto"


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class OnnxRuntimeOptions:
    intra_op_threads: Threads = 0  # 0: ONNX Runtime's default (one per physical core)
    graph_optimization_level: _choice(Literal["disable", "basic", "extended", "all"]) = "all"
    # Bake ONNX Runtime's fusions into the FP32 file at build time: for runtimes that cannot
    # optimise at load (minimal / mobile builds). On a full ONNX Runtime the session does the same
    # fusions at load, and baking them in measured no faster (see the ONNX Runtime back end).
    offline_fusions: StrictBool = False


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class OpenVinoOptions:
    performance_hint: _choice(Literal["latency", "throughput"]) = "latency"
    num_threads: Threads = 0  # 0: OpenVINO's default
    cache_dir: FilePath | None = None
    # Some devices (NPU, older GPUs) compile only static shapes; set to reshape the model to one.
    static_shape: Shape | None = None
    # What the layers that are not INT8 compute in. auto: bf16 for INT8 artifacts (their float feature
    # encoder is most of an INT8 hubert-base's time; bf16 cost the gate nothing measurable), f32 for
    # FP32 and FP16 (FP16 in bf16 failed the FP16 gate's argmax agreement on random-init hubert-base).
    # auto means f32 where the deployment ISA lacks bf16 instructions (the CPU computes f32 there
    # whatever this says).
    inference_precision: _choice(Literal["auto", "f32", "bf16"]) = "auto"


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class TensorRtOptions:
    workspace_gb: Gigabytes = 4.0
    builder_optimization_level: OptimizationLevel = 3
    timing_cache: FilePath | None = None  # None: ~/.cache/hubert-export/tensorrt/, per TRT version and GPU
    fp32_layers: Patterns = DEFAULT_FP32_LAYERS
    # Off by default so that FP32 engines and the FP32-pinned layers of FP16 engines keep full
    # FP32 precision (TF32 keeps only 10 mantissa bits).
    tf32: StrictBool = False


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class LiteRtOptions:
    # Built for shapes.opt only: LiteRT models are fixed-shape (see the LiteRT back end).
    num_threads: Threads = 0  # 0: the interpreter's default


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class ExecuTorchOptions:
    # Batch fixed at shapes.opt.batch, audio length dynamic over shapes.min..max (see the back end).
    num_threads: Threads = 0  # 0: XNNPACK's default thread pool


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class VerificationOptions:
    # Store the parity cases' inputs and reference outputs in the artifact, so that
    # `check --golden` needs neither torch nor the checkpoint; "auto": unless they exceed
    # golden_max_mb.
    golden: _choice(Literal["auto", "always", "never"]) = "auto"
    golden_max_mb: Positive = 64.0


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class Thresholds:
    """Parity thresholds; None takes the parity harness's per-precision default."""

    # Agreements and similarities are fractions; errors and error rates are only non-negative
    # (an edit rate can exceed 1 when the output inserts more tokens than the reference has).
    max_abs_error: NonNegative | None = None
    mean_abs_error: NonNegative | None = None
    relative_l2_error: NonNegative | None = None
    min_cosine_similarity: Cosine | None = None
    min_argmax_agreement: Fraction | None = None
    max_token_edit_rate: NonNegative | None = None
    min_top1_agreement: Fraction | None = None
    max_cer: NonNegative | None = None
    max_wer: NonNegative | None = None

    def explicit(self) -> dict[str, float]:
        """Only the thresholds the recipe sets, to lay over the harness's defaults."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


_SECTIONS: dict[str, type] = {
    "export": ExportOptions,
    "shapes": Shapes,
    "calibration": CalibrationOptions,
    "onnxruntime": OnnxRuntimeOptions,
    "openvino": OpenVinoOptions,
    "tensorrt": TensorRtOptions,
    "litert": LiteRtOptions,
    "executorch": ExecuTorchOptions,
    "verification": VerificationOptions,
    "thresholds": Thresholds,
}


@with_config(_FORBID_EXTRA)
@dataclass(frozen=True)
class Recipe:
    """One deployment. Build it with load_recipe / recipe_from_dict / default_recipe, which validate."""

    target: Target
    precision: Precision  # left out or null: DEFAULT_PRECISION[target]
    name: Name = "recipe"  # left out: the file's stem
    description: Annotated[str, Strict()] = ""
    task: Task = "auto"
    # The CPU the artifact is for, which decides INT8 arithmetic (hubert_export/isa.py); auto: this machine's.
    deployment_isa: _choice(DeploymentIsa) = "auto"
    export: ExportOptions = field(default_factory=ExportOptions)
    shapes: Shapes = field(default_factory=Shapes)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    onnxruntime: OnnxRuntimeOptions = field(default_factory=OnnxRuntimeOptions)
    openvino: OpenVinoOptions = field(default_factory=OpenVinoOptions)
    tensorrt: TensorRtOptions = field(default_factory=TensorRtOptions)
    litert: LiteRtOptions = field(default_factory=LiteRtOptions)
    executorch: ExecuTorchOptions = field(default_factory=ExecuTorchOptions)
    verification: VerificationOptions = field(default_factory=VerificationOptions)
    thresholds: Thresholds = field(default_factory=Thresholds)
    # Where the recipe came from, for error messages; not part of the recipe's content.
    source: str = field(default="<dict>", compare=False)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data
        if "source" in data:
            raise PydanticCustomError("unexpected_keyword_argument", "unknown field", {"at": "source"})
        # An empty YAML section (`calibration:`) is null: the section's defaults.
        data = {k: v for k, v in data.items() if not (k in _SECTIONS and v is None)}
        if data.get("precision") is None and isinstance(data.get("target"), str):
            spec = TARGETS.get(_lower(data["target"]))
            data["precision"] = spec.default_precision if spec else None
        if data.get("name") is None:
            data["name"] = (info.context or {}).get("default_name", "recipe")
        if data.get("description") is None:
            data["description"] = ""
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        allowed = TARGETS[self.target].precisions
        if self.precision not in allowed:
            raise _problem(f"{self.precision!r} is not supported for target {self.target!r}; "
                           f"allowed: {', '.join(allowed)}", at="precision")
        static = self.openvino.static_shape
        if static is not None and not self.shapes.contains(static.batch, static.samples):
            raise _problem(f"{static.batch}x{static.samples} lies outside the shape range "
                           f"{_fmt_range(self.shapes.range)} (shapes.min..shapes.max); "
                           f"choose a static shape inside it", at="openvino.static_shape")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able data that `recipe_from_dict` turns back into an equal Recipe."""
        return _adapter().dump_python(self, mode="json", exclude={"source"})

    def with_overrides(self, **flat: Any) -> Recipe:
        """A new, validated Recipe with some values replaced (the CLI's flags over the recipe).

        Keys are field paths: "precision", "export.opset" (or "export__opset" as a keyword), or a
        bare field name when only one section has it ("opset", "workspace_gb"). None values are
        skipped, so an argparse namespace of unset flags can be passed straight through.
        """
        data = self.to_dict()
        # Shape dims not overridden are dropped and refilled from this recipe's range by the same
        # rule that fills defaults, so "--max-samples 80000" pulls opt down to 80000 instead of
        # failing on the recipe's own opt of 160000.
        for slot in ("min", "opt", "max"):
            data["shapes"][slot] = {}
        changed = False
        for key, value in flat.items():
            if value is None:
                continue
            path = _override_path(key, self.source)
            node = data
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = str(value) if isinstance(value, Path) else value
            changed = True
        if not changed:
            return self
        # A new target without a new precision keeps the recipe's precision when that target
        # supports it and otherwise takes the target's default: an INT8 ONNX recipe retargeted to
        # TensorRT (which has no INT8 path here) becomes FP16 instead of failing.
        if flat.get("target") is not None and flat.get("precision") is None:
            target = data["target"]
            if target in TARGETS and data["precision"] not in TARGETS[target].precisions:
                data["precision"] = TARGETS[target].default_precision
        return _validate(data, f"recipe {self.source} with command-line overrides", self.source,
                         default_name=self.name, shape_defaults=self.shapes.range)


def _fmt_range(r: ShapeRange) -> str:
    return f"{r.min.batch}x{r.min.samples}..{r.max.batch}x{r.max.samples}"


# --------------------------------------------------------------------------------------------
# Public entry points


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; relative paths in it resolve against its directory."""
    path = Path(path)
    label = f"recipe {path}"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)  # not the whole of a model file passed by mistake
    except FileNotFoundError:
        raise HubertExportError(f"{label} does not exist: pass the path of a recipe YAML file "
                                f"(the shipped ones are in recipes/)") from None
    except IsADirectoryError:
        raise HubertExportError(f"{label} is a directory: pass the path of a recipe YAML file") from None
    except OSError as exc:
        raise HubertExportError(f"{label} cannot be read ({exc.strerror}): "
                                f"check the path and its permissions") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise HubertExportError(f"{label} is larger than {MAX_RECIPE_BYTES // 1024} KiB, so it is not a "
                                f"recipe (a model or audio file?): pass a recipe YAML file")
    if b"\0" in raw:
        raise HubertExportError(f"{label} is a binary file, not a recipe (a model or audio file?): "
                                f"pass a recipe YAML file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HubertExportError(f"{label} is not UTF-8 text (bad byte at offset {exc.start}): "
                                f"save it as UTF-8") from None
    data = _parse_text(text, label, json_only=path.suffix.lower() == ".json")
    if data is None:
        raise HubertExportError(f"{label} is empty: it needs at least 'target:' "
                                f"(one of {', '.join(TARGETS)})")
    return _validate(data, label, str(path), base_dir=path.resolve().parent, default_name=path.stem)


def recipe_from_dict(data: Any, source: str = "<dict>", base_dir: str | Path | None = None) -> Recipe:
    """Validate already-parsed recipe data; relative paths resolve against `base_dir` when given."""
    default_name = Path(source).stem if source and not source.startswith("<") else "recipe"
    return _validate(data, f"recipe {source}", source, base_dir=Path(base_dir) if base_dir else None,
                     default_name=default_name or "recipe")


def default_recipe(target: str, precision: str | None = None) -> Recipe:
    """The recipe used when the CLI gets only --target (and maybe --precision)."""
    data: dict[str, Any] = {"target": target}
    if precision is not None:
        data["precision"] = precision
    name = f"{target}-{precision or (TARGETS[target].default_precision if target in TARGETS else 'default')}"
    return _validate(data, "--target/--precision", "<command line>", default_name=name)


def recipe_json_schema() -> dict[str, Any]:
    """The recipe schema as JSON Schema (draft 2020-12), for editors and other tools."""
    schema = _adapter().json_schema()
    defs = schema["$defs"]
    # What the validator fills in is optional in a file: precision (from the target), and the
    # dims of shapes.min/opt/max (from the defaults, see Shapes._fill_defaults).
    del schema["properties"]["source"]
    schema["required"] = ["target"]
    schema["properties"]["precision"] = {
        "anyOf": [schema["properties"]["precision"], {"type": "null"}],
        "description": "null or left out: " + ", ".join(f"{s.default_precision} for {t}" for t, s in TARGETS.items()),
    }
    defs["PartialShape"] = {k: v for k, v in defs["Shape"].items() if k != "required"} | {"title": "PartialShape"}
    for slot in ("min", "opt", "max"):
        defs["Shapes"]["properties"][slot]["$ref"] = "#/$defs/PartialShape"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema"} | schema | {
        "title": "hubert-export recipe",
        "description": "One deployment of a HuBERT checkpoint; see docs/recipes.md."}


def _parse_text(text: str, label: str, json_only: bool) -> Any:
    if json_only:
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise HubertExportError(f"{label}: invalid JSON at line {exc.lineno} column {exc.colno} "
                                    f"({exc.msg}): fix the syntax") from None
        except RecursionError:
            raise HubertExportError(f"{label}: nested too deeply to be a recipe: fix the file") from None
    import yaml  # pyyaml is cheap, but only recipe users need it

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            where = f" at line {exc.problem_mark.line + 1} column {exc.problem_mark.column + 1}"
        problem = exc.problem or exc.context or "syntax error"
        raise HubertExportError(f"{label}: invalid YAML{where} ({problem}): fix the syntax "
                                f"(indent with spaces, quote strings containing ':')") from None
    except yaml.YAMLError as exc:
        raise HubertExportError(f"{label}: invalid YAML ({exc}): fix the syntax") from None
    except RecursionError:
        raise HubertExportError(f"{label}: nested too deeply to be a recipe: fix the file") from None


# --------------------------------------------------------------------------------------------
# Validation and its one-line errors


@functools.cache
def _adapter() -> TypeAdapter[Recipe]:
    return TypeAdapter(Recipe)


@functools.cache
def _schema() -> dict[str, Any]:
    return _adapter().json_schema()


on_change(_schema.cache_clear)  # the schema lists the registered targets


def _validate(data: Any, label: str, source: str, *, base_dir: Path | None = None,
              default_name: str = "recipe", shape_defaults: ShapeRange = DEFAULT_SHAPE_RANGE) -> Recipe:
    context = {"base_dir": base_dir, "default_name": default_name, "shape_defaults": shape_defaults}
    try:
        recipe = _adapter().validate_python(data, context=context)
    except ValidationError as exc:
        raise HubertExportError(f"{label}: {_one_line(exc.errors()[0])}") from None
    except RecursionError:
        raise HubertExportError(f"{label}: nested too deeply to be a recipe: fix the file") from None
    return dataclasses.replace(recipe, source=source)


def _one_line(error: Mapping[str, Any]) -> str:
    """One pydantic error as "field a.b.c: problem; fix"."""
    ctx = error.get("ctx") or {}
    loc = tuple(error["loc"]) + tuple(p for p in ctx.get("at", "").split(".") if p)
    kind, value, path = error["type"], error.get("input"), _fmt_path(loc)
    where = f"field {path}: " if path else ""
    node = _schema_at(loc)
    if kind == "recipe":
        return where + error["msg"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        key, parent = loc[-1], loc[:-1]
        allowed = _fields_at(parent)
        section = f"in section {_fmt_path(parent)!r}" if parent else "at the top level"
        hint = _did_you_mean(key, allowed) or _misplaced(key, parent)
        return f"unknown field {key!r} {section}{hint}; allowed: {', '.join(allowed)}"
    if kind == "invalid_key":
        return f"field names must be strings, got {_describe(value)}; allowed: {', '.join(_fields_at(loc[:-1]))}"
    if kind == "missing":
        return f"{where}missing; {_required_hint(loc[-1])}"
    if kind in ("dataclass_type", "dataclass_args_type", "dict_type", "model_type"):
        if not loc:
            return f"the top level must be a mapping of fields (target: ..., precision: ...), got {_describe(value)}"
        return f"{where}expected a mapping with fields {', '.join(_fields_at(loc))}; got {_describe(value)}"
    if kind == "literal_error":
        choices = [_yaml_scalar(c) for c in node.get("enum", [node.get("const")])]
        hint = _did_you_mean(_lower(value), choices) if isinstance(value, str) else ""
        return f"{where}got {_describe(value)}{hint}; allowed: {', '.join(choices)}"
    hint = f" ({node['description']})" if "description" in node else ""
    bounds = _bounds(node)
    if kind.startswith(("greater_than", "less_than")):
        return f"{where}{value:g} is out of range; allowed{bounds}{hint}"
    if kind.startswith("int_"):
        return f"{where}expected a whole number{bounds}, got {_describe(value)}{hint}"
    if kind.startswith("float_") or kind == "finite_number":
        finite = "finite " if kind == "finite_number" else ""
        return f"{where}expected a {finite}number{bounds}, got {_describe(value)}{hint}"
    if kind == "bool_type":
        return f"{where}expected true or false, got {_describe(value)}"
    if kind in ("string_type", "string_too_short"):
        non_empty = "non-empty " if kind == "string_too_short" else ""
        return f"{where}expected a {non_empty}string, got {_describe(value)}"
    if kind in ("tuple_type", "list_type"):
        items = "{min, opt, max} shape ranges" if loc[-1] == "profiles" else "name patterns (regular expressions)"
        return f"{where}expected a list of {items}, got {_describe(value)}"
    if kind.startswith("path_"):
        return f"{where}expected a file path or null, got {_describe(value)}"
    return f"{where}{error['msg']}, got {_describe(value)}"


def _schema_at(loc: tuple[Any, ...]) -> dict[str, Any]:
    """The JSON Schema node of the field at `loc` ({} when the path leaves the schema)."""
    schema = _schema()
    node: dict[str, Any] = schema

    def resolve(n: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in n:
            n = schema["$defs"][n["$ref"].rsplit("/", 1)[-1]]
        not_null = [b for b in n.get("anyOf", []) if b.get("type") != "null"]
        return {**resolve(not_null[0]), **{k: v for k, v in n.items() if k != "anyOf"}} if not_null else n

    for part in loc:
        node = resolve(node)
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
    return resolve(node)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    return [name for name in _schema_at(loc).get("properties", {}) if name != "source"]


def _bounds(node: Mapping[str, Any]) -> str:
    lo, hi, lo_open = node.get("minimum"), node.get("maximum"), "exclusiveMinimum" in node
    lo = node.get("exclusiveMinimum", lo)
    if lo is not None and hi is not None:
        return f" {lo:g}..{hi:g}" if not lo_open else f" > {lo:g} and <= {hi:g}"
    if lo is not None:
        return f" > {lo:g}" if lo_open else f" >= {lo:g}"
    return f" <= {hi:g}" if hi is not None else ""


def _yaml_scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _required_hint(key: Any) -> str:
    if key == "target":
        return f"set target: to one of {', '.join(TARGETS)}"
    if key in ("batch", "samples"):
        return "a shape needs both batch and samples (samples at 16 kHz: 16000 per second)"
    return "add it"


def _misplaced(key: str, parent: tuple[Any, ...]) -> str:
    here = _fmt_path(parent)
    for candidate in _all_field_paths():
        section, _, leaf = candidate.rpartition(".")
        if leaf == key and section != here:
            return f" (did you mean {candidate!r}?)"
    return ""


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlevel = 2
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 4


def _describe(value: Any) -> str:
    """A short, safe rendering of a bad value (it may be a huge or deeply nested structure)."""
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)
    try:
        text = _short.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr breaks must still produce a message
        text = "<unprintable>"
    return f"{text} ({kind})"


def _fmt_path(path: tuple[Any, ...]) -> str:
    out = ""
    for part in map(str, path):
        if part.startswith("[") or part.isdigit():
            out += part if part.startswith("[") else f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


# --------------------------------------------------------------------------------------------
# Overrides


def _all_field_paths() -> list[str]:
    """Every leaf field path an override may name ("precision", "export.opset", "shapes.max.batch")."""
    paths = [f.name for f in dataclasses.fields(Recipe) if f.compare and f.name not in _SECTIONS]
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            if section == "shapes" and f.name in ("min", "opt", "max"):
                paths += [f"shapes.{f.name}.batch", f"shapes.{f.name}.samples"]
            else:  # openvino.static_shape: null or a whole {batch, samples}
                paths.append(f"{section}.{f.name}")
    return paths


def _override_path(key: str, source: str) -> list[str]:
    dotted = key.replace("__", ".")
    paths = _all_field_paths()
    if dotted in paths:
        return dotted.split(".")
    by_leaf = [p for p in paths if p.rsplit(".", 1)[-1] == dotted]
    if len(by_leaf) == 1:
        return by_leaf[0].split(".")
    if by_leaf:
        raise HubertExportError(f"recipe override {key!r} is ambiguous: name the full field path, "
                                f"one of {', '.join(by_leaf)}")
    suggestion = _did_you_mean(dotted, paths)
    if not suggestion:
        # "opst" is far from "export.opset" as a whole but close to its last part
        close = difflib.get_close_matches(dotted, [p.rsplit(".", 1)[-1] for p in paths], n=1, cutoff=0.6)
        owners = [p for p in paths if close and p.rsplit(".", 1)[-1] == close[0]]
        if owners:
            suggestion = f" (did you mean {' or '.join(repr(p) for p in owners)}?)"
    raise HubertExportError(f"recipe {source}: unknown override {key!r}{suggestion}; "
                            f"overrides are field paths like 'precision', 'export.opset', "
                            f"'shapes.max.samples'")


if __name__ == "__main__":
    if sys.argv[1:] != ["--schema"]:
        sys.exit("usage: python -m hubert_export.recipes --schema > recipes/recipe.schema.json")
    print(json.dumps(recipe_json_schema(), indent=2))
