"""The ExecuTorch back end, for real: torch.export, the XNNPACK partitioner and quantiser, the runtime.

Needs the [executorch] extra (installed with the core in .ci/run). In an environment without it
only the refusal test runs, and there it must (.ci/run runs it in the LiteRT environment).
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
from hubert_export.recipes import recipe_from_dict

from .edge_common import (  # noqa: F401  (speech: a fixture)
    SHIPPED_MODEL, SPEECH, assert_refused_without_extra, installed, speech, transcript_cer,
)

HAS_EXECUTORCH = installed("executorch")
needs_executorch = pytest.mark.skipif(not HAS_EXECUTORCH, reason="the [executorch] extra is not installed here")
LONGEST = 160_000  # 10 s: longer than every shipped utterance and the joined one
VARIANTS = {"fp32": ("fp32", "static"), "int8-static": ("int8", "static")}


def executorch_recipe(precision: str, method: str = "static", longest: int = LONGEST):
    return recipe_from_dict({"target": "executorch", "precision": precision, "calibration": {"method": method},
                             "shapes": {"min": {"batch": 1, "samples": 400},
                                        "opt": {"batch": 1, "samples": 48_000},
                                        "max": {"batch": 1, "samples": longest}}})


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("executorch")

    @functools.cache
    def build(variant: str):
        precision, method = VARIANTS[variant]
        result = export_artifact(SHIPPED_MODEL, root / variant, executorch_recipe(precision, method),
                                 data_dir=SPEECH, latency_repeats=0)
        return result.path, result.report
    return build


@needs_executorch
@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shipped_model_passes_its_gate_and_transcribes_like_eager(variant, shipped, speech):
    path, report = shipped(variant)
    assert report.passed, report.failures
    assert any(c.transcripts for c in report.cases)
    # Several lengths ran through one program: the length is dynamic.
    assert len({c.shape[1] for c in report.cases}) > 3
    files, texts, eager_cer = speech
    cer = transcript_cer(path, files, texts, chunk_seconds=LONGEST / 16_000)
    precision = VARIANTS[variant][0]
    assert cer <= eager_cer + DEFAULT_THRESHOLDS[precision]["max_cer"], (cer, eager_cer)


@needs_executorch
@pytest.mark.slow
def test_built_range_is_recorded_and_enforced(shipped):
    path, _ = shipped("fp32")
    shape_range = Artifact.open(path).input_contract
    # The exporter needs at least two frames (720 samples at HuBERT's framing), and batch stays 1.
    assert shape_range.min.samples >= 720 and shape_range.max.samples == LONGEST
    assert shape_range.min.batch == shape_range.max.batch == 1
    with get_backend("executorch").load(Artifact.open(path)) as runner:
        too_long = {"input_values": np.zeros((1, LONGEST + 320), np.float32),
                    "attention_mask": np.ones((1, LONGEST + 320), np.int64)}
        with pytest.raises(HubertExportError, match="outside this artifact's shape range"):
            runner.infer(too_long)
        longest = {"input_values": np.random.default_rng(0).standard_normal((1, LONGEST)).astype(np.float32),
                   "attention_mask": np.ones((1, LONGEST), np.int64)}
        assert runner.infer(longest)["logits"].shape[1] == 499  # the memory was planned for the longest input


@needs_executorch
def test_random_base_layout_model_passes_the_fp32_gate(ctc_checkpoint, tmp_path):
    result = export_artifact(ctc_checkpoint, tmp_path / "base", executorch_recipe("fp32", longest=48_000),
                             latency_repeats=0)
    assert result.passed, result.report.failures
    assert max(c.metrics["max_abs_error"] for c in result.report.cases) < 1e-4


@pytest.mark.skipif(HAS_EXECUTORCH, reason="the [executorch] extra is installed: the refusal cannot happen here")
def test_target_refuses_without_the_extra(tmp_path, capsys):
    assert_refused_without_extra("executorch", "executorch", tmp_path, capsys)
