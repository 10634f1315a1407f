"""The audio front end: files on disk to the exact `input_values` a HuBERT checkpoint expects.

Everything here mirrors Hugging Face's `Wav2Vec2FeatureExtractor` number for number (same float32
arithmetic, same padding rules) so that exported artifacts can be compared against the PyTorch
model without a front-end mismatch hiding in the parity numbers. transformers itself is never
imported: it is only the test-time reference.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from hubert_export.errors import HubertExportError

# HuBERT's convolutional feature encoder needs 400 samples (25 ms at 16 kHz) to emit one frame.
MIN_SAMPLES = 400
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# Hugging Face adds this to the variance before the square root; matching it keeps parity exact.
NORM_EPS = 1e-7


def load_audio(
    path: str | Path, sampling_rate: int = 16000, *, min_samples: int = MIN_SAMPLES
) -> np.ndarray:
    """Read a WAV/FLAC/OGG file as float32 mono at `sampling_rate`, rejecting unusable recordings."""
    path = Path(path)
    if sampling_rate <= 0:
        raise HubertExportError(
            f"sampling rate {sampling_rate} is not positive: pass the model's rate, usually 16000"
        )
    _check_is_file(path)
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except _SOUNDFILE_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return _model_input(data, int(file_rate), sampling_rate, min_samples, f"audio file {path}")


def decode_audio(
    source: bytes | np.ndarray, sampling_rate: int = 16000, *, source_rate: int | None = None,
    label: str = "audio", min_samples: int = MIN_SAMPLES,
) -> np.ndarray:
    """`load_audio` for audio held in memory: encoded file bytes, or samples at `source_rate`.

    `label` names the recording in error messages (e.g. "audio of row 3 of DATASET_DIR").
    """
    if isinstance(source, (bytes, bytearray)):
        try:
            data, file_rate = sf.read(io.BytesIO(source), dtype="float32", always_2d=True)
        except _SOUNDFILE_ERRORS as exc:
            raise HubertExportError(
                f"cannot read {label} ({_first_line(exc)}): store WAV, FLAC or OGG audio") from exc
    else:
        if source_rate is None or source_rate <= 0:
            raise HubertExportError(f"{label} has no sampling rate: store it beside the samples")
        data = np.asarray(source, dtype=np.float32)
        # (samples,) or (samples, channels); datasets stores channels first, so transpose that layout
        data = data[:, None] if data.ndim == 1 else (data.T if data.shape[0] < data.shape[1] else data)
        file_rate = source_rate
    return _model_input(data, int(file_rate), sampling_rate, min_samples, label)


def _model_input(data: np.ndarray, file_rate: int, sampling_rate: int, min_samples: int, label: str) -> np.ndarray:
    """(samples, channels) float32 at `file_rate` -> checked mono float32 at `sampling_rate`."""
    if data.shape[0] == 0:
        _check_length(label, 0, min_samples, sampling_rate)
    waveform = _resample(_finite_mono(label, data), file_rate, sampling_rate)
    _check_length(label, waveform.shape[0], min_samples, sampling_rate)
    return np.ascontiguousarray(waveform, dtype=np.float32)


# soundfile reports "not audio" and "corrupt" through several exception types.
_SOUNDFILE_ERRORS = (sf.SoundFileError, RuntimeError, ValueError, TypeError)


def _check_is_file(path: Path) -> None:
    if not path.exists():
        raise HubertExportError(f"audio file {path} does not exist: check the path")
    if not path.is_file():
        raise HubertExportError(f"audio path {path} is not a file: pass a .wav, .flac or .ogg file")


def _unreadable(path: Path, exc: BaseException) -> HubertExportError:
    return HubertExportError(f"cannot read audio file {path} ({_first_line(exc)}): "
                             "pass a valid WAV, FLAC or OGG recording")


def _finite_mono(label: str, data: np.ndarray) -> np.ndarray:
    """(samples, channels) float32 -> (samples,): channels averaged; NaN or Inf refused."""
    if not np.isfinite(data).all():
        raise HubertExportError(
            f"{label} contains NaN or Inf samples: re-export the recording "
            "as finite PCM or float audio"
        )
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]


def _check_length(label: str, num_samples: int, min_samples: int, sampling_rate: int) -> None:
    if num_samples == 0:
        raise HubertExportError(
            f"{label} is empty (0 samples): pass a recording of at least "
            f"{_min_duration_text(min_samples, sampling_rate)}"
        )
    if num_samples < min_samples:
        raise HubertExportError(
            f"{label} is too short ({num_samples} samples at {sampling_rate} Hz): "
            f"pass a recording of at least {_min_duration_text(min_samples, sampling_rate)}"
        )


class AudioStream:
    """A recording read in blocks as float32 mono at `sampling_rate`; only the block asked for is held.

    Blocks of a resampled file equal the same samples of `load_audio`'s whole-file resampling: each
    read starts where scipy's polyphase filter is in phase and carries a margin wider than the
    filter. `largest_block` records the longest block returned, to check that memory stays bounded.
    """

    def __init__(self, path: str | Path, sampling_rate: int = 16000) -> None:
        self.path = Path(path)
        _check_is_file(self.path)
        try:
            self._file = sf.SoundFile(str(self.path))
        except _SOUNDFILE_ERRORS as exc:
            raise _unreadable(self.path, exc) from None
        self.sampling_rate = sampling_rate
        divisor = math.gcd(self._file.samplerate, sampling_rate)
        self.up, self.down = sampling_rate // divisor, self._file.samplerate // divisor
        self._source_frames = max(self._file.frames, 0)
        # resample_poly's output length, and its filter's half length converted to source samples.
        self.num_samples = -(-self._source_frames * self.up // self.down)
        self._margin = self.down * math.ceil((10 * max(self.up, self.down) / self.up + 1) / self.down)
        self.largest_block = 0

    def check_length(self, min_samples: int = MIN_SAMPLES) -> None:
        _check_length(f"audio file {self.path}", self.num_samples, min_samples, self.sampling_rate)

    def _read_source(self, start: int, stop: int) -> np.ndarray:
        try:
            self._file.seek(start)
            data = self._file.read(stop - start, dtype="float32", always_2d=True)
        except _SOUNDFILE_ERRORS as exc:
            raise _unreadable(self.path, exc) from None
        if data.shape[0] != stop - start:
            raise HubertExportError(f"audio file {self.path} ends after {start + data.shape[0]} of the "
                                    f"{self._source_frames} samples its header announces (truncated?): "
                                    "re-export the recording")
        return _finite_mono(f"audio file {self.path}", data)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) at the model's rate; `start` must be a multiple of `self.up`."""
        if self.up == self.down:
            block = self._read_source(start, stop)
        else:
            if start % self.up:
                raise ValueError(f"block start {start} is not a multiple of {self.up}")
            first, last = start * self.down // self.up, -(-stop * self.down // self.up)
            begin, end = max(0, first - self._margin), min(self._source_frames, last + self._margin)
            resampled = resample_poly(self._read_source(begin, end), self.up, self.down)
            offset = (first - begin) * self.up // self.down
            block = resampled[offset: offset + stop - start].astype(np.float32, copy=False)
        self.largest_block = max(self.largest_block, block.shape[0])
        return block

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return waveform
    # A polyphase filter with the reduced ratio is exact for rational rate changes and
    # anti-aliases properly, unlike linear interpolation.
    divisor = math.gcd(from_rate, to_rate)
    # float32 in, float32 out: halves the memory of hour-long recordings at no audible cost.
    resampled = resample_poly(waveform, to_rate // divisor, from_rate // divisor)
    return resampled.astype(np.float32, copy=False)


def _first_line(exc: BaseException) -> str:
    # libsndfile's own reason ("Format not recognised.") without the path soundfile prepends.
    reason = getattr(exc, "error_string", None)
    if isinstance(reason, str) and reason.strip():
        return reason.strip().rstrip(".")
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _min_duration_text(min_samples: int, sampling_rate: int) -> str:
    milliseconds = 1000 * min_samples / sampling_rate
    return f"{min_samples} samples ({milliseconds:g} ms at {sampling_rate / 1000:g} kHz)"


def normalize(waveform: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance in float32, exactly like `zero_mean_unit_var_norm`."""
    values = np.asarray(waveform, dtype=np.float32)
    if values.ndim != 1 or values.shape[0] == 0:
        raise HubertExportError(
            f"cannot normalise a waveform of shape {values.shape}: pass a non-empty 1-D array"
        )
    return (values - values.mean()) / np.sqrt(values.var() + NORM_EPS)


@dataclass
class FeatureExtractorConfig:
    """The `preprocessor_config.json` fields that change the model's input."""

    sampling_rate: int = 16000
    do_normalize: bool = True
    return_attention_mask: bool = False
    padding_value: float = 0.0
    feature_size: int = 1

    @classmethod
    def from_dir(cls, path: str | Path) -> FeatureExtractorConfig:
        """Read `preprocessor_config.json` from a checkpoint directory; defaults when it is absent."""
        directory = Path(path)
        if not directory.is_dir():
            raise HubertExportError(
                f"checkpoint directory {directory} does not exist: pass the folder that holds config.json"
            )
        config_file = directory / "preprocessor_config.json"
        if not config_file.is_file():
            return cls()
        try:
            raw = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HubertExportError(
                f"{config_file} is not valid JSON ({exc}): fix or delete it "
                "(defaults: 16 kHz, normalised, no attention mask)"
            ) from exc
        if not isinstance(raw, dict):
            raise HubertExportError(
                f"{config_file} must hold a JSON object, not {type(raw).__name__}: fix or delete it"
            )
        known = {f.name for f in fields(cls)}
        config = cls(**{key: value for key, value in raw.items() if key in known})
        config._validate(config_file)
        return config

    def _validate(self, source: Path) -> None:
        def bad(field: str, expected: str) -> HubertExportError:
            return HubertExportError(
                f"{source}: {field} is {getattr(self, field)!r}, expected {expected}: fix the file"
            )

        # bool is a subclass of int, so it is excluded explicitly from the numeric fields.
        rate = self.sampling_rate
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
            raise bad("sampling_rate", "a positive integer such as 16000")
        if not isinstance(self.do_normalize, bool):
            raise bad("do_normalize", "true or false")
        if not isinstance(self.return_attention_mask, bool):
            raise bad("return_attention_mask", "true or false")
        if isinstance(self.padding_value, bool) or not isinstance(self.padding_value, (int, float)):
            raise bad("padding_value", "a number")
        if self.feature_size != 1:
            raise bad("feature_size", "1 (HuBERT reads the raw waveform)")


def prepare_batch(waveforms: list[np.ndarray], config: FeatureExtractorConfig) -> dict[str, np.ndarray]:
    """Pad and normalise a batch exactly like Hugging Face's extractor with `padding=True`.

    Equivalent to `Wav2Vec2FeatureExtractor(...)(waveforms, padding=True, return_tensors="np")`,
    except that `attention_mask` is int64 (what exported graphs take) instead of int32.
    """
    if config.feature_size != 1:
        raise HubertExportError(
            f"feature_size {config.feature_size} is not supported: HuBERT takes raw audio (feature_size 1)"
        )
    if len(waveforms) == 0:
        raise HubertExportError("cannot prepare an empty batch: pass at least one waveform")
    # Hugging Face casts to float32 before padding and normalising, so do the arithmetic in float32.
    arrays = [np.asarray(w, dtype=np.float32) for w in waveforms]
    for index, array in enumerate(arrays):
        if array.ndim != 1 or array.shape[0] == 0:
            raise HubertExportError(
                f"waveform {index} has shape {array.shape}: pass non-empty mono 1-D arrays "
                "(load_audio returns them)"
            )

    lengths = [array.shape[0] for array in arrays]
    max_len = max(lengths)
    input_values = np.full((len(arrays), max_len), config.padding_value, dtype=np.float32)
    for row, array in zip(input_values, arrays):
        row[: array.shape[0]] = array

    if config.do_normalize:
        for row, length in zip(input_values, lengths):
            if config.return_attention_mask:
                row[:] = (row - row[:length].mean()) / np.sqrt(row[:length].var() + NORM_EPS)
                row[length:] = config.padding_value
            else:
                # Without an attention mask Hugging Face normalises the padded row, padding
                # included; the model was evaluated that way, so parity requires the same.
                row[:] = (row - row.mean()) / np.sqrt(row.var() + NORM_EPS)

    batch = {"input_values": input_values}
    if config.return_attention_mask:
        attention_mask = np.zeros((len(arrays), max_len), dtype=np.int64)
        for row, length in zip(attention_mask, lengths):
            row[:length] = 1
        batch["attention_mask"] = attention_mask
    return batch


def iter_audio_files(directory: str | Path) -> list[Path]:
    """All .wav/.flac/.ogg files under `directory` (recursive, any case), sorted."""
    root = Path(directory)
    if not root.is_dir():
        raise HubertExportError(
            f"audio directory {root} does not exist: "
            "point --calibration-data/--data at a directory of recordings"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise HubertExportError(
            f"no audio files (.wav/.flac/.ogg) in {root}: "
            "point --calibration-data/--data at a directory of recordings"
        )
    return files


def chunk_spans(num_samples: int, chunk_samples: int, overlap_samples: int) -> list[tuple[int, int]]:
    """Half-open (start, end) windows of `chunk_samples`, `overlap_samples` apart, covering the signal."""
    if chunk_samples < MIN_SAMPLES:
        raise HubertExportError(
            f"chunk length {chunk_samples} samples is below HuBERT's {MIN_SAMPLES}-sample receptive field: "
            "use a longer chunk (e.g. 30 s)"
        )
    if not 0 <= overlap_samples < chunk_samples:
        raise HubertExportError(
            f"chunk overlap {overlap_samples} samples must be at least 0 and shorter than the chunk "
            f"({chunk_samples} samples): use a smaller overlap"
        )
    if num_samples <= 0:
        return []

    step = chunk_samples - overlap_samples
    spans = []
    start = 0
    while True:
        end = min(start + chunk_samples, num_samples)
        spans.append((start, end))
        if end == num_samples:
            break
        start += step

    # A tail shorter than the receptive field yields no frame: fold it into the previous window,
    # which grows by fewer than MIN_SAMPLES samples, so memory stays bounded.
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < MIN_SAMPLES:
        spans.pop()
        spans[-1] = (spans[-1][0], num_samples)
    return spans



class ArrayStream:
    """Samples already decoded at the model's rate, read as an `AudioStream` is read: what the
    long-form check feeds `transcribe`'s chunker, so that it chunks exactly the audio the eager
    model sees whole."""

    up = 1  # already at the model's rate: no resampler phase to keep

    def __init__(self, samples: np.ndarray, name: str) -> None:
        self.samples = samples
        self.path = Path(name)
        self.num_samples = int(samples.shape[0])
        self.largest_block = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        block = self.samples[start:stop]
        self.largest_block = max(self.largest_block, block.shape[0])
        return block

    def close(self) -> None:
        pass

    def __enter__(self) -> ArrayStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
