"""Recipes: every shipped file validates, and every kind of bad input is one clear error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubert_export.errors import HubertExportError
from hubert_export.targets import TARGETS
from hubert_export.recipes import (
    DEFAULT_FP32_LAYERS,
    CalibrationOptions,
    ExportOptions,
    OnnxRuntimeOptions,
    OpenVinoOptions,
    Recipe,
    Shape,
    ShapeRange,
    Shapes,
    TensorRtOptions,
    Thresholds,
    VerificationOptions,
    default_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_json_schema,
)

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
SCHEMA_FILE = RECIPES_DIR / "recipe.schema.json"
SHIPPED = sorted(RECIPES_DIR.glob("*.yaml")) + sorted(p for p in RECIPES_DIR.glob("*.json") if p != SCHEMA_FILE)


def error_of(data, source: str = "r.yaml") -> str:
    with pytest.raises(HubertExportError) as info:
        recipe_from_dict(data, source)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(tmp_path: Path, text: str | bytes, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# ---- shipped recipes


def test_the_expected_recipes_are_shipped():
    names = {p.name for p in SHIPPED}
    assert {
        "gpu-server-tensorrt-fp16.yaml",
        "jetson-orin-tensorrt-fp16.yaml",
        "x86-cpu-openvino-int8.yaml",
        "x86-avx2-onnxruntime-int8.yaml",
        "arm64-onnxruntime-int8.yaml",
        "ci-gate.yaml",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_round_trips(path: Path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert path.read_text().lstrip().startswith("#"), "each recipe starts with a comment header"
    again = recipe_from_dict(recipe.to_dict())
    assert again == recipe
    # to_dict is plain data: it survives YAML and JSON
    assert recipe_from_dict(yaml.safe_load(yaml.safe_dump(recipe.to_dict()))) == recipe
    assert recipe_from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_shipped_recipes_say_what_the_brief_asks():
    gpu = load_recipe(RECIPES_DIR / "gpu-server-tensorrt-fp16.yaml")
    assert (gpu.target, gpu.precision) == ("tensorrt", "fp16")
    assert gpu.shapes.max == Shape(16, 30 * 16000) and gpu.shapes.opt.samples == 10 * 16000

    orin = load_recipe(RECIPES_DIR / "jetson-orin-tensorrt-fp16.yaml")
    assert orin.shapes.max == Shape(4, 20 * 16000) and orin.tensorrt.workspace_gb == 2

    x86 = load_recipe(RECIPES_DIR / "x86-cpu-openvino-int8.yaml")
    assert (x86.target, x86.precision, x86.openvino.performance_hint) == ("openvino", "int8", "latency")
    assert x86.calibration.preset == "mixed" and x86.calibration.max_accuracy_drop == 0.01
    # The x86 INT8 recipes say which CPUs they are for: INT8 arithmetic differs with and without VNNI.
    avx2 = load_recipe(RECIPES_DIR / "x86-avx2-onnxruntime-int8.yaml")
    assert (x86.deployment_isa, avx2.deployment_isa) == ("x86-avx512-vnni", "x86-avx2")
    assert (avx2.target, avx2.precision, avx2.calibration.method) == ("onnx", "int8", "static")

    arm = load_recipe(RECIPES_DIR / "arm64-onnxruntime-int8.yaml")
    assert (arm.target, arm.precision, arm.calibration.method) == ("onnx", "int8", "dynamic")
    assert arm.onnxruntime.intra_op_threads == 4 and arm.deployment_isa == "arm64"

    ci = load_recipe(RECIPES_DIR / "ci-gate.yaml")
    assert (ci.target, ci.precision, ci.thresholds.max_cer) == ("onnx", "fp32", 0.0)


# ---- defaults and the dataclass tree


def test_defaults():
    r = recipe_from_dict({"target": "onnx"})
    assert (r.precision, r.task, r.name, r.description) == ("fp32", "auto", "recipe", "")
    assert r.export.opset == 18 and r.export.attention_mask == "auto" and not r.export.output_hidden_states
    assert r.shapes.range == ShapeRange(Shape(1, 400), Shape(1, 160000), Shape(16, 960000))
    assert r.shapes.profiles == ()
    assert r.calibration.method == "static" and r.calibration.subset_size == 300
    assert r.tensorrt.fp32_layers == DEFAULT_FP32_LAYERS and r.tensorrt.timing_cache is None
    assert r.thresholds.explicit() == {}
    assert r.tensorrt.tf32 is False
    assert (r.verification.golden, r.verification.golden_max_mb) == ("auto", 64.0)
    assert recipe_from_dict({"target": "tensorrt"}).precision == "fp16"
    assert recipe_from_dict({"target": "openvino"}).precision == "fp32"


def test_default_recipe():
    assert default_recipe("tensorrt").precision == "fp16"
    assert default_recipe("onnx", "int8").precision == "int8"
    with pytest.raises(HubertExportError, match="target"):
        default_recipe("tflite")


def test_shape_range_contains():
    rng = ShapeRange(Shape(1, 400), Shape(2, 1000), Shape(4, 16000))
    assert rng.contains(1, 400) and rng.contains(4, 16000) and rng.contains(2, 5000)
    assert not rng.contains(5, 1000) and not rng.contains(1, 399) and not rng.contains(0, 1000)


def test_recipes_are_immutable():
    r = default_recipe("onnx")
    with pytest.raises(AttributeError):
        r.precision = "int8"  # type: ignore[misc]


def test_partial_shapes_fill_defaults_inside_the_given_range():
    r = recipe_from_dict({"target": "onnx", "shapes": {"max": {"samples": 80000}}})
    assert r.shapes.opt.samples == 80000 and r.shapes.max.batch == 16 and r.shapes.min == Shape(1, 400)


def test_relative_paths_resolve_against_the_recipe_file(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", "target: openvino\nprecision: int8\ncalibration: {data: audio}\n"
                                   "openvino: {cache_dir: /abs/cache}\n")
    r = load_recipe(path)
    assert r.calibration.data == tmp_path / "sub" / "audio"
    assert r.openvino.cache_dir == Path("/abs/cache")
    assert r.source == str(path)


def test_json_recipe(tmp_path: Path):
    r = load_recipe(write(tmp_path, json.dumps({"target": "onnx", "export": {"opset": 19}}), "x.json"))
    assert r.export.opset == 19 and r.name == "x"


def test_values_are_normalised():
    r = recipe_from_dict({"target": "OpenVINO", "precision": "FP16", "export": {"opset": 18.0,
                                                                                "attention_mask": "true"}})
    assert (r.target, r.precision, r.export.opset, r.export.attention_mask) == ("openvino", "fp16", 18, True)


# ---- errors: each names the field and what is allowed


def test_unknown_field_suggests_the_right_one():
    msg = error_of({"target": "onnx", "precison": "fp32"})
    assert "r.yaml" in msg and "'precison'" in msg and "did you mean 'precision'" in msg and "allowed:" in msg
    msg = error_of({"target": "onnx", "tensorrt": {"workspace": 2}})
    assert "section 'tensorrt'" in msg and "workspace_gb" in msg


def test_field_in_the_wrong_section_points_to_its_section():
    assert "export.opset" in error_of({"target": "onnx", "opset": 18})


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"target": "onnx", "shapes": {"max": {"samples": "30s"}}}, "shapes.max.samples", "whole number"),
        ({"target": "onnx", "shapes": {"max": {"batch": -2}}}, "shapes.max.batch", ">= 1"),
        ({"target": "onnx", "shapes": {"min": {"samples": 100}}}, "shapes.min.samples", "400"),
        ({"target": "onnx", "shapes": {"min": {"batch": 8}, "max": {"batch": 4}}}, "shapes.min.batch", "min <= opt <= max"),
        ({"target": "onnx", "shapes": {"opt": {"samples": 1000}, "max": {"samples": 800}}}, "shapes.opt.samples", "min <= opt <= max"),
        ({"target": "onnx", "export": {"opset": 17}}, "export.opset", "18..21"),
        ({"target": "onnx", "export": {"opset": 22}}, "export.opset", "18..21"),
        ({"target": "onnx", "export": {"opset": True}}, "export.opset", "whole number"),
        ({"target": "onnx", "export": {"output_hidden_states": "yes"}}, "export.output_hidden_states", "true or false"),
        ({"target": "onnx", "export": {"exporter": "jit"}}, "export.exporter", "torchscript"),
        ({"target": "tensorrt", "precision": "int8"}, "precision", "fp16, fp32"),
        ({"target": "onnx", "precision": "fp64"}, "precision", "fp32"),
        ({"target": "trt"}, "target", "onnx, openvino, tensorrt"),
        ({"precision": "fp32"}, "target", "onnx"),
        ({"target": "onnx", "task": "asr"}, "task", "ctc"),
        ({"target": "onnx", "calibration": {"smooth_quant_alpha": 2}}, "calibration.smooth_quant_alpha", "-1"),
        ({"target": "onnx", "calibration": {"max_accuracy_drop": 1.5}}, "calibration.max_accuracy_drop", "0..1"),
        ({"target": "onnx", "calibration": {"subset_size": 0}}, "calibration.subset_size", ">= 1"),
        ({"target": "onnx", "calibration": {"method": "dinamic"}}, "calibration.method", "did you mean 'dynamic'"),
        ({"target": "onnx", "calibration": {"ignored_scopes": "attention"}}, "calibration.ignored_scopes", "list"),
        ({"target": "tensorrt", "tensorrt": {"fp32_layers": ["[oops"]}}, "tensorrt.fp32_layers[0]", "regular expression"),
        ({"target": "tensorrt", "tensorrt": {"workspace_gb": 0}}, "tensorrt.workspace_gb", "> 0"),
        ({"target": "tensorrt", "tensorrt": {"builder_optimization_level": 6}}, "tensorrt.builder_optimization_level", "0..5"),
        ({"target": "onnx", "onnxruntime": {"graph_optimization_level": "max"}}, "onnxruntime.graph_optimization_level", "all"),
        ({"target": "onnx", "onnxruntime": {"intra_op_threads": -1}}, "onnxruntime.intra_op_threads", ">= 0"),
        ({"target": "openvino", "openvino": {"static_shape": {"batch": 1}}}, "openvino.static_shape.samples", "missing"),
        ({"target": "openvino", "openvino": {"static_shape": {"batch": 1, "samples": 10**7}}}, "openvino.static_shape", "outside"),
        ({"target": "onnx", "thresholds": {"max_cer": -0.1}}, "thresholds.max_cer", ">= 0"),
        ({"target": "onnx", "thresholds": {"min_top1_agreement": 2}}, "thresholds.min_top1_agreement", "0..1"),
        ({"target": "onnx", "thresholds": {"max_abs_error": float("nan")}}, "thresholds.max_abs_error", "finite"),
        ({"target": "onnx", "shapes": {"profiles": {"min": 1}}}, "shapes.profiles", "list"),
        ({"target": "tensorrt", "shapes": {"profiles": [{"min": {"batch": 1, "samples": 400}}]}}, "shapes.profiles[0].opt", "missing"),
        ({"target": "tensorrt", "shapes": {"profiles": [{"min": {"batch": 1, "samples": 400},
                                                          "opt": {"batch": 1, "samples": 800},
                                                          "max": {"batch": 64, "samples": 800}}]}},
         "shapes.profiles[0].max", "outside"),
        ({"target": "onnx", "shapes": [1, 2]}, "shapes", "mapping"),
        ({"target": "onnx", "shapes": {"min": []}}, "shapes.min", "mapping"),
        ({"target": "onnx", "name": ""}, "name", "non-empty"),
        ({"target": "tensorrt", "tensorrt": {"tf32": "on"}}, "tensorrt.tf32", "true or false"),
        ({"target": "onnx", "verification": {"golden": "sometimes"}}, "verification.golden", "auto, always, never"),
        ({"target": "onnx", "verification": {"golden_max_mb": 0}}, "verification.golden_max_mb", "> 0"),
        ({"target": "onnx", "source": "x.yaml"}, "'source'", "unknown field"),
    ],
)
def test_bad_values_name_the_field(data, field, words):
    msg = error_of(data)
    assert msg.startswith("recipe r.yaml: ")
    assert field in msg, msg
    assert words in msg, msg


@pytest.mark.parametrize("data", [None, [], "target: onnx", 42, [{"target": "onnx"}], {1: "onnx"}])
def test_non_mapping_or_bad_keys(data):
    error_of(data)


def test_valid_profiles_and_static_shape():
    r = recipe_from_dict({
        "target": "tensorrt",
        "shapes": {"profiles": [{"min": {"batch": 1, "samples": 400}, "opt": {"batch": 1, "samples": 32000},
                                 "max": {"batch": 2, "samples": 160000}}]},
        "openvino": {"static_shape": {"batch": 1, "samples": 160000}},
    })
    assert r.shapes.profiles[0].max == Shape(2, 160000)
    assert r.openvino.static_shape == Shape(1, 160000)
    assert recipe_from_dict(r.to_dict()) == r


def test_new_fields_round_trip():
    r = recipe_from_dict({"target": "tensorrt", "tensorrt": {"tf32": True},
                          "verification": {"golden": "Never", "golden_max_mb": 0.5}})
    assert r.tensorrt.tf32 is True and r.verification == VerificationOptions("never", 0.5)
    assert recipe_from_dict(r.to_dict()) == r


# ---- JSON Schema


def test_shipped_schema_is_the_generated_one():
    # Regenerate with: python -m hubert_export.recipes --schema > recipes/recipe.schema.json
    assert json.loads(SCHEMA_FILE.read_text()) == recipe_json_schema()


def test_schema_accepts_every_shipped_recipe_and_refuses_bad_ones():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (pip install jsonschema)")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    for path in SHIPPED:
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path.name
    # what the loader fills in (precision, dims of shapes.min/opt/max) is optional in the schema too
    assert validator.is_valid({"target": "onnx", "shapes": {"max": {"samples": 80000}}})
    for bad in ({"precision": "fp32"}, {"target": "onnx", "precison": "fp32"},
                {"target": "onnx", "shapes": {"min": {"samples": 100}}},
                {"target": "onnx", "export": {"opset": 17}}, {"target": "onnx", "tensorrt": {"tf32": "on"}},
                {"target": "onnx", "verification": {"golden": "sometimes"}},
                {"target": "onnx", "shapes": {"profiles": [{"min": {"batch": 1, "samples": 400}}]}}):
        assert not validator.is_valid(bad), bad
        with pytest.raises(HubertExportError):
            recipe_from_dict(bad)


def test_schema_module_entry_point_prints_the_schema():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hubert_export.recipes", "--schema"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == recipe_json_schema()


# ---- files


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("target: onnx\n  precision: [fp32\n", "invalid YAML at line"),
        ("target: [unclosed", "invalid YAML"),
        ("- target: onnx\n", "top level must be a mapping"),
        ("just a string\n", "top level must be a mapping"),
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00garbage", "binary file"),
        (b"\xff\xfe\xfa target: onnx", "not UTF-8"),
        ("a: &a [*a, *a]\ntarget: onnx\n", "unknown field 'a'"),
        ("target: onnx\nshapes: {max: {samples: 30s}}\n", "shapes.max.samples"),
        ("target: onnx\nprecision: !!python/object:os.system ls\n", "invalid YAML"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, content, words):
    path = write(tmp_path, content)
    with pytest.raises(HubertExportError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and words in msg, msg


def test_bad_json_file(tmp_path: Path):
    with pytest.raises(HubertExportError, match="invalid JSON at line 1"):
        load_recipe(write(tmp_path, '{"target": "onnx",}', "r.json"))


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(HubertExportError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(HubertExportError, match="is a directory"):
        load_recipe(tmp_path)


def test_deeply_nested_yaml(tmp_path: Path):
    with pytest.raises(HubertExportError):
        load_recipe(write(tmp_path, "target: onnx\nexport: " + "[" * 5000 + "]" * 5000 + "\n"))


# ---- overrides


def test_overrides_return_a_new_validated_recipe():
    base = load_recipe(RECIPES_DIR / "ci-gate.yaml")
    r = base.with_overrides(precision="int8", opset=18, **{"shapes.max.batch": 4, "tensorrt__workspace_gb": 1})
    assert (r.precision, r.export.opset, r.shapes.max.batch, r.tensorrt.workspace_gb) == ("int8", 18, 4, 1.0)
    assert r.thresholds == base.thresholds and r.name == base.name
    assert base.precision == "fp32"  # unchanged
    assert base.with_overrides(precision=None, opset=None) is base


def test_override_pulls_unchanged_shape_dims_into_the_new_range():
    base = load_recipe(RECIPES_DIR / "gpu-server-tensorrt-fp16.yaml")  # opt 8 x 160000
    r = base.with_overrides(**{"shapes.max.samples": 80000, "shapes.max.batch": 4})
    assert r.shapes.opt == Shape(4, 80000) and r.shapes.max == Shape(4, 80000)
    assert r.shapes.min == base.shapes.min


def test_override_target_switches_to_a_supported_precision():
    assert default_recipe("onnx", "int8").with_overrides(target="tensorrt").precision == "fp16"
    assert default_recipe("openvino", "fp32").with_overrides(target="tensorrt").precision == "fp32"


def test_bad_overrides():
    base = default_recipe("onnx")
    with pytest.raises(HubertExportError, match="did you mean 'export.opset'"):
        base.with_overrides(opst=18)
    with pytest.raises(HubertExportError, match="ambiguous"):
        base.with_overrides(batch=2)
    with pytest.raises(HubertExportError, match="export.opset.*18..21"):
        base.with_overrides(opset=12)
    with pytest.raises(HubertExportError, match="precision.*not supported for target 'tensorrt'"):
        base.with_overrides(target="tensorrt", precision="int8")


# ---- fuzz: nothing but HubertExportError, ever

_FIELD_NAMES = [
    "name", "description", "task", "target", "precision", "export", "opset", "output_hidden_states",
    "attention_mask", "shapes", "min", "opt", "max", "batch", "samples", "profiles", "calibration",
    "data", "subset_size", "method", "preset", "smooth_quant_alpha", "ignored_scopes",
    "fast_bias_correction", "max_accuracy_drop", "onnxruntime", "intra_op_threads",
    "graph_optimization_level", "openvino", "performance_hint", "num_threads", "cache_dir",
    "static_shape", "tensorrt", "workspace_gb", "builder_optimization_level", "timing_cache",
    "fp32_layers", "thresholds", "max_abs_error", "max_cer",
]
_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-10, max_value=10**6)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["onnx", "tensorrt", "openvino", "fp16", "int8", "auto", "ctc", "[x", "400"])
)
_KEYS = st.sampled_from(_FIELD_NAMES) | st.text(max_size=8) | st.integers(-2, 2) | st.none()
_ANY = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=25,
)
_SHAPE = st.dictionaries(st.sampled_from(["batch", "samples"]),
                         st.integers(-5, 2_000_000) | _SCALARS, max_size=2)
_SHAPE_RANGE = st.fixed_dictionaries({}, optional={"min": _SHAPE, "opt": _SHAPE, "max": _SHAPE})
_FIELD_VALUE = _SCALARS | _SHAPE | st.lists(_SCALARS | _SHAPE_RANGE, max_size=3)


def _section(cls) -> st.SearchStrategy:
    """Mostly-valid keys of one section with arbitrary values, to reach the deeper checks."""
    names = [f.name for f in dataclasses.fields(cls)]
    return st.dictionaries(st.sampled_from(names), _FIELD_VALUE, max_size=4)


# Schema-shaped data: a valid target and real section names, so the fuzz gets past the first check.
_SECTIONS = st.fixed_dictionaries(
    {"target": st.sampled_from(list(TARGETS))},
    optional={
        "precision": st.sampled_from(["fp32", "fp16", "int8", "FP16", None, 16]),
        "task": st.sampled_from(["auto", "ctc", "feature-extraction", "asr"]),
        "name": st.sampled_from(["x", "", None, 3]),
        "export": _section(ExportOptions),
        "shapes": _section(Shapes),
        "calibration": _section(CalibrationOptions),
        "onnxruntime": _section(OnnxRuntimeOptions),
        "openvino": _section(OpenVinoOptions),
        "tensorrt": _section(TensorRtOptions),
        "verification": _section(VerificationOptions),
        "thresholds": _section(Thresholds),
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_ANY | _SECTIONS | _SECTIONS)
def test_fuzz_recipe_from_dict_raises_only_hubert_export_error(data):
    try:
        recipe = recipe_from_dict(data, "fuzz.yaml")
    except HubertExportError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(recipe, Recipe)
        assert recipe_from_dict(recipe.to_dict()) == recipe


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200) | st.text(max_size=200))
def test_fuzz_load_recipe_raises_only_hubert_export_error(tmp_path: Path, content):
    path = write(tmp_path, content)
    try:
        load_recipe(path)
    except HubertExportError as exc:
        assert "\n" not in str(exc)
