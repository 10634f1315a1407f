"""Declarative recipes: one YAML (or JSON) file describes one deployment.

A recipe names the target back end, the precision, the shape range the artifact must accept and
the options of every tool involved. It is validated along exactly one path, `_RecipeParser`, which
is used by `load_recipe`, `recipe_from_dict`, `default_recipe` and `Recipe.with_overrides`: a value
that passes there is valid everywhere, and every problem is reported as one line naming the file,
the field path and what is allowed.

Schema (defaults in brackets):

    name: str                          [file stem]
    description: str                   ['']
    task: feature-extraction | ctc | sequence-classification | auto   [auto]
    target: onnx | openvino | tensorrt | litert | executorch           (required)
    precision: fp32 | fp16 | int8      [fp32 for onnx/openvino/litert/executorch, fp16 for tensorrt]
    export: {opset [18], output_hidden_states [false], attention_mask [auto], exporter [torchscript]}
    shapes: {min [1, 400], opt [1, 160000], max [16, 960000], profiles [[]]}
    calibration: {data, subset_size, method, preset, smooth_quant_alpha, ignored_scopes,
                  fast_bias_correction, max_accuracy_drop}                         (INT8 only)
    onnxruntime: {intra_op_threads, graph_optimization_level, offline_fusions [false]}
    openvino: {performance_hint, num_threads, cache_dir, static_shape}
    tensorrt: {workspace_gb, builder_optimization_level, timing_cache, fp32_layers}
    litert: {num_threads [0]}          (built for shapes.opt only)
    executorch: {num_threads [0]}      (batch fixed at shapes.opt.batch, samples min..max)
    thresholds: {max_abs_error, mean_abs_error, relative_l2_error, min_cosine_similarity,
                 min_argmax_agreement, max_token_edit_rate, min_top1_agreement, max_cer, max_wer}

Sections that do not apply to the chosen target or precision (say `calibration` in an FP32 recipe)
are accepted and ignored, so that `--precision fp32` on an INT8 recipe works and every recipe
round-trips through `Recipe.to_dict()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from hubert_export.errors import HubertExportError

TARGETS: tuple[str, ...] = ("onnx", "openvino", "tensorrt", "litert", "executorch")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
TASKS: tuple[str, ...] = ("auto", "feature-extraction", "ctc", "sequence-classification")

# ONNX Runtime FP16 runs only on its CUDA / TensorRT execution providers; the back end checks that.
PRECISIONS_BY_TARGET: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "int8", "fp16"),
    "openvino": ("fp32", "fp16", "int8"),
    "tensorrt": ("fp16", "fp32"),
    "litert": ("fp32", "fp16", "int8"),
    "executorch": ("fp32", "int8"),
}
DEFAULT_PRECISION: dict[str, str] = {"onnx": "fp32", "openvino": "fp32", "tensorrt": "fp16", "litert": "fp32",
                                     "executorch": "fp32"}

# 18: the oldest opset torch's dynamo exporter writes; 21: the newest every back end here reads.
OPSET_RANGE: tuple[int, int] = (18, 21)
SAMPLE_RATE = 16_000
# HuBERT's convolutional feature encoder has a receptive field of 400 samples (25 ms): shorter
# input produces zero frames and the model fails.
MIN_SAMPLES = 400

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
# The dataclass tree


@dataclass(frozen=True)
class Shape:
    """One input shape: a batch of `samples`-long 16 kHz waveforms."""

    batch: int
    samples: int

    def to_dict(self) -> dict[str, int]:
        return {"batch": self.batch, "samples": self.samples}

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


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


DEFAULT_SHAPE_RANGE = ShapeRange(
    min=Shape(1, MIN_SAMPLES), opt=Shape(1, 10 * SAMPLE_RATE), max=Shape(16, 60 * SAMPLE_RATE)
)


@dataclass(frozen=True)
class ExportOptions:
    opset: int = 18
    output_hidden_states: bool = False
    # "auto": export an attention_mask input only when the checkpoint's feature extractor returns
    # one (HuBERT-large/xlarge do; HuBERT-base, trained without padding masks, does not).
    attention_mask: Literal["auto"] | bool = "auto"
    # "torchscript": torch's tracing exporter (the one Optimum uses), several times faster;
    # "dynamo": torch.export-based, the exporter torch develops going forward. Both are tested.
    exporter: Literal["torchscript", "dynamo"] = "torchscript"


@dataclass(frozen=True)
class Shapes:
    min: Shape = DEFAULT_SHAPE_RANGE.min
    opt: Shape = DEFAULT_SHAPE_RANGE.opt
    max: Shape = DEFAULT_SHAPE_RANGE.max
    # Extra TensorRT optimisation profiles; each lies inside min..max.
    profiles: tuple[ShapeRange, ...] = ()

    @property
    def range(self) -> ShapeRange:
        return ShapeRange(self.min, self.opt, self.max)

    def contains(self, batch: int, samples: int) -> bool:
        return self.range.contains(batch, samples)


@dataclass(frozen=True)
class CalibrationOptions:
    data: Path | None = None  # None: the built-in calibration set
    subset_size: int = 300
    method: Literal["dynamic", "static"] = "static"
    preset: Literal["performance", "mixed"] = "mixed"
    smooth_quant_alpha: float | None = None  # None: NNCF's default; -1 disables SmoothQuant
    ignored_scopes: tuple[str, ...] = ()
    fast_bias_correction: bool = True
    max_accuracy_drop: float | None = None  # set: NNCF accuracy-controlled quantisation


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    # Bake ONNX Runtime's fusions into the FP32 file at build time: for runtimes that cannot
    # optimise at load (minimal / mobile builds). On a full ONNX Runtime the session does the same
    # fusions at load, and baking them in measured no faster (see the ONNX Runtime back end).
    offline_fusions: bool = False


@dataclass(frozen=True)
class OpenVinoOptions:
    performance_hint: Literal["latency", "throughput"] = "latency"
    num_threads: int = 0  # 0: OpenVINO's default
    cache_dir: Path | None = None
    # Some devices (NPU, older GPUs) compile only static shapes; set to reshape the model to one.
    static_shape: Shape | None = None


@dataclass(frozen=True)
class TensorRtOptions:
    workspace_gb: float = 4.0
    builder_optimization_level: int = 3
    timing_cache: Path | None = None  # None: ~/.cache/hubert-export/tensorrt/, per TRT version and GPU
    fp32_layers: tuple[str, ...] = DEFAULT_FP32_LAYERS


@dataclass(frozen=True)
class LiteRtOptions:
    num_threads: int = 0  # 0: the interpreter's default


@dataclass(frozen=True)
class ExecuTorchOptions:
    num_threads: int = 0  # 0: XNNPACK's default thread pool (one thread per core)


@dataclass(frozen=True)
class Thresholds:
    """Parity thresholds; None takes the parity harness's per-precision default."""

    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    relative_l2_error: float | None = None
    min_cosine_similarity: float | None = None
    min_argmax_agreement: float | None = None
    max_token_edit_rate: float | None = None
    min_top1_agreement: float | None = None
    max_cer: float | None = None
    max_wer: float | None = None

    def explicit(self) -> dict[str, float]:
        """Only the thresholds the recipe sets, to lay over the harness's defaults."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Recipe:
    """One deployment. Build it with load_recipe / recipe_from_dict / default_recipe, which validate."""

    target: Literal["onnx", "openvino", "tensorrt", "litert", "executorch"]
    precision: Literal["fp32", "fp16", "int8"]
    name: str = "recipe"
    description: str = ""
    task: Literal["auto", "feature-extraction", "ctc", "sequence-classification"] = "auto"
    export: ExportOptions = field(default_factory=ExportOptions)
    shapes: Shapes = field(default_factory=Shapes)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    onnxruntime: OnnxRuntimeOptions = field(default_factory=OnnxRuntimeOptions)
    openvino: OpenVinoOptions = field(default_factory=OpenVinoOptions)
    tensorrt: TensorRtOptions = field(default_factory=TensorRtOptions)
    litert: LiteRtOptions = field(default_factory=LiteRtOptions)
    executorch: ExecuTorchOptions = field(default_factory=ExecuTorchOptions)
    thresholds: Thresholds = field(default_factory=Thresholds)
    # Where the recipe came from, for error messages; not part of the recipe's content.
    source: str = field(default="<dict>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able data that `recipe_from_dict` turns back into an equal Recipe."""
        return _to_plain({f.name: getattr(self, f.name) for f in _content_fields(Recipe)})

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
            node[path[-1]] = _to_plain(value)
            changed = True
        if not changed:
            return self
        # A new target without a new precision keeps the recipe's precision when that target
        # supports it and otherwise takes the target's default: an INT8 ONNX recipe retargeted to
        # TensorRT (which has no INT8 path here) becomes FP16 instead of failing.
        if flat.get("target") is not None and flat.get("precision") is None:
            target = data["target"]
            if target in PRECISIONS_BY_TARGET and data["precision"] not in PRECISIONS_BY_TARGET[target]:
                data["precision"] = DEFAULT_PRECISION[target]
        label = f"recipe {self.source} with command-line overrides"
        parser = _RecipeParser(label, base_dir=None, default_name=self.name, shape_defaults=self.shapes.range)
        return parser.recipe(data, self.source)


