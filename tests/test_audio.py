"""The audio front end against Hugging Face's Wav2Vec2FeatureExtractor and real audio files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from hubert_export.audio import (
    FeatureExtractorConfig,
    chunk_spans,
    iter_audio_files,
    load_audio,
    normalize,
    prepare_batch,
)
from hubert_export.corpus import read_transcripts
from hubert_export.errors import HubertExportError

transformers = pytest.importorskip("transformers")


def _sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_frequency(signal: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[spectrum.argmax()])


def _hf_extract(waveforms: list[np.ndarray], config: FeatureExtractorConfig) -> dict[str, np.ndarray]:
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=config.feature_size,
        sampling_rate=config.sampling_rate,
        padding_value=config.padding_value,
        do_normalize=config.do_normalize,
        return_attention_mask=config.return_attention_mask,
    )
    out = extractor(waveforms, sampling_rate=config.sampling_rate, padding=True, return_tensors="np")
    return {key: np.asarray(value) for key, value in out.items()}


# Different lengths, offsets and scales so that padding and per-utterance statistics both matter.
def _batch(dtype=np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        (0.3 + 0.1 * rng.standard_normal(1600)).astype(dtype),
        (-0.2 + 0.5 * rng.standard_normal(400)).astype(dtype),
        (0.05 * rng.standard_normal(2345) + _sine(220, 16000, 2345 / 16000)).astype(dtype),
    ]


# --- front end vs Hugging Face ------------------------------------------------------------------


@pytest.mark.parametrize("do_normalize", [True, False])
@pytest.mark.parametrize("return_attention_mask", [True, False])
@pytest.mark.parametrize("padding_value", [0.0, -0.5])
def test_prepare_batch_matches_hugging_face(do_normalize, return_attention_mask, padding_value):
    config = FeatureExtractorConfig(
        do_normalize=do_normalize, return_attention_mask=return_attention_mask, padding_value=padding_value
    )
    waveforms = _batch()
    ours = prepare_batch(waveforms, config)
    reference = _hf_extract(waveforms, config)

    assert set(ours) == set(reference)
    assert ours["input_values"].dtype == np.float32
    assert ours["input_values"].shape == (3, 2345)
    np.testing.assert_allclose(ours["input_values"], reference["input_values"], atol=1e-6, rtol=0)
    if return_attention_mask:
        assert ours["attention_mask"].dtype == np.int64
        np.testing.assert_array_equal(ours["attention_mask"], reference["attention_mask"])
        assert ours["attention_mask"].sum(axis=1).tolist() == [1600, 400, 2345]


def test_prepare_batch_float64_and_single_item_match_hugging_face():
    config = FeatureExtractorConfig(return_attention_mask=True)
    for waveforms in (_batch(np.float64), [_batch()[0]]):
        ours = prepare_batch(waveforms, config)
        reference = _hf_extract(waveforms, config)
        np.testing.assert_allclose(ours["input_values"], reference["input_values"], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(ours["attention_mask"], reference["attention_mask"])


def test_normalised_rows_with_mask_have_unit_statistics_and_padding_value():
    config = FeatureExtractorConfig(return_attention_mask=True, padding_value=0.25)
    values = prepare_batch(_batch(), config)["input_values"]
    short = values[1]
    assert abs(short[:400].mean()) < 1e-5
    assert abs(short[:400].std() - 1) < 1e-3
    assert np.all(short[400:] == 0.25)


def test_without_mask_hugging_face_normalises_the_padding_too():
    # The quirk prepare_batch reproduces: padded positions end up at -mean/std, not padding_value.
    values = prepare_batch(_batch(), FeatureExtractorConfig())["input_values"]
    assert abs(values[1].mean()) < 1e-5
    assert np.all(values[1, 400:] != 0.0)


def test_normalize_matches_hugging_face():
    waveform = _batch()[2]
    reference = transformers.Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm([waveform], None)[0]
    np.testing.assert_allclose(normalize(waveform), reference, atol=1e-6, rtol=0)
    assert normalize(waveform).dtype == np.float32


@pytest.mark.parametrize("bad", [[], [np.zeros(0, np.float32)], [np.zeros((2, 500), np.float32)]])
def test_prepare_batch_rejects_empty_or_multichannel(bad):
    with pytest.raises(HubertExportError, match="batch|shape"):
        prepare_batch(bad, FeatureExtractorConfig())


# --- preprocessor_config.json ------------------------------------------------------------------


def test_config_defaults_when_file_absent(tmp_path):
    assert FeatureExtractorConfig.from_dir(tmp_path) == FeatureExtractorConfig(
        sampling_rate=16000, do_normalize=True, return_attention_mask=False, padding_value=0.0, feature_size=1
    )


def test_config_reads_file_written_by_hugging_face(tmp_path):
    transformers.Wav2Vec2FeatureExtractor(
        sampling_rate=8000, do_normalize=False, return_attention_mask=True, padding_value=0.5
    ).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert "feature_extractor_type" in raw  # an unknown key that must be ignored
    config = FeatureExtractorConfig.from_dir(tmp_path)
    assert config == FeatureExtractorConfig(
        sampling_rate=8000, do_normalize=False, return_attention_mask=True, padding_value=0.5, feature_size=1
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"sampling_rate": "16k"}', "sampling_rate"),
        ('{"do_normalize": "yes"}', "do_normalize"),
        ('{"feature_size": 80}', "feature_size"),
    ],
)
def test_config_rejects_bad_file(tmp_path, text, match):
    (tmp_path / "preprocessor_config.json").write_text(text)
    with pytest.raises(HubertExportError, match=match):
        FeatureExtractorConfig.from_dir(tmp_path)


def test_config_rejects_missing_directory(tmp_path):
    with pytest.raises(HubertExportError, match="does not exist"):
        FeatureExtractorConfig.from_dir(tmp_path / "nope")


# --- reading files ------------------------------------------------------------------------------


def test_load_44k_stereo_wav_mixes_down_and_resamples(tmp_path):
    rate, seconds = 44100, 1.5
    left = _sine(440, rate, seconds, amplitude=0.8)
    right = _sine(440, rate, seconds, amplitude=0.4)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")

    waveform = load_audio(path)

    expected_len = round(len(left) * 16000 / rate)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(len(waveform) - expected_len) <= 1
    assert abs(_dominant_frequency(waveform, 16000) - 440) <= 5
    # The mean of the two channels is a 0.6-amplitude sine: RMS 0.6/sqrt(2) away from the edges.
    middle = waveform[2000:-2000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.6 / np.sqrt(2), rel=0.01)


def test_load_mono_mixdown_is_channel_mean_without_resampling(tmp_path):
    rng = np.random.default_rng(1)
    channels = rng.uniform(-0.5, 0.5, size=(1000, 3)).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, channels, 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), channels.mean(axis=1), atol=1e-7)


def test_load_resamples_to_requested_rate(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, _sine(1000, 16000, 1.0), 16000)
    waveform = load_audio(path, sampling_rate=8000)
    assert len(waveform) == 8000
    assert abs(_dominant_frequency(waveform, 8000) - 1000) <= 5


@pytest.mark.parametrize(
    "suffix, subtype, atol", [(".flac", "PCM_16", 1e-4), (".ogg", "VORBIS", None), (".WAV", "PCM_16", 1e-4)]
)
def test_load_flac_ogg_and_uppercase_suffix(tmp_path, suffix, subtype, atol):
    tone = _sine(440, 16000, 1.0)
    path = tmp_path / f"tone{suffix}"
    sf.write(path, tone, 16000, subtype=subtype, format="WAV" if suffix == ".WAV" else None)
    waveform = load_audio(path)
    assert waveform.dtype == np.float32
    assert abs(len(waveform) - len(tone)) <= 1
    assert abs(_dominant_frequency(waveform, 16000) - 440) <= 5
    if atol is not None:  # lossless: sample for sample, up to 16-bit quantisation
        np.testing.assert_allclose(waveform, tone, atol=atol)


def _write_bad(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.wav"
    if case == "empty":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif case == "short":
        sf.write(path, np.full(100, 0.1, np.float32), 16000)
    elif case == "short_after_resampling":
        sf.write(path, np.full(1000, 0.1, np.float32), 44100)  # 363 samples at 16 kHz
    elif case in ("nan", "inf"):
        samples = np.full(1600, 0.1, np.float32)
        samples[800] = np.nan if case == "nan" else np.inf
        sf.write(path, samples, 16000, subtype="FLOAT")
    elif case == "text":
        path.write_text("this is a text file, not a RIFF header\n" * 20)
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty", r"is empty \(0 samples\).*at least 400 samples"),
        ("short", r"too short \(100 samples.*at least 400 samples"),
        ("short_after_resampling", r"too short \(363 samples"),
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("text", "cannot read audio file .*text.wav.*pass a valid WAV, FLAC or OGG"),
        ("missing", "does not exist"),
    ],
)
def test_load_rejects_bad_input(tmp_path, case, match):
    path = _write_bad(tmp_path, case)
    with pytest.raises(HubertExportError, match=match) as info:
        load_audio(path)
    assert "\n" not in str(info.value)


def test_load_rejects_directory_and_honours_min_samples(tmp_path):
    with pytest.raises(HubertExportError, match="not a file"):
        load_audio(tmp_path)
    path = _write_bad(tmp_path, "short")
    assert len(load_audio(path, min_samples=100)) == 100


# --- directories --------------------------------------------------------------------------------


def test_iter_audio_files_recursive_sorted_case_insensitive(tmp_path):
    tone = _sine(440, 16000, 0.1)
    for name in ("b.wav", "a.FLAC", "sub/c.ogg", "sub/deeper/d.Wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}[Path(name).suffix.lower()]
        sf.write(tmp_path / name, tone, 16000, format=fmt)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub" / "e.mp4").write_bytes(b"\0")

    found = iter_audio_files(tmp_path)
    relative = [p.relative_to(tmp_path).as_posix() for p in found]
    assert relative == ["a.FLAC", "b.wav", "sub/c.ogg", "sub/deeper/d.Wav"]


def test_iter_audio_files_rejects_empty_and_missing_directory(tmp_path):
    (tmp_path / "readme.txt").write_text("no audio here")
    message = r"no audio files \(.wav/.flac/.ogg\) in .*--calibration-data/--data"
    with pytest.raises(HubertExportError, match=message):
        iter_audio_files(tmp_path)
    with pytest.raises(HubertExportError, match="does not exist"):
        iter_audio_files(tmp_path / "missing")


def test_read_transcripts_tsv(tmp_path):
    (tmp_path / "transcripts.tsv").write_text("\ufeffutt1\tHELLO  WORLD\n\nutt2\tA B\n", encoding="utf-8")
    assert read_transcripts(tmp_path) == {"utt1": "HELLO WORLD", "utt2": "A B"}


def test_read_transcripts_txt_index_and_bad_line(tmp_path):
    # transcripts.txt takes LibriSpeech/Kaldi's "ID TEXT" as well as a tab; transcripts.tsv needs the tab.
    (tmp_path / "transcripts.txt").write_text("utt1\tHI\nutt2 has no tab\nutt3\n")
    with pytest.raises(HubertExportError, match="transcripts.txt line 3 is not 'ID TRANSCRIPT'"):
        read_transcripts(tmp_path)
    (tmp_path / "transcripts.txt").write_text("utt1\tHI\nutt2 has no tab\n")
    assert read_transcripts(tmp_path) == {"utt1": "HI", "utt2": "has no tab"}
    (tmp_path / "transcripts.txt").unlink()
    (tmp_path / "transcripts.tsv").write_text("utt1\tHI\nutt2 has no tab\n")
    with pytest.raises(HubertExportError, match="transcripts.tsv line 2 .*TAB"):
        read_transcripts(tmp_path)


def test_read_transcripts_per_file_and_none(tmp_path):
    assert read_transcripts(tmp_path) == {}
    tone = _sine(440, 16000, 0.1)
    (tmp_path / "sub").mkdir()
    for stem in ("one", "sub/two", "three"):
        sf.write(tmp_path / f"{stem}.wav", tone, 16000)
    (tmp_path / "one.txt").write_text("FIRST  ONE\n")
    (tmp_path / "sub" / "two.txt").write_text("SECOND")
    assert read_transcripts(tmp_path) == {"one": "FIRST ONE", "two": "SECOND"}


# --- chunking -----------------------------------------------------------------------------------


def test_chunk_spans_known_layout():
    assert chunk_spans(10_000, 4000, 1000) == [(0, 4000), (3000, 7000), (6000, 10_000)]
    assert chunk_spans(3000, 4000, 1000) == [(0, 3000)]
    assert chunk_spans(0, 4000, 1000) == []
    assert chunk_spans(6300, 4000, 1000) == [(0, 4000), (3000, 6300)]
    # A last window of (7600, 7900) or (4000, 4100) is below the receptive field: it is folded
    # into the previous window.
    assert chunk_spans(7900, 4000, 200) == [(0, 4000), (3800, 7900)]
    assert chunk_spans(4100, 4000, 0) == [(0, 4100)]


@pytest.mark.parametrize("chunk, overlap", [(399, 0), (4000, 4000), (4000, -1)])
def test_chunk_spans_rejects_bad_sizes(chunk, overlap):
    with pytest.raises(HubertExportError, match="chunk"):
        chunk_spans(10_000, chunk, overlap)


@settings(max_examples=150, deadline=None)
@given(
    num_samples=st.integers(400, 200_000),
    chunk=st.integers(400, 50_000),
    overlap_fraction=st.floats(0, 0.9),
)
def test_chunk_spans_cover_overlap_and_stay_bounded(num_samples, chunk, overlap_fraction):
    overlap = int(chunk * overlap_fraction)
    spans = chunk_spans(num_samples, chunk, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == num_samples
    for (start, end), (next_start, next_end) in zip(spans, spans[1:]):
        assert next_start == start + chunk - overlap  # windows advance by a fixed hop
        assert end - next_start >= overlap  # and overlap by at least the requested amount
    for start, end in spans:
        assert 400 <= end - start < chunk + 400
