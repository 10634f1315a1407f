"""What the LiteRT and ExecuTorch tests share: the shipped speech, transcript scoring, the refusal.

The shipped model (hubert_export/data/tiny-ctc) was trained on this speech, so its transcripts
mean something: an edge artifact must transcribe tests/data/speech with a CER against the
reference transcripts no worse than eager PyTorch's by more than the precision's `max_cer`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hubert_export import cli
from hubert_export.corpus import read_corpus
from hubert_export.metrics import character_error_rate, text_normalizer
from hubert_export.tokenizer import CTCTokenizer
from hubert_export.transcribe import transcribe

SHIPPED_MODEL = Path(__file__).parents[2] / "hubert_export" / "data" / "tiny-ctc"
SPEECH = Path(__file__).parents[1] / "data" / "speech"


def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def speech_set(directory: Path) -> tuple[list[Path], list[str]]:
    """The shipped utterances plus one recording of the first four in a row (longer than any
    window the tests build, so that transcribe streams it through overlapping windows)."""
    corpus = read_corpus(SPEECH).utterances
    files = [u.path for u in corpus]
    texts = [u.text for u in corpus]
    joined = [sf.read(u.path, dtype="float32") for u in corpus[:4]]
    long_path = directory / "joined.flac"
    sf.write(long_path, np.concatenate([audio for audio, _ in joined]), joined[0][1])
    return files + [long_path], texts + [" ".join(texts[:4])]


def transcript_cer(model_or_artifact: Path, files: list[Path], references: list[str],
                   chunk_seconds: float = 20.0) -> float:
    overlap = min(2.0, chunk_seconds / 4)
    hyps = [t.text for t in transcribe(model_or_artifact, files, chunk_seconds=chunk_seconds,
                                       overlap_seconds=overlap)]
    normalize = text_normalizer(CTCTokenizer.from_dir(SHIPPED_MODEL))
    return character_error_rate([normalize(h) for h in hyps], [normalize(r) for r in references])


def assert_refused_without_extra(target: str, extra: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    code = cli.main(["--target", target, "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and f"[{extra}]" in err and f"--target {target}" in err, err
    assert not out.exists()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """The speech set written for a test module, with the shipped model's eager CER on it."""
    files, texts = speech_set(tmp_path_factory.mktemp("speech"))
    return files, texts, transcript_cer(SHIPPED_MODEL, files, texts)
