"""The parity harness's built-in cases: sized to the deployment, padding always gated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubert_export import cli
from hubert_export.audio import MIN_SAMPLES, FeatureExtractorConfig
from hubert_export.parity import builtin_cases
from hubert_export.recipes import Shape, ShapeRange, load_recipe

RECIPES_DIR = Path(__file__).parent.parent / "recipes"


def _check_sized(cases, shape_range: ShapeRange) -> None:
    assert cases, "no built-in case at all"
    for case in cases:
        batch, samples = case.inputs["input_values"].shape
        assert shape_range.contains(batch, samples), (case.name, batch, samples)
        assert len(case.sample_lengths) == batch and all(n >= 1 for n in case.sample_lengths)
        assert all(shape_range.min.samples <= n <= shape_range.max.samples for n in case.sample_lengths)
    padded = [c for c in cases if "-padded-" in c.name]
    batch = max(shape_range.min.batch, min(3, shape_range.max.batch))
    if batch >= 2:
        assert len(padded) == 1 and len(padded[0].sample_lengths) == batch
        if shape_range.min.samples < shape_range.max.samples:
            assert len(set(padded[0].sample_lengths)) >= 2  # a real padding, not a uniform batch
    else:
        names = [c.name for c in cases]
        assert not padded
        assert any(n.startswith("b1-leading-zeros-") for n in names)
        assert any(n.startswith("b1-trailing-zeros-") for n in names)


@settings(max_examples=200, deadline=None)
@given(min_batch=st.integers(1, 4), extra_batch=st.integers(0, 20),
       min_samples=st.integers(MIN_SAMPLES, 60_000), extra_samples=st.integers(0, 1_000_000),
       mask=st.booleans())
def test_builtin_cases_fit_every_shape_range(min_batch, extra_batch, min_samples, extra_samples, mask):
    shape_range = ShapeRange(Shape(min_batch, min_samples), Shape(min_batch, min_samples),
                             Shape(min_batch + extra_batch, min_samples + extra_samples))
    _check_sized(builtin_cases(FeatureExtractorConfig(), mask, shape_range), shape_range)


def test_zero_padded_cases_hold_silence_at_the_named_end():
    shape_range = ShapeRange(Shape(1, 400), Shape(1, 8_000), Shape(1, 8_000))
    cases = {c.name: c for c in builtin_cases(FeatureExtractorConfig(do_normalize=False), False, shape_range)}
    leading, trailing = cases["b1-leading-zeros-8000"], cases["b1-trailing-zeros-8000"]
    assert (leading.inputs["input_values"][0, :2_000] == 0).all() and leading.inputs["input_values"][0, -1] != 0
    assert (trailing.inputs["input_values"][0, -2_000:] == 0).all() and trailing.inputs["input_values"][0, 0] != 0


@pytest.mark.parametrize("recipe, expected", [
    ("ci-gate.yaml", "b2-padded-24000-17777"),
    ("arm64-onnxruntime-int8.yaml", "b1-trailing-zeros-24000"),
    ("gpu-server-tensorrt-fp16.yaml", "b3-padded-24000-17777-9001"),
])
def test_shipped_recipes_gate_padding(recipe, expected):
    shape_range = load_recipe(RECIPES_DIR / recipe).shapes.range
    cases = builtin_cases(FeatureExtractorConfig(), True, shape_range)
    _check_sized(cases, shape_range)
    assert expected in [c.name for c in cases]


def test_short_window_batch_1_build_passes_with_zero_padded_cases(ctc_checkpoint, tmp_path, capsys):
    out = tmp_path / "kws"
    code = cli.main(["--target", "onnx", "--model", str(ctc_checkpoint), "--output", str(out), "--quiet",
                     "--max-shape", "1,8000", "--opt-shape", "1,8000", "--latency-repeats", "0"])
    assert code == 0, capsys.readouterr()
    names = [c["name"] for c in json.loads((out / "parity.json").read_text())["cases"]]
    assert names == ["b1-400", "b1-1234", "b1-leading-zeros-8000", "b1-trailing-zeros-8000"]


def test_ci_recipe_report_shows_the_padded_batch(ctc_checkpoint, tmp_path, capsys):
    out = tmp_path / "ci"
    code = cli.main(["--recipe", str(RECIPES_DIR / "ci-gate.yaml"), "--model", str(ctc_checkpoint),
                     "--output", str(out), "--quiet", "--latency-repeats", "0"])
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "parity.json").read_text())
    padded = [c for c in report["cases"] if c["name"] == "b2-padded-24000-17777"]
    assert padded and padded[0]["shape"] == [2, 24_000] and report["passed"]
    assert "| b2-padded-24000-17777 | 2x24000 |" in (out / "parity.md").read_text()


def test_frame_rates_gate_only_cases_with_enough_frames():
    """A flipped near-tie on a 3-frame case is reported, not gated; the same rate on a long case,
    and a bad cosine on a short one, fail."""
    from hubert_export.parity import MIN_FRAMES_FOR_RATES, CaseOutcome, CaseResult, summarize, thresholds_for

    def outcome(name: str, frames: int, cosine: float) -> CaseOutcome:
        metrics = {"min_cosine_similarity": cosine, "argmax_agreement": 1 / 3, "token_edit_rate": 2 / 3}
        return CaseOutcome(CaseResult(name, [1, 320 * frames], metrics, 0.0, 0.0, frames=frames), [])

    def failures(*outcomes: CaseOutcome) -> list[str]:
        return summarize(list(outcomes), target="onnx", precision="int8", task="ctc",
                         thresholds=thresholds_for("int8")).failures

    assert failures(outcome("short", 3, 0.993)) == []
    long_failures = failures(outcome("long", MIN_FRAMES_FOR_RATES, 0.993))
    assert any("long: argmax_agreement" in f for f in long_failures)
    assert any("long: token_edit_rate" in f for f in long_failures)
    assert failures(outcome("broken", 3, 0.43)) == ["broken: min_cosine_similarity 0.43 below min_cosine_similarity 0.7"]


def test_transcript_wer_gates_only_over_enough_words():
    """One changed letter in 18 words of synthetic-audio transcript is WER 0.056 a word; the same
    WER over real speech's many words fails, and the CER gate holds either way."""
    from hubert_export.parity import MIN_WORDS_FOR_WER, CaseOutcome, CaseResult, summarize, thresholds_for

    def failures(eager: str, artifact: str) -> list[str]:
        case = CaseResult("c", [1, 16_000], {}, 0.0, 0.0,
                          [{"eager": eager, "artifact": artifact, "reference": None}], frames=49)
        return summarize([CaseOutcome(case)], target="openvino", precision="int8", task="ctc",
                         thresholds=thresholds_for("int8")).failures

    few = "HUK D OM UEEKFSUEC USIVK QUECH DEC EUS SHTOUTSR"  # 9 words, 3 with one letter changed below
    changed = "HUK TD OM UEKFSUEC USIVK QUECH DEC EUS SHOUTSR"
    assert failures(few, changed) == []
    many = " ".join([few] * (MIN_WORDS_FOR_WER // 9 + 1))
    assert failures(many, " ".join([changed] * (MIN_WORDS_FOR_WER // 9 + 1))) == [
        "all cases: wer against eager transcripts 0.333 above max_wer 0.25"]
    assert any("all cases: cer" in f for f in failures(few, "X" * len(few)))
