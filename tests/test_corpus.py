"""Corpora in every accepted format, made here, read into the same utterances; bad corpora fail in one line."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hubert_export.corpus import CorpusOptions, read_corpus
from hubert_export.errors import HubertExportError

SPEECH_DIR = Path(__file__).parent / "data" / "speech"


def _tone(samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * np.sin(np.arange(samples) * rng.uniform(0.05, 0.2))).astype(np.float32)


def _write(path: Path, samples: int = 1600, seed: int = 0, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _tone(samples, seed), rate)
    return path


def _read(source: Path, **options) -> list[tuple[str, str | None]]:
    return [(u.id, u.text) for u in read_corpus(source, CorpusOptions(**options)).utterances]


# --- folders ------------------------------------------------------------------------------------


def test_librispeech_nested_trans_txt(tmp_path):
    for speaker, chapter, n in (("84", "121123", 2), ("174", "50561", 1)):
        folder = tmp_path / speaker / chapter
        ids = [f"{speaker}-{chapter}-{i:04d}" for i in range(n)]
        for i, id_ in enumerate(ids):
            _write(folder / f"{id_}.flac", seed=i)
        (folder / f"{speaker}-{chapter}.trans.txt").write_text(
            "".join(f"{id_} WORDS OF  {id_[-1]}\n" for id_ in ids))
    corpus = read_corpus(tmp_path)
    assert corpus.format == "librispeech"
    assert [(u.id, u.text) for u in corpus.utterances] == [
        ("174-50561-0000", "WORDS OF 0"), ("84-121123-0000", "WORDS OF 0"), ("84-121123-0001", "WORDS OF 1")]
    audio = corpus.utterances[2].load(16000)
    np.testing.assert_array_equal(audio, sf.read(tmp_path / "84/121123/84-121123-0001.flac", dtype="float32")[0])


def test_kaldi_text_with_and_without_wav_scp(tmp_path):
    data = tmp_path / "data" / "test"
    audio = tmp_path / "audio"
    _write(audio / "rec_a.wav", seed=1)
    _write(audio / "rec_b.wav", seed=2)
    data.mkdir(parents=True)
    (data / "text").write_text("utt_a hello there\nutt_b general kenobi\n")
    (data / "wav.scp").write_text(f"utt_a ../../audio/rec_a.wav\nutt_b {audio / 'rec_b.wav'}\nutt_c unused.wav\n")
    corpus = read_corpus(data)
    assert corpus.format == "kaldi"
    assert [(u.id, u.text, u.path.resolve()) for u in corpus.utterances] == [
        ("utt_a", "hello there", (audio / "rec_a.wav").resolve()), ("utt_b", "general kenobi", audio / "rec_b.wav")]

    # Without wav.scp the ids are file stems under the folder.
    plain = tmp_path / "plain"
    _write(plain / "wavs" / "x1.wav")
    (plain / "text").write_text("x1 some words\n")
    assert _read(plain) == [("x1", "some words")]


def test_kaldi_refuses_pipes_and_segments(tmp_path):
    (tmp_path / "text").write_text("u1 hi\n")
    (tmp_path / "wav.scp").write_text("u1 sox in.flac -t wav - |\n")
    with pytest.raises(HubertExportError, match=r"wav.scp line 1: 'u1' is a piped command.*plain audio paths"):
        read_corpus(tmp_path)
    (tmp_path / "wav.scp").write_text("u1 in.wav\n")
    (tmp_path / "segments").write_text("u1 rec 0.0 1.0\n")
    with pytest.raises(HubertExportError, match="segments.*not supported"):
        read_corpus(tmp_path)


def test_per_file_txt_and_audio_only(tmp_path):
    _write(tmp_path / "one.wav")
    _write(tmp_path / "sub" / "two.flac", seed=1)
    assert read_corpus(tmp_path).format == "audio only"
    assert _read(tmp_path) == [("one", None), ("two", None)]
    (tmp_path / "sub" / "two.txt").write_text("Second  one.\n")
    corpus = read_corpus(tmp_path)
    assert corpus.format == "per-file STEM.txt"
    assert [(u.id, u.text) for u in corpus.utterances] == [("one", None), ("two", "Second one.")]


def test_folder_errors_name_file_and_line(tmp_path):
    _write(tmp_path / "a.wav")
    _write(tmp_path / "b.wav", seed=1)
    index = tmp_path / "transcripts.txt"
    index.write_text("a FIRST\nb SECOND\na AGAIN\n")
    with pytest.raises(HubertExportError, match=r"transcripts.txt line 3: id 'a' is already listed at .*line 1"):
        read_corpus(tmp_path)
    index.write_text("a FIRST\nb SECOND\nc THIRD\n")
    with pytest.raises(HubertExportError, match=r"transcripts.txt line 3: no audio for id 'c'"):
        read_corpus(tmp_path)
    index.write_text("a FIRST\n")
    with pytest.raises(HubertExportError, match=r"b.wav has no transcript in .*transcripts.txt"):
        read_corpus(tmp_path)
    index.write_text("a FIRST\nb\n")
    with pytest.raises(HubertExportError, match=r"transcripts.txt line 2 is not 'ID TRANSCRIPT'"):
        read_corpus(tmp_path)
    index.unlink()
    _write(tmp_path / "sub" / "a.flac")
    with pytest.raises(HubertExportError, match=r"2 audio files share the id 'a'"):
        read_corpus(tmp_path)
    # Ids repeated across LibriSpeech files are caught too.
    other = tmp_path / "libri"
    for chapter in ("1", "2"):
        _write(other / chapter / f"s-{chapter}.flac")
        (other / chapter / f"s-{chapter}.trans.txt").write_text("s-1 SAME ID\n")
    with pytest.raises(HubertExportError, match=r"2.trans.txt line 1: id 's-1' is already listed at .*1.trans.txt line 1"):
        read_corpus(other)


# --- manifests ----------------------------------------------------------------------------------


def test_common_voice_tsv_with_clips_folder(tmp_path):
    for name in ("cv_1.wav", "cv_2.wav"):
        _write(tmp_path / "clips" / name)
    (tmp_path / "test.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\n"
        "c1\tcv_1.wav\t\"Quoted\" words, here!\t2\n\n"
        "c2\tcv_2.wav\tSecond one\t1\n")
    corpus = read_corpus(tmp_path / "test.tsv")
    assert corpus.format == "tsv manifest"
    assert [(u.id, u.text, u.path) for u in corpus.utterances] == [
        ("cv_1", '"Quoted" words, here!', tmp_path / "clips" / "cv_1.wav"),
        ("cv_2", "Second one", tmp_path / "clips" / "cv_2.wav")]


def test_csv_with_named_columns_and_errors(tmp_path):
    _write(tmp_path / "audio" / "a.wav")
    manifest = tmp_path / "m.csv"
    manifest.write_text('wav_file,words\naudio/a.wav,"hello, world"\n')
    with pytest.raises(HubertExportError, match=r"m.csv has no audio column \(header: wav_file, words;.*--audio-column"):
        read_corpus(manifest)
    with pytest.raises(HubertExportError, match=r"m.csv has no column 'nope'.*--text-column"):
        read_corpus(manifest, CorpusOptions(audio_column="wav_file", text_column="nope"))
    assert _read(manifest, audio_column="wav_file", text_column="words") == [("audio/a", "hello, world")]
    manifest.write_text("path,text\naudio/a.wav,one\naudio/a.wav,two\n")
    with pytest.raises(HubertExportError, match=r"m.csv line 3: utterance 'audio/a' is already listed at .*line 2"):
        read_corpus(manifest)
    manifest.write_text("path,text\naudio/a.wav,one,extra\n")
    with pytest.raises(HubertExportError, match=r"m.csv line 2 has 3 fields, the header has 2"):
        read_corpus(manifest)
    manifest.write_text("path,text\naudio/missing.wav,one\n")
    with pytest.raises(HubertExportError, match=r"m.csv line 2: audio file .*missing.wav does not exist"):
        read_corpus(manifest)


def test_nemo_jsonl_and_errors(tmp_path):
    _write(tmp_path / "wavs" / "x.wav")
    _write(tmp_path / "wavs" / "y.wav", seed=1)
    manifest = tmp_path / "manifest.jsonl"
    lines = [{"audio_filepath": "wavs/x.wav", "text": "the x", "duration": 0.1},
             {"audio_filepath": str(tmp_path / "wavs" / "y.wav"), "text": "the y"}]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    corpus = read_corpus(manifest)
    assert corpus.format == "jsonl manifest"
    assert [(u.text, u.path) for u in corpus.utterances] == [("the x", tmp_path / "wavs" / "x.wav"),
                                                            ("the y", tmp_path / "wavs" / "y.wav")]
    for bad, message in [
        ('{"audio_filepath": "wavs/x.wav", "text": "a"}\n{not json\n', r"line 2 is not a JSON object"),
        ('{"audio_filepath": "wavs/x.wav", "text": "a", "duration": "long"}\n', r"line 1: duration 'long'"),
        ('{"text": "a"}\n', r"line 1 has no audio path"),
        ('{"audio_filepath": "wavs/x.wav", "text": "a"}\n{"audio_filepath": "wavs/x.wav", "text": "b"}\n',
         r"line 2: utterance 'wavs/x' is already listed at .*line 1"),
        ('{"audio_filepath": "wavs/gone.wav", "text": "a"}\n', r"line 1: audio file .*gone.wav does not exist"),
    ]:
        manifest.write_text(bad)
        with pytest.raises(HubertExportError, match=r"manifest.jsonl " + message):
            read_corpus(manifest)


# --- limit and sample ---------------------------------------------------------------------------


def test_limit_and_deterministic_sample(tmp_path):
    for i in range(20):
        _write(tmp_path / f"u{i:02d}.wav", seed=i)
    (tmp_path / "transcripts.tsv").write_text("".join(f"u{i:02d}\tTEXT {i}\n" for i in range(20)))
    every = [id_ for id_, _ in _read(tmp_path)]
    assert every == [f"u{i:02d}" for i in range(20)]
    assert [id_ for id_, _ in _read(tmp_path, limit=3)] == every[:3]
    first = [id_ for id_, _ in _read(tmp_path, sample=5, seed=7)]
    assert len(first) == 5 and first == sorted(first) and set(first) <= set(every)
    assert [id_ for id_, _ in _read(tmp_path, sample=5, seed=7)] == first  # deterministic
    assert [id_ for id_, _ in _read(tmp_path, sample=5, seed=8)] != first  # and the seed matters
    assert [id_ for id_, _ in _read(tmp_path, sample=5, seed=7, limit=2)] == first[:2]
    assert len(_read(tmp_path, sample=50)) == 20
    with pytest.raises(HubertExportError, match="--limit 0 must be a positive"):
        CorpusOptions(limit=0)


def test_manifest_checks_only_the_chosen_audio(tmp_path):
    _write(tmp_path / "a.wav")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,text\na.wav,kept\nmissing.wav,not read\n")
    assert _read(manifest, limit=1) == [("a", "kept")]


# --- datasets -----------------------------------------------------------------------------------


def _wav_bytes(samples: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, _tone(samples, seed), 16000, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hf_dataset():
    datasets = pytest.importorskip("datasets", reason="the datasets format needs pip install -e .[datasets]")
    rows = {"audio": [{"bytes": _wav_bytes(1600 + 10 * i, i), "path": f"clip{i}.wav"} for i in range(4)],
            "sentence": [f"Sentence number {i}." for i in range(4)]}
    return datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())


def test_datasets_save_to_disk_and_parquet(tmp_path, hf_dataset):
    hf_dataset.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "pq").mkdir()
    hf_dataset.to_parquet(str(tmp_path / "pq" / "test-00000.parquet"))
    expected = [(f"clip{i}", f"Sentence number {i}.") for i in range(4)]
    for source in (tmp_path / "saved", tmp_path / "pq", tmp_path / "pq" / "test-00000.parquet"):
        corpus = read_corpus(source)
        assert corpus.format == "datasets"
        assert [(u.id, u.text) for u in corpus.utterances] == expected
        np.testing.assert_allclose(corpus.utterances[3].load(16000), _tone(1630, 3), atol=1e-4)  # 16-bit WAV
    assert _read(tmp_path / "saved", sample=2, seed=1) == _read(tmp_path / "pq", sample=2, seed=1)
    with pytest.raises(HubertExportError, match=r"has no column 'words' \(columns: audio, sentence\)"):
        read_corpus(tmp_path / "saved", CorpusOptions(text_column="words"))


def test_datasets_dict_needs_one_split(tmp_path, hf_dataset):
    import datasets

    datasets.DatasetDict({"train": hf_dataset, "test": hf_dataset}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(HubertExportError, match=r"holds the splits train, test: pass one of them, e.g. --data .*dd/train"):
        read_corpus(tmp_path / "dd")
    assert len(read_corpus(tmp_path / "dd" / "test").utterances) == 4


def test_datasets_without_the_library_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(HubertExportError, match=r"needs the datasets library: pip install 'hubert-export\[datasets\]'"):
        read_corpus(tmp_path)


def test_shipped_speech_reads_as_before():
    corpus = read_corpus(SPEECH_DIR)
    assert corpus.format == "transcripts.tsv" and len(corpus.utterances) == 20
    assert corpus.utterances[4].id == "utt04" and corpus.utterances[4].text == "IT'S HE MOON WALK CITY SLOW"


# --- through the check: lower-case references score like upper-case ones ------------------------


@pytest.fixture(scope="module")
def shipped_artifact(tmp_path_factory) -> Path:
    from hubert_export.build import DEFAULT_MODEL_DIR, export_artifact
    from hubert_export.recipes import default_recipe

    out = tmp_path_factory.mktemp("shipped") / "tiny-ctc-onnx"
    result = export_artifact(DEFAULT_MODEL_DIR, out, default_recipe("onnx"),
                             latency_repeats=0)
    assert result.passed, result.report.failures
    return out


def test_lower_case_references_score_like_upper_case(shipped_artifact, tmp_path):
    from hubert_export.build import check_artifact

    upper = check_artifact(shipped_artifact, data_dir=SPEECH_DIR, latency_repeats=0)
    # The corpus: LibriSpeech-style "ID text" lines, lower case, with punctuation added.
    lower_dir = tmp_path / "lower"
    lower_dir.mkdir()
    lines = []
    for line in (SPEECH_DIR / "transcripts.tsv").read_text().splitlines():
        id_, text = line.split("\t")
        shutil.copy(SPEECH_DIR / f"{id_}.flac", lower_dir)
        lines.append(f"{id_} {text.lower().capitalize()}.")
    (lower_dir / "transcripts.txt").write_text("\n".join(lines) + "\n")
    lower = check_artifact(shipped_artifact, data_dir=lower_dir, latency_repeats=0)
    raw = check_artifact(shipped_artifact, data_dir=lower_dir, latency_repeats=0,
                         normalize=False)

    assert upper.passed and lower.passed
    up, low = upper.ground_truth, lower.ground_truth
    assert up["utterances"] == low["utterances"] == 20
    assert up["artifact_cer"] < 0.06  # the shipped model's measured CER is 2.75% (TRAINING.md)
    assert low["artifact_cer"] == pytest.approx(up["artifact_cer"], abs=1e-12)
    assert low["artifact_wer"] == pytest.approx(up["artifact_wer"], abs=1e-12)
    assert low["raw_artifact_cer"] > 0.7  # every letter counted as an error without normalisation
    assert raw.normalization is None and raw.ground_truth["artifact_cer"] == low["raw_artifact_cer"]
    assert "upper-cased" in lower.normalization and "'" in lower.normalization
    # The report keeps the worst utterances, normalised, in JSON and Markdown.
    saved = json.loads((shipped_artifact / "parity.json").read_text())
    assert saved["normalization"] is None and saved["worst_utterances"]  # the last check ran with --no-normalize
    worst = lower.worst_utterances
    assert worst and worst[0]["cer"] >= worst[-1]["cer"] > 0
    assert all(u["reference"] == u["reference"].upper() and "." not in u["reference"] for u in worst)
    assert f"| {worst[0]['id']} |" in lower.to_markdown()


def test_check_command_takes_the_corpus_flags(shipped_artifact, tmp_path, capsys):
    from hubert_export.cli import main

    manifest = tmp_path / "cv.tsv"
    rows = [line.split("\t") for line in (SPEECH_DIR / "transcripts.tsv").read_text().splitlines()]
    manifest.write_text("path\twords\n" + "".join(f"{SPEECH_DIR / id_}.flac\t{text.lower()}!\n" for id_, text in rows))
    argv = ["check", str(shipped_artifact), "--data", str(manifest), "--text-column", "words", "--sample", "5",
            "--seed", "3", "--limit", "4", "--latency-repeats", "0", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "normalisation: upper-cased" in out
    saved = json.loads((shipped_artifact / "parity.json").read_text())
    assert saved["ground_truth"]["utterances"] == 4.0
    assert saved["ground_truth"]["artifact_cer"] < 0.2 < saved["ground_truth"]["raw_artifact_cer"]
    assert main(argv + ["--no-normalize"]) == 0
    assert "normalisation: none (--no-normalize)" in capsys.readouterr().out
    # Without --text-column no column holds transcripts: parity on all 20 recordings, no CER against references.
    assert main(argv[:4] + ["--latency-repeats", "0", "--quiet"]) == 0
    saved = json.loads((shipped_artifact / "parity.json").read_text())
    assert saved["ground_truth"] is None and sum(c["name"].startswith("/") for c in saved["cases"]) == 20
    assert main(argv[:4] + ["--audio-column", "file", "--quiet"]) == 2
    assert "has no column 'file' (header: path, words)" in capsys.readouterr().err
