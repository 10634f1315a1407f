"""Speech to text: `hubert-export transcribe ARTIFACT_OR_CHECKPOINT AUDIO...`.

The model is any CTC artifact (run by its back end) or a CTC checkpoint directory (the eager
PyTorch model). Recordings of any length are read and run in overlapping chunks, so an hour-long
file needs no more memory than a few chunks:

1. A first pass streams the recording once for the mean and variance of the whole file. Hugging
   Face normalises per utterance; normalising every chunk with the whole file's statistics makes
   each chunk an exact slice of the input the model would get for the whole file, so chunking
   changes only how much context a frame sees, never its input values (per-chunk statistics would
   shift and scale every chunk differently). A file that fits in one chunk gets Hugging Face's
   per-utterance normalisation (statistics in float64 rather than float32).
2. The second pass reads overlapping windows (`chunk_spans`) that start on the model's frame grid
   (320 samples for HuBERT), runs them, and keeps the central frames of each: half the overlap is
   dropped at every inner edge, where the model saw context on one side only.
3. The stitched frame-argmax sequence is greedy-decoded once, so CTC collapses across the seams.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from hubert_export.audio import MIN_SAMPLES, FeatureExtractorConfig, _first_line, _min_duration_text, chunk_spans
from hubert_export.errors import EXIT_OK, HubertExportError
from hubert_export.model import HubertConfig
from hubert_export.tokenizer import CTCTokenizer

# Hugging Face adds this to the variance before the square root (as audio.normalize does).
_NORM_EPS = 1e-7


class AudioStream:
    """A recording read in blocks as float32 mono at `sampling_rate`; only the block asked for is held.

    Blocks of a resampled file equal the same samples of `load_audio`'s whole-file resampling: each
    read starts where scipy's polyphase filter is in phase and carries a margin wider than the
    filter. `largest_block` records the longest block returned, to check that memory stays bounded.
    """

    def __init__(self, path: str | Path, sampling_rate: int = 16000) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise HubertExportError(f"audio file {self.path} does not exist: check the path")
        if not self.path.is_file():
            raise HubertExportError(f"audio path {self.path} is not a file: pass a .wav, .flac or .ogg file")
        try:
            self._file = sf.SoundFile(str(self.path))
        except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
            raise self._unreadable(exc) from None
        self.sampling_rate = sampling_rate
        divisor = math.gcd(self._file.samplerate, sampling_rate)
        self.up, self.down = sampling_rate // divisor, self._file.samplerate // divisor
        self._source_frames = max(self._file.frames, 0)
        # resample_poly's output length, and its filter's half length converted to source samples.
        self.num_samples = -(-self._source_frames * self.up // self.down)
        self._margin = self.down * math.ceil((10 * max(self.up, self.down) / self.up + 1) / self.down)
        self.largest_block = 0

    def _unreadable(self, exc: BaseException) -> HubertExportError:
        return HubertExportError(f"cannot read audio file {self.path} ({_first_line(exc)}): "
                                 "pass a valid WAV, FLAC or OGG recording")

    def check_length(self, min_samples: int = MIN_SAMPLES) -> None:
        rate = self.sampling_rate
        if self.num_samples == 0:
            raise HubertExportError(f"audio file {self.path} is empty (0 samples): pass a recording of at least "
                                    f"{_min_duration_text(min_samples, rate)}")
        if self.num_samples < min_samples:
            raise HubertExportError(f"audio file {self.path} is too short ({self.num_samples} samples at {rate} Hz): "
                                    f"pass a recording of at least {_min_duration_text(min_samples, rate)}")

    def _read_source(self, start: int, stop: int) -> np.ndarray:
        try:
            self._file.seek(start)
            data = self._file.read(stop - start, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
            raise self._unreadable(exc) from None
        if data.shape[0] != stop - start:
            raise HubertExportError(f"audio file {self.path} ends after {start + data.shape[0]} of the "
                                    f"{self._source_frames} samples its header announces (truncated?): "
                                    "re-export the recording")
        if not np.isfinite(data).all():
            raise HubertExportError(f"audio file {self.path} contains NaN or Inf samples: re-export the "
                                    "recording as finite PCM or float audio")
        return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]

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


def _moments(stream: AudioStream, block: int) -> tuple[float, float]:
    """Mean and variance of the whole recording in float64, one block at a time (Chan et al.'s merge)."""
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, stream.num_samples, block):
        x = stream.read(start, min(start + block, stream.num_samples)).astype(np.float64)
        n, block_mean = x.shape[0], float(x.mean())
        delta, total = block_mean - mean, count + n
        mean += delta * n / total
        m2 += float(((x - block_mean) ** 2).sum()) + delta * delta * count * n / total
        count = total
    return mean, m2 / count


