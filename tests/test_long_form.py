"""check --chunk-seconds: long recordings gated as transcribe runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hubert_export import cli
from hubert_export.build import DEFAULT_MODEL_DIR, check_artifact, export_artifact
from hubert_export.errors import HubertExportError
from hubert_export.long_form import LongFormOptions, chunked_outcome, whole_utterance
from hubert_export.recipes import default_recipe

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "tests" / "data" / "speech"


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    """Two 25-second recordings joined from the test clips (benchmarks/long_form.py's recipe), with transcripts."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from long_form import long_recordings

    folder = tmp_path_factory.mktemp("long")
    lines = []
    for i, (waveform, text) in enumerate(long_recordings(SPEECH, 16_000, 25 / 60, 2)):
        sf.write(folder / f"long{i}.flac", waveform, 16_000)
        lines.append(f"long{i}\t{text}")
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "shipped-onnx"
    assert export_artifact(DEFAULT_MODEL_DIR, out, default_recipe("onnx"), latency_repeats=0).passed
    return out


def test_chunked_artifact_matches_eager_in_the_same_chunks(shipped_onnx, long_corpus):
    report = check_artifact(shipped_onnx, data_dir=long_corpus, latency_repeats=0,
                            long_form=LongFormOptions(8.0, 1.0))
    served, drift = report.long_form.served, report.long_form.drift
    assert len(served.cases) == len(drift.cases) == 2
    assert all(c.shape[1] >= 16_000 * 25 for c in served.cases)  # whole recordings, never cut to a range
    # FP32 ONNX Runtime against eager, chunk for chunk: the FP32 gate holds with room to spare.
    assert served.passed, served.failures
    assert served.worst()["max_abs_error"] < 1e-4 and served.worst()["argmax_agreement"] == 1.0
    # Against whole utterances the seams move some frames (benchmarks/results/long-form.md), but not most.
    assert 0.9 < drift.worst()["argmax_agreement"] < 1.0
    assert report.passed == (served.passed and drift.passed)
    assert all(f in report.failures for f in report.long_form.failures())


def test_broken_stitching_fails_the_drift_gate(shipped_onnx, long_corpus, monkeypatch):
    """A stitcher that keeps each chunk's first frames instead of its central ones (a second of audio
    repeated and one lost at every seam) runs the same in eager and in the artifact, so the check
    against eager in the same chunks still passes: only LONG_FORM_THRESHOLDS can catch it."""
    from hubert_export.transcribe import ChunkPlan

    def keep_from_chunk_start(self, k, row):
        start = self.bounds[k]
        stop = self.bounds[k + 1] if self.bounds[k + 1] is not None else self.spans[k][0] // self.stride + len(row)
        return row[: min(stop, self.spans[k][0] // self.stride + len(row)) - start]

    options = LongFormOptions(8.0, 2.0)
    assert check_artifact(shipped_onnx, data_dir=long_corpus, latency_repeats=0, long_form=options).long_form.drift.passed
    monkeypatch.setattr(ChunkPlan, "keep", keep_from_chunk_start)
    broken = check_artifact(shipped_onnx, data_dir=long_corpus, latency_repeats=0, long_form=options).long_form
    assert broken.served.passed, broken.served.failures
    assert not broken.drift.passed
    assert any("argmax_agreement" in f or "cer" in f for f in broken.drift.failures), broken.drift.failures


def test_a_chunk_longer_than_the_recording_is_the_whole_utterance(long_corpus):
    """With one chunk, the stitched output is the whole utterance's: the comparison path adds nothing."""
    from hubert_export.audio import FeatureExtractorConfig, load_audio
    from hubert_export.model.config import load_config
    from hubert_export.runner import EagerRunner
    from hubert_export.tasks import family_of
    from hubert_export.transcribe import Transcriber

    config = load_config(DEFAULT_MODEL_DIR)
    fe = FeatureExtractorConfig.from_dir(DEFAULT_MODEL_DIR)
    task = family_of(config).task("ctc")
    waveform = load_audio(long_corpus / "long0.flac", 16_000)
    with Transcriber(DEFAULT_MODEL_DIR) as transcriber, EagerRunner(
            task.model_class.from_pretrained(DEFAULT_MODEL_DIR), task) as eager:
        case, whole = whole_utterance(eager, waveform, "long0", None, fe)
        one = chunked_outcome(transcriber, case, whole, waveform, LongFormOptions(60.0, 2.0), config=config,
                              tokenizer=transcriber.tokenizer).result
        several = chunked_outcome(transcriber, case, whole, waveform, LongFormOptions(5.0, 1.0), config=config,
                                  tokenizer=transcriber.tokenizer).result
    assert one.metrics["argmax_agreement"] == 1.0 and one.metrics["cer"] == 0.0
    assert one.metrics["max_abs_error"] < 1e-3  # whole-file statistics in float64 against Hugging Face's float32
    assert several.metrics["argmax_agreement"] < 1.0  # five-second chunks do move frames


def test_the_cli_prints_both_comparisons_and_writes_them(shipped_onnx, long_corpus, tmp_path, capsys):
    code = cli.main(["check", str(shipped_onnx), "--data", str(long_corpus), "--chunk-seconds", "10",
                     "--latency-repeats", "0", "--quiet", "--report-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code in (0, 1)
    assert "long-form (10 s chunks, 2 s overlap, 2 utterances) against same chunks in eager" in out
    assert "against whole utterances in eager" in out
    written = json.loads((tmp_path / "parity.json").read_text())["long_form"]
    assert written["chunk_seconds"] == 10 and written["overlap_seconds"] == 2
    assert len(written["served"]["cases"]) == 2 and "## Long-form" in (tmp_path / "parity.md").read_text()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--chunk-seconds", "10"], "add --data CORPUS"),
        (["--overlap-seconds", "1"], "add --chunk-seconds"),
        (["--chunk-seconds", "10", "--golden"], "drop --chunk-seconds"),
        (["--chunk-seconds", "0", "--data", "DATA"], "must be a positive number"),
        (["--chunk-seconds", "5", "--overlap-seconds", "5", "--data", "DATA"], "shorter than"),
    ],
)
def test_bad_long_form_options_are_one_line(shipped_onnx, long_corpus, capsys, extra, words):
    argv = ["check", str(shipped_onnx), "--quiet", *[str(long_corpus) if a == "DATA" else a for a in extra]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_only_ctc_artifacts_are_checked_in_chunks(tmp_path, long_corpus):
    out = tmp_path / "features"
    recipe = default_recipe("onnx").with_overrides(task="feature-extraction")
    export_artifact(DEFAULT_MODEL_DIR, out, recipe, latency_repeats=0)
    with pytest.raises(HubertExportError, match="not CTC logits"):
        check_artifact(out, data_dir=long_corpus, latency_repeats=0, long_form=LongFormOptions(10.0, 2.0))


def test_recordings_join_every_clip_with_its_transcript():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from long_form import long_recordings

    [(waveform, text)] = long_recordings(SPEECH, 16_000, 0.5, 1)
    assert len(waveform) >= 30 * 16_000 and np.isfinite(waveform).all()
    assert len(text.split()) >= 20
