"""The LiteRT back end, for real: litert-torch conversion, ai-edge-quantizer, LiteRT's interpreter.

Needs the [litert] extra, which lives in a virtual environment of its own (its converter pins
typing-extensions below the core's pydantic): .ci/run runs this file there. In an environment
without it only the refusal test runs, and there it must.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from hubert_export.artifact import Artifact
from hubert_export.backends import get_backend
from hubert_export.build import export_artifact
from hubert_export.errors import HubertExportError
from hubert_export.tasks import DEFAULT_THRESHOLDS
from hubert_export.recipes import Shape, recipe_from_dict

from .edge_common import (  # noqa: F401  (speech: a fixture)
    SHIPPED_MODEL, SPEECH, assert_refused_without_extra, installed, speech, transcript_cer,
)

HAS_LITERT = installed("litert_torch", "ai_edge_litert", "ai_edge_quantizer")
needs_litert = pytest.mark.skipif(not HAS_LITERT, reason="the [litert] extra is not installed here "
                                                        "(.ci/run tests it in its own virtual environment)")
WINDOW = 48_000  # 3 s: fast builds; longer than every shipped utterance, shorter than the joined one
VARIANTS = {"fp32": ("fp32", "static"), "fp16": ("fp16", "static"), "int8-static": ("int8", "static"),
            "int8-dynamic": ("int8", "dynamic")}


def litert_recipe(precision: str, method: str = "static", samples: int = WINDOW):
    return recipe_from_dict({"target": "litert", "precision": precision, "calibration": {"method": method},
                             "shapes": {"min": {"batch": 1, "samples": samples},
                                        "opt": {"batch": 1, "samples": samples},
                                        "max": {"batch": 1, "samples": samples}}})


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """variant -> (artifact directory, its parity report), each built on first use."""
    root = tmp_path_factory.mktemp("litert")

    @functools.cache
    def build(variant: str):
        precision, method = VARIANTS[variant]
        result = export_artifact(SHIPPED_MODEL, root / variant, litert_recipe(precision, method), data_dir=SPEECH,
                                 latency_repeats=0)
        return result.path, result.report
    return build


@needs_litert
@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shipped_model_passes_its_gate_and_transcribes_like_eager(variant, shipped, speech):
    path, report = shipped(variant)
    assert report.passed, report.failures
    assert any(c.transcripts for c in report.cases)  # the speech was gated, not only synthetic input
    manifest = Artifact.open(path).manifest
    assert manifest.input_contract.window == Shape(1, WINDOW)
    files, texts, eager_cer = speech
    cer = transcript_cer(path, files, texts)
    precision = VARIANTS[variant][0]
    assert cer <= eager_cer + DEFAULT_THRESHOLDS[precision]["max_cer"], (cer, eager_cer)


@needs_litert
@pytest.mark.slow
def test_quantisation_shrinks_the_file(shipped):
    sizes = {v: (shipped(v)[0] / "model.tflite").stat().st_size for v in ("fp32", "fp16", "int8-static")}
    assert sizes["int8-static"] < sizes["fp16"] < sizes["fp32"]


@needs_litert
def test_random_base_layout_model_passes_the_fp32_gate(ctc_checkpoint, tmp_path):
    # Base layout: group-norm feature encoder, post-LN transformer, weight-normed positional conv
    # with an even kernel (one frame trimmed), no attention mask.
    result = export_artifact(ctc_checkpoint, tmp_path / "base", litert_recipe("fp32", samples=16_000),
                             latency_repeats=0)
    assert result.passed, result.report.failures
    assert max(c.metrics["max_abs_error"] for c in result.report.cases) < 1e-4


@needs_litert
def test_other_shapes_are_refused_naming_the_built_one(shipped):
    path, _ = shipped("fp32")
    with get_backend("litert").load(Artifact.open(path)) as runner:
        inputs = {"input_values": np.zeros((1, 16_000), np.float32), "attention_mask": np.ones((1, 16_000), np.int64)}
        with pytest.raises(HubertExportError, match=f"one shape this artifact is built for \\(1 x {WINDOW}\\)") as error:
            runner.infer(inputs)
    assert "\n" not in str(error.value)


@needs_litert
def test_golden_check_runs_the_stored_cases_through_the_window(shipped):
    """`check --golden` of a fixed-window artifact with an attention mask: the stored cases shorter
    than the window run padded into it, as the build ran them (before, the first one was refused)."""
    from hubert_export.golden import check_golden

    path, report = shipped("fp32")
    golden = check_golden(path, latency_repeats=1)
    assert golden.passed, golden.failures
    assert [c.name for c in golden.cases] == [c.name for c in report.cases]
    assert any(c.shape[1] < WINDOW for c in golden.cases)  # really run through the window
    assert golden.latency is not None


@needs_litert
def test_golden_check_in_a_venv_without_torch(shipped, torchless_python, tmp_path):
    """A phone or board build farm with ai-edge-litert and numpy, no torch, checks a LiteRT artifact."""
    import json

    from ..conftest import run_without_torch

    path, report = shipped("fp32")
    result = run_without_torch(torchless_python, "-m", "hubert_export.cli", "check", str(path), "--golden",
                               "--report-dir", str(tmp_path), "--latency-repeats", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("parity PASS")
    assert [c["name"] for c in json.loads((tmp_path / "parity.json").read_text())["cases"]] == \
        [c.name for c in report.cases]


@pytest.mark.skipif(HAS_LITERT, reason="the [litert] extra is installed: the refusal cannot happen here")
def test_target_refuses_without_the_extra(tmp_path, capsys):
    assert_refused_without_extra("litert", "litert", tmp_path, capsys)