@dataclass
class Transcription:
    path: Path
    text: str
    seconds: float
    chunks: int
    frame_ids: np.ndarray  # the stitched per-frame argmax the text was decoded from, (frames,)
    largest_block: int  # the longest block of audio (samples at the model's rate) held at once

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "text": self.text, "seconds": round(self.seconds, 3),
                "chunks": self.chunks, "frames": int(self.frame_ids.shape[0])}


class Transcriber:
    """A CTC model (artifact or checkpoint), its front end and tokenizer; `transcribe` runs files."""

    def __init__(self, source: str | Path, *, log: Callable[[str], None] | None = None) -> None:
        from hubert_export.artifact import MANIFEST_NAME, Artifact

        from hubert_export.hub import resolve_model  # an owner/name id: its snapshot in the hub cache

        self.source = resolve_model(source)
        self.log = log or (lambda _: None)
        self.shape_range = None
        self.window: tuple[int, int] | None = None  # (batch, samples) of a fixed-shape artifact
        if (self.source / MANIFEST_NAME).is_file():
            artifact = Artifact.open(self.source)
            artifact.verify_files()
            if artifact.task != "ctc":
                raise HubertExportError(
                    f"artifact {self.source} outputs {artifact.task}, not CTC logits: transcribe needs an artifact "
                    "built with --task ctc from a fine-tuned CTC checkpoint")
            self._load_metadata("artifact")
            from hubert_export.backends import get_backend

            self.shape_range = artifact.shape_range()
            if self.shape_range is not None and self.shape_range.min == self.shape_range.max:
                # Built for one shape (LiteRT): every chunk runs through that window, zero-padded.
                self.window = (self.shape_range.opt.batch, self.shape_range.opt.samples)
            self.runner = get_backend(artifact.target).load(artifact)
            if self.window is not None:
                from hubert_export.runner import WindowRunner
                from hubert_export.tasks import frame_axes, get_task

                self.runner = WindowRunner(self.runner, *self.window, self.config.num_frames,
                                           frame_axes(get_task("ctc"), False))
        elif (self.source / "config.json").is_file():
            from hubert_export.model import HubertForCTC
            from hubert_export.runner import EagerRunner
            from hubert_export.tasks import get_task, infer_task

            config = HubertConfig.from_pretrained(self.source)
            if infer_task(config) != "ctc":
                raise HubertExportError(
                    f"checkpoint {self.source} is a {', '.join(config.architectures or ['HubertModel'])}, "
                    "not a HubertForCTC: transcribe needs a fine-tuned CTC checkpoint (e.g. hubert-large-ls960-ft)")
            self._load_metadata("checkpoint")
            model = HubertForCTC.from_pretrained(self.source)
            self.runner = EagerRunner(model, get_task("ctc"), with_attention_mask=self.fe.return_attention_mask)
        elif not self.source.exists():
            raise HubertExportError(f"{self.source} does not exist: pass an artifact or a checkpoint directory")
        else:
            raise HubertExportError(f"{self.source} is neither an artifact (no manifest.json) nor a checkpoint "
                                    "(no config.json): pass a directory written by hubert-export or a CTC checkpoint")
        self.stride = self.config.inputs_to_logits_ratio

    def _load_metadata(self, kind: str) -> None:
        if not (self.source / "vocab.json").is_file():
            raise HubertExportError(
                f"{kind} {self.source} has no vocab.json, so its CTC ids cannot be turned into text: use a "
                "fine-tuned CTC checkpoint with its tokenizer files (artifacts copy them from the checkpoint)")
        self.config = HubertConfig.from_pretrained(self.source)
        self.fe = FeatureExtractorConfig.from_dir(self.source)
        self.tokenizer = CTCTokenizer.from_dir(self.source)

    def open(self, path: str | Path) -> AudioStream:
        """Open a recording and check it is long enough: fails before any model work."""
        stream = AudioStream(path, self.fe.sampling_rate)
        try:
            stream.check_length(max(MIN_SAMPLES, self.config.receptive_field))
        except BaseException:
            stream.close()
            raise
        return stream

    def transcribe(self, path: str | Path, *, chunk_seconds: float = 20.0, overlap_seconds: float = 2.0,
                   batch_size: int = 1) -> Transcription:
        _check_options(chunk_seconds, overlap_seconds, batch_size)
        with self.open(path) as stream:
            rate = self.fe.sampling_rate
            # Chunk starts on the frame grid (so chunk frames are whole-file frames) and in the resampler's phase.
            align = math.lcm(self.stride, stream.up)
            chunk = round(chunk_seconds * rate / align) * align
            if self.window is not None:  # no longer than the window, and a quarter of it overlapping at most
                chunk = min(chunk, self.window[1] // align * align)
                overlap_seconds = min(overlap_seconds, chunk / rate / 4)
            # Without overlap the frame straddling each seam would belong to no chunk: one frame is the least.
            least = -(-(self.config.receptive_field - self.stride) // align) * align
            overlap = max(round(overlap_seconds * rate / align) * align, least)
            spans = chunk_spans(stream.num_samples, chunk, overlap)
            self._check_shapes(stream.path, spans, batch_size)
            self.log(f"transcribing {stream.path}: {stream.num_samples / rate:.1f} s in {len(spans)} chunk(s)")
            mean, scale = 0.0, 1.0
            if self.fe.do_normalize:
                mean, var = _moments(stream, chunk)
                scale = 1.0 / math.sqrt(var + _NORM_EPS)

            # Chunk k keeps frames [bounds[k], bounds[k + 1]): the seams lie mid-overlap.
            bounds = [0] + [(start + overlap // 2) // self.stride for start, _ in spans[1:]] + [None]
            kept: list[np.ndarray] = []
            pending: list[tuple[int, np.ndarray]] = []

            def flush() -> None:
                logits = self._run([w for _, w in pending])
                for (k, _), row in zip(pending, logits):
                    first = spans[k][0] // self.stride
                    stop = first + row.shape[0] if bounds[k + 1] is None else min(bounds[k + 1], first + row.shape[0])
                    kept.append(row[bounds[k] - first: stop - first].argmax(axis=-1).astype(np.int32))
                pending.clear()

            for k, (start, stop) in enumerate(spans):
                waveform = ((stream.read(start, stop) - mean) * scale).astype(np.float32)
                # Only equal lengths share a batch: padding would change the model's output.
                if pending and (len(pending) == batch_size or pending[-1][1].shape[0] != waveform.shape[0]):
                    flush()
                pending.append((k, waveform))
            flush()
            ids = np.concatenate(kept)
            return Transcription(stream.path, self.tokenizer.decode_ids(ids), stream.num_samples / rate, len(spans),
                                 ids, stream.largest_block)

    def _check_shapes(self, path: Path, spans: list[tuple[int, int]], batch_size: int) -> None:
        if self.window is not None:
            return  # chunks fit the window by construction; any batch runs through it
        if self.shape_range is None:
            return
        low, high = self.shape_range.min, self.shape_range.max
        longest, shortest = max(e - s for s, e in spans), min(e - s for s, e in spans)
        rate = self.fe.sampling_rate
        if longest > high.samples:
            raise HubertExportError(
                f"{path}: chunks of {longest} samples exceed the artifact's largest input ({high.samples} samples): "
                f"pass --chunk-seconds {max(high.samples - MIN_SAMPLES, 0) / rate:g} or less")
        if shortest < low.samples:
            raise HubertExportError(
                f"{path}: a chunk of {shortest} samples is below the artifact's smallest input ({low.samples} samples): "
                "pass a longer recording, or rebuild the artifact with a smaller --min-shape")
        if not low.batch <= batch_size <= high.batch:
            raise HubertExportError(f"--batch-size {batch_size} is outside the artifact's batch range "
                                    f"{low.batch}..{high.batch}: pick one inside it")

    def _run(self, waveforms: list[np.ndarray]) -> np.ndarray:
        inputs = {"input_values": np.stack(waveforms)}
        if "attention_mask" in self.runner.input_names:
            inputs["attention_mask"] = np.ones(inputs["input_values"].shape, dtype=np.int64)
        return self.runner.infer(inputs)["logits"]

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Transcriber:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_options(chunk_seconds: float, overlap_seconds: float, batch_size: int) -> None:
    if not (math.isfinite(chunk_seconds) and chunk_seconds > 0):
        raise HubertExportError(f"--chunk-seconds {chunk_seconds} must be a positive number of seconds, e.g. 20")
    if not (math.isfinite(overlap_seconds) and 0 <= overlap_seconds < chunk_seconds):
        raise HubertExportError(f"--overlap-seconds {overlap_seconds} must be at least 0 and shorter than "
                                f"--chunk-seconds ({chunk_seconds}): e.g. a tenth of the chunk")
    if batch_size < 1:
        raise HubertExportError(f"--batch-size {batch_size} must be at least 1")


def transcribe(source: str | Path, audio: list[str | Path], *, chunk_seconds: float = 20.0,
               overlap_seconds: float = 2.0, batch_size: int = 1,
               log: Callable[[str], None] | None = None) -> list[Transcription]:
    """Transcribe every file of `audio` with the CTC artifact or checkpoint at `source`."""
    _check_options(chunk_seconds, overlap_seconds, batch_size)
    with Transcriber(source, log=log) as transcriber:
        for path in audio:  # every file is checked before the first one is run
            transcriber.open(path).close()
        return [transcriber.transcribe(p, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                                       batch_size=batch_size) for p in audio]


def transcribe_parser() -> argparse.ArgumentParser:
    from hubert_export.cli import _common

    parser = argparse.ArgumentParser(
        prog="hubert-export transcribe",
        description="Greedy CTC transcription of recordings of any length (read and run in overlapping chunks) "
                    "with an artifact or a checkpoint. One line per file on stdout: the text, or FILE<TAB>TEXT "
                    "when several files are given.",
    )
    parser.add_argument("model", type=Path, metavar="ARTIFACT_OR_CHECKPOINT",
                        help="a CTC artifact directory written by hubert-export, a CTC checkpoint directory, or "
                             "a model id (owner/name) in the local Hugging Face cache")
    parser.add_argument("audio", type=Path, nargs="+", metavar="AUDIO",
                        help="WAV/FLAC/OGG recordings, any sampling rate and channel count")
    parser.add_argument("--chunk-seconds", type=float, default=20.0,
                        help="longest piece of audio run at once (default 20); bounds memory")
    parser.add_argument("--overlap-seconds", type=float,
                        help="overlap of consecutive chunks (default 2, at most a quarter of the chunk); half of it "
                             "is dropped at each seam")
    parser.add_argument("--batch-size", type=int, default=1, help="chunks per inference call (default 1)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {file, text, seconds, chunks, frames} instead")
    _common(parser)
    return parser


def run_transcribe(args: argparse.Namespace) -> int:
    from hubert_export.build import Progress

    overlap = min(2.0, args.chunk_seconds / 4) if args.overlap_seconds is None else args.overlap_seconds
    results = transcribe(args.model, args.audio, chunk_seconds=args.chunk_seconds,
                         overlap_seconds=overlap, batch_size=args.batch_size,
                         log=Progress(enabled=not args.quiet))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        for result in results:
            print(result.text if len(results) == 1 else f"{result.path}\t{result.text}")
    sys.stdout.flush()
    return EXIT_OK