def _content_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.compare]


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in _content_fields(type(value))}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


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
    parser = _RecipeParser(label, base_dir=path.resolve().parent, default_name=path.stem)
    return parser.recipe(data, str(path))


def recipe_from_dict(data: Any, source: str = "<dict>", base_dir: str | Path | None = None) -> Recipe:
    """Validate already-parsed recipe data; relative paths resolve against `base_dir` when given."""
    default_name = Path(source).stem if source and not source.startswith("<") else "recipe"
    parser = _RecipeParser(f"recipe {source}", base_dir=Path(base_dir) if base_dir else None,
                           default_name=default_name or "recipe")
    return parser.recipe(data, source)


def default_recipe(target: str, precision: str | None = None) -> Recipe:
    """The recipe used when the CLI gets only --target (and maybe --precision)."""
    data: dict[str, Any] = {"target": target}
    if precision is not None:
        data["precision"] = precision
    name = f"{target}-{precision or DEFAULT_PRECISION.get(target, 'default')}"
    parser = _RecipeParser("--target/--precision", base_dir=None, default_name=name)
    return parser.recipe(data, "<command line>")


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
# Overrides


def _section_types() -> dict[str, type]:
    return {
        "export": ExportOptions,
        "shapes": Shapes,
        "calibration": CalibrationOptions,
        "onnxruntime": OnnxRuntimeOptions,
        "openvino": OpenVinoOptions,
        "tensorrt": TensorRtOptions,
        "litert": LiteRtOptions,
        "executorch": ExecuTorchOptions,
        "thresholds": Thresholds,
    }


def _all_field_paths() -> list[str]:
    """Every leaf field path an override may name ("precision", "export.opset", "shapes.max.batch")."""
    paths = [f.name for f in _content_fields(Recipe) if f.name not in _section_types()]
    for section, cls in _section_types().items():
        for f in _content_fields(cls):
            if section == "shapes" and f.name in ("min", "opt", "max"):
                paths += [f"shapes.{f.name}.batch", f"shapes.{f.name}.samples"]
            elif section == "openvino" and f.name == "static_shape":
                paths.append("openvino.static_shape")  # null or a whole {batch, samples}
            else:
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


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------------------------
# Validation: the one path every recipe goes through

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlevel = 2
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 4


def _describe(value: Any) -> str:
    """A short, safe rendering of a bad value (it may be a huge or deeply nested structure)."""
    kind = {
        type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
        list: "list", dict: "mapping",
    }.get(type(value), type(value).__name__)
    if value is None:
        return "null"
    try:
        text = _short.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr breaks must still produce a message
        text = "<unprintable>"
    return f"{text} ({kind})"


def _fmt_path(path: tuple[str, ...]) -> str:
    out = ""
    for part in path:
        out += part if part.startswith("[") else (f".{part}" if out else part)
    return out


class _RecipeParser:
    """Turns untrusted data into a Recipe or raises one HubertExportError naming the field."""

    def __init__(self, label: str, base_dir: Path | None, default_name: str,
                 shape_defaults: ShapeRange = DEFAULT_SHAPE_RANGE) -> None:
        self.label = label
        self.base_dir = base_dir
        self.default_name = default_name
        self.shape_defaults = shape_defaults

    # ---- reporting

    def fail(self, path: tuple[str, ...], problem: str) -> HubertExportError:
        where = f"{_fmt_path(path)}: " if path else ""
        return HubertExportError(f"{self.label}: {where}{problem}")

    def mapping(self, value: Any, path: tuple[str, ...], allowed: list[str], *,
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        """`value` as a dict whose keys are all in `allowed` (None counts as an empty section)."""
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            if not path:
                raise self.fail(path, f"the top level must be a mapping of fields "
                                      f"(target: ..., precision: ...), got {_describe(value)}")
            raise self.fail(path, f"expected a mapping with fields {', '.join(allowed)}; "
                                  f"got {_describe(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"field names must be strings, got {_describe(key)}; "
                                      f"allowed: {', '.join(allowed)}")
            if key not in allowed:
                section = f"in section {_fmt_path(path)!r}" if path else "at the top level"
                hint = _did_you_mean(key, allowed) or self._misplaced(key, path)
                raise HubertExportError(f"{self.label}: unknown field {key!r} {section}{hint}; "
                                        f"allowed: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.fail(path + (key,), f"missing; {self._required_hint(key)}")
        return dict(value)

    @staticmethod
    def _misplaced(key: str, path: tuple[str, ...]) -> str:
        here = _fmt_path(path)
        for candidate in _all_field_paths():
            parent, _, leaf = candidate.rpartition(".")
            if leaf == key and parent != here:
                return f" (did you mean {candidate!r}?)"
        return ""

    @staticmethod
    def _required_hint(key: str) -> str:
        if key == "target":
            return f"set target: to one of {', '.join(TARGETS)}"
        if key in ("batch", "samples"):
            return "a shape needs both batch and samples (samples at 16 kHz: 16000 per second)"
        return "add it"

    # ---- leaf values

    def choice(self, value: Any, path: tuple[str, ...], choices: tuple[str, ...]) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        hint = _did_you_mean(value.strip().lower(), choices) if isinstance(value, str) else ""
        raise self.fail(path, f"got {_describe(value)}{hint}; allowed: {', '.join(choices)}")

    def integer(self, value: Any, path: tuple[str, ...], lo: int | None = None,
                hi: int | None = None, hint: str = "") -> int:
        # Whole floats (17.0, as JSON writers sometimes emit) are accepted; booleans are not,
        # although Python counts them as integers.
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected a whole number{self._bounds(lo, hi)}, got "
                                  f"{_describe(value)}{hint}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(path, f"{value} is out of range: allowed{self._bounds(lo, hi)}{hint}")
        return value

    def number(self, value: Any, path: tuple[str, ...], lo: float | None = None,
               hi: float | None = None, *, lo_open: bool = False, also: tuple[float, ...] = ()) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"expected a number{self._bounds(lo, hi, lo_open)}, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise self.fail(path, f"expected a finite number{self._bounds(lo, hi, lo_open)}, got {_describe(value)}")
        if number in also:
            return number
        too_low = lo is not None and (number <= lo if lo_open else number < lo)
        if too_low or (hi is not None and number > hi):
            extra = f" or {', '.join(f'{a:g}' for a in also)}" if also else ""
            raise self.fail(path, f"{number:g} is out of range: allowed{self._bounds(lo, hi, lo_open)}{extra}")
        return number

    @staticmethod
    def _bounds(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
        if lo is not None and hi is not None:
            return f" {lo:g}..{hi:g}" if not lo_open else f" > {lo:g} and <= {hi:g}"
        if lo is not None:
            return f" > {lo:g}" if lo_open else f" >= {lo:g}"
        if hi is not None:
            return f" <= {hi:g}"
        return ""

    def boolean(self, value: Any, path: tuple[str, ...]) -> bool:
        if isinstance(value, bool):
            return value
        raise self.fail(path, f"expected true or false, got {_describe(value)}")

    def text(self, value: Any, path: tuple[str, ...], *, non_empty: bool = False) -> str:
        if not isinstance(value, str) or (non_empty and not value.strip()):
            raise self.fail(path, f"expected {'a non-empty' if non_empty else 'a'} string, got {_describe(value)}")
        return value

    def path_value(self, value: Any, path: tuple[str, ...]) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise self.fail(path, f"expected a file path or null, got {_describe(value)}")
        resolved = Path(value).expanduser()
        if self.base_dir is not None and not resolved.is_absolute():
            resolved = self.base_dir / resolved
        return resolved

    def patterns(self, value: Any, path: tuple[str, ...]) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise self.fail(path, f"expected a list of name patterns (regular expressions), got {_describe(value)}")
        out = []
        for i, item in enumerate(value):
            item_path = path + (f"[{i}]",)
            pattern = self.text(item, item_path, non_empty=True)
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError) as exc:
                raise self.fail(item_path, f"{pattern!r} is not a valid regular expression "
                                           f"({getattr(exc, 'msg', exc)}): escape special characters "
                                           f"such as '.' and '[' with a backslash") from None
            out.append(pattern)
        return tuple(out)

    # ---- sections

    def fields_of(self, cls: type) -> list[str]:
        return [f.name for f in _content_fields(cls)]

    def recipe(self, data: Any, source: str) -> Recipe:
        try:
            return self._recipe(data, source)
        except RecursionError:
            raise HubertExportError(f"{self.label}: nested too deeply to be a recipe: fix the file") from None

    def _recipe(self, data: Any, source: str) -> Recipe:
        allowed = self.fields_of(Recipe)
        top = self.mapping(data, (), allowed, required=("target",))
        target = self.choice(top["target"], ("target",), TARGETS)
        allowed_precisions = PRECISIONS_BY_TARGET[target]
        if top.get("precision") is None:
            precision = DEFAULT_PRECISION[target]
        else:
            precision = self.choice(top["precision"], ("precision",), PRECISIONS)
            if precision not in allowed_precisions:
                raise self.fail(("precision",), f"{precision!r} is not supported for target {target!r}; "
                                                f"allowed: {', '.join(allowed_precisions)}")
        name = top.get("name")
        description = top.get("description")
        shapes = self.shapes(top.get("shapes"), ("shapes",))
        return Recipe(
            target=target,
            precision=precision,
            name=self.default_name if name is None else self.text(name, ("name",), non_empty=True).strip(),
            description="" if description is None else self.text(description, ("description",)),
            task=self.choice(top.get("task", "auto"), ("task",), TASKS),
            export=self.export(top.get("export"), ("export",)),
            shapes=shapes,
            calibration=self.calibration(top.get("calibration"), ("calibration",)),
            onnxruntime=self.onnxruntime(top.get("onnxruntime"), ("onnxruntime",)),
            openvino=self.openvino(top.get("openvino"), ("openvino",), shapes),
            tensorrt=self.tensorrt(top.get("tensorrt"), ("tensorrt",)),
            litert=LiteRtOptions(self.threads(top.get("litert"), ("litert",), LiteRtOptions)),
            executorch=ExecuTorchOptions(self.threads(top.get("executorch"), ("executorch",), ExecuTorchOptions)),
            thresholds=self.thresholds(top.get("thresholds"), ("thresholds",)),
            source=source,
        )

    def export(self, value: Any, path: tuple[str, ...]) -> ExportOptions:
        d = self.mapping(value, path, self.fields_of(ExportOptions))
        default = ExportOptions()
        mask: Any = d.get("attention_mask", default.attention_mask)
        if isinstance(mask, str) and mask.strip().lower() in ("true", "false"):
            mask = mask.strip().lower() == "true"
        if not isinstance(mask, bool):
            mask = self.choice(mask, path + ("attention_mask",), ("auto", "true", "false"))
        return ExportOptions(
            opset=self.integer(d.get("opset", default.opset), path + ("opset",), *OPSET_RANGE,
                               hint=" (18: the oldest opset the exporter writes; 21: the newest every back end reads)"),
            output_hidden_states=self.boolean(d.get("output_hidden_states", default.output_hidden_states),
                                              path + ("output_hidden_states",)),
            attention_mask=mask,
            exporter=self.choice(d.get("exporter", default.exporter), path + ("exporter",), ("torchscript", "dynamo")),
        )

    def dim(self, value: Any, path: tuple[str, ...], dim: str) -> int:
        if dim == "batch":
            return self.integer(value, path, lo=1)
        return self.integer(value, path, lo=MIN_SAMPLES,
                            hint=f" (HuBERT's receptive field is {MIN_SAMPLES} samples; samples are "
                                 f"counted at 16 kHz, 16000 per second)")

    def shape(self, value: Any, path: tuple[str, ...]) -> Shape:
        d = self.mapping(value, path, ["batch", "samples"], required=("batch", "samples"))
        return Shape(self.dim(d["batch"], path + ("batch",), "batch"),
                     self.dim(d["samples"], path + ("samples",), "samples"))

    def shape_range(self, d: dict[str, Any], path: tuple[str, ...], defaults: ShapeRange | None) -> ShapeRange:
        """min/opt/max from `d`; with `defaults`, each of them and each of their dims is optional."""
        if defaults is None:
            lo, mid, hi = (self.shape(d.get(slot), path + (slot,)) for slot in ("min", "opt", "max"))
        else:
            lo, mid, hi = self._fill_defaults(d, path, defaults)
        for dim in ("batch", "samples"):
            a, b, c = getattr(lo, dim), getattr(mid, dim), getattr(hi, dim)
            if a > c:
                raise self.fail(path + ("min", dim), f"{a} is larger than {_fmt_path(path + ('max', dim))} "
                                                     f"{c}: min <= opt <= max is required")
            if not a <= b <= c:
                raise self.fail(path + ("opt", dim), f"{b} lies outside min..max ({a}..{c}): "
                                                     f"min <= opt <= max is required")
        return ShapeRange(lo, mid, hi)

    def _fill_defaults(self, d: dict[str, Any], path: tuple[str, ...],
                       defaults: ShapeRange) -> tuple[Shape, Shape, Shape]:
        """A dim left out takes its default, moved inside the dims that are given.

        So `max: {samples: 80000}` alone gives opt.samples 80000 rather than an "opt > max" error
        about a value the user never wrote.
        """
        given: dict[str, dict[str, int]] = {}
        for slot in ("min", "opt", "max"):
            slot_d = self.mapping(d.get(slot), path + (slot,), ["batch", "samples"])
            given[slot] = {dim: self.dim(slot_d[dim], path + (slot, dim), dim)
                           for dim in ("batch", "samples") if dim in slot_d}
        filled: dict[str, tuple[int, int, int]] = {}
        for dim in ("batch", "samples"):
            lo, mid, hi = (given[slot].get(dim) for slot in ("min", "opt", "max"))
            d_lo, d_mid, d_hi = (getattr(getattr(defaults, slot), dim) for slot in ("min", "opt", "max"))
            explicit = [v for v in (lo, mid, hi) if v is not None]
            lo = min([d_lo, *explicit]) if lo is None else lo
            hi = max([d_hi, *explicit]) if hi is None else hi
            mid = min(max(d_mid, lo), hi) if mid is None else mid
            filled[dim] = (lo, mid, hi)
        return (Shape(filled["batch"][0], filled["samples"][0]),
                Shape(filled["batch"][1], filled["samples"][1]),
                Shape(filled["batch"][2], filled["samples"][2]))

    def shapes(self, value: Any, path: tuple[str, ...]) -> Shapes:
        d = self.mapping(value, path, self.fields_of(Shapes))
        main = self.shape_range(d, path, self.shape_defaults)
        profiles_value = d.get("profiles")
        if profiles_value is None:
            profiles_value = []
        if not isinstance(profiles_value, (list, tuple)):
            raise self.fail(path + ("profiles",), f"expected a list of {{min, opt, max}} shape ranges, "
                                                  f"got {_describe(profiles_value)}")
        profiles = []
        for i, item in enumerate(profiles_value):
            p_path = path + ("profiles", f"[{i}]")
            p = self.mapping(item, p_path, ["min", "opt", "max"], required=("min", "opt", "max"))
            profile = self.shape_range(p, p_path, None)
            for slot in ("min", "max"):
                s = getattr(profile, slot)
                if not main.contains(s.batch, s.samples):
                    raise self.fail(p_path + (slot,), f"{s.batch}x{s.samples} lies outside the shape range "
                                                      f"{main.min.batch}x{main.min.samples}.."
                                                      f"{main.max.batch}x{main.max.samples} (shapes.min..shapes.max):"
                                                      f" widen shapes.min/max or shrink the profile")
            profiles.append(profile)
        return Shapes(min=main.min, opt=main.opt, max=main.max, profiles=tuple(profiles))

    def calibration(self, value: Any, path: tuple[str, ...]) -> CalibrationOptions:
        d = self.mapping(value, path, self.fields_of(CalibrationOptions))
        default = CalibrationOptions()
        alpha = d.get("smooth_quant_alpha")
        drop = d.get("max_accuracy_drop")
        return CalibrationOptions(
            data=self.path_value(d.get("data"), path + ("data",)),
            subset_size=self.integer(d.get("subset_size", default.subset_size), path + ("subset_size",), lo=1),
            method=self.choice(d.get("method", default.method), path + ("method",), ("dynamic", "static")),
            preset=self.choice(d.get("preset", default.preset), path + ("preset",), ("performance", "mixed")),
            smooth_quant_alpha=None if alpha is None else self.number(
                alpha, path + ("smooth_quant_alpha",), 0.0, 1.0, also=(-1.0,)),
            ignored_scopes=self.patterns(d.get("ignored_scopes"), path + ("ignored_scopes",)),
            fast_bias_correction=self.boolean(d.get("fast_bias_correction", default.fast_bias_correction),
                                              path + ("fast_bias_correction",)),
            max_accuracy_drop=None if drop is None else self.number(drop, path + ("max_accuracy_drop",), 0.0, 1.0),
        )

    def onnxruntime(self, value: Any, path: tuple[str, ...]) -> OnnxRuntimeOptions:
        d = self.mapping(value, path, self.fields_of(OnnxRuntimeOptions))
        default = OnnxRuntimeOptions()
        return OnnxRuntimeOptions(
            intra_op_threads=self.integer(d.get("intra_op_threads", default.intra_op_threads),
                                          path + ("intra_op_threads",), lo=0, hint=" (0: ONNX Runtime's default)"),
            graph_optimization_level=self.choice(
                d.get("graph_optimization_level", default.graph_optimization_level),
                path + ("graph_optimization_level",), ("disable", "basic", "extended", "all")),
            offline_fusions=self.boolean(d.get("offline_fusions", default.offline_fusions),
                                         path + ("offline_fusions",)),
        )

    def openvino(self, value: Any, path: tuple[str, ...], valid: Shapes) -> OpenVinoOptions:
        d = self.mapping(value, path, self.fields_of(OpenVinoOptions))
        default = OpenVinoOptions()
        static_shape = None
        if d.get("static_shape") is not None:
            static_shape = self.shape(d["static_shape"], path + ("static_shape",))
            if not valid.contains(static_shape.batch, static_shape.samples):
                raise self.fail(path + ("static_shape",),
                                f"{static_shape.batch}x{static_shape.samples} lies outside the shape range "
                                f"{valid.min.batch}x{valid.min.samples}..{valid.max.batch}x{valid.max.samples}"
                                f" (shapes.min..shapes.max): choose a static shape inside it")
        return OpenVinoOptions(
            performance_hint=self.choice(d.get("performance_hint", default.performance_hint),
                                         path + ("performance_hint",), ("latency", "throughput")),
            num_threads=self.integer(d.get("num_threads", default.num_threads), path + ("num_threads",),
                                     lo=0, hint=" (0: OpenVINO's default)"),
            cache_dir=self.path_value(d.get("cache_dir"), path + ("cache_dir",)),
            static_shape=static_shape,
        )

    def tensorrt(self, value: Any, path: tuple[str, ...]) -> TensorRtOptions:
        d = self.mapping(value, path, self.fields_of(TensorRtOptions))
        default = TensorRtOptions()
        fp32_layers = d.get("fp32_layers", default.fp32_layers)
        return TensorRtOptions(
            workspace_gb=self.number(d.get("workspace_gb", default.workspace_gb), path + ("workspace_gb",),
                                     0.0, 1024.0, lo_open=True),
            builder_optimization_level=self.integer(
                d.get("builder_optimization_level", default.builder_optimization_level),
                path + ("builder_optimization_level",), 0, 5),
            timing_cache=self.path_value(d.get("timing_cache"), path + ("timing_cache",)),
            fp32_layers=self.patterns(fp32_layers, path + ("fp32_layers",)),
        )

    def threads(self, value: Any, path: tuple[str, ...], cls: type) -> int:
        """The `num_threads` of a section that has nothing else (litert, executorch)."""
        d = self.mapping(value, path, self.fields_of(cls))
        return self.integer(d.get("num_threads", 0), path + ("num_threads",), lo=0, hint=" (0: the runtime's default)")

    def thresholds(self, value: Any, path: tuple[str, ...]) -> Thresholds:
        d = self.mapping(value, path, self.fields_of(Thresholds))
        # Agreements and similarities are fractions; errors and error rates are only non-negative
        # (an edit rate can exceed 1 when the output inserts more tokens than the reference has).
        bounds: dict[str, tuple[float, float | None]] = {
            "min_cosine_similarity": (-1.0, 1.0),
            "min_argmax_agreement": (0.0, 1.0),
            "min_top1_agreement": (0.0, 1.0),
        }
        out = {}
        for name in self.fields_of(Thresholds):
            v = d.get(name)
            lo, hi = bounds.get(name, (0.0, None))
            out[name] = None if v is None else self.number(v, path + (name,), lo, hi)
        return Thresholds(**out)
