"""Speech to text with a CTC artifact or checkpoint (`hubert-export transcribe` is its CLI).

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

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hubert_export.audio import MIN_SAMPLES, NORM_EPS, ArrayStream, AudioStream, FeatureExtractorConfig, chunk_spans
from hubert_export.errors import HubertExportError
from hubert_export.model import load_config
from hubert_export.tokenizer import CTCTokenizer

log = logging.getLogger(__name__)

# From benchmarks/results/long-form.md (5-minute recordings, eager against itself): 30 s chunks moved
# the fewest frames on both measured models (0.991 and 0.943 kept, against 0.976 and 0.895 at 10 s);
# 2 s of overlap was as good as 1 s or better on the reference model, for 7% more audio run.
DEFAULT_CHUNK_SECONDS = 30.0
DEFAULT_OVERLAP_SECONDS = 2.0



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
    logits: np.ndarray | None = None  # the stitched frame logits (frames, vocab), when asked for

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "text": self.text, "seconds": round(self.seconds, 3),
                "chunks": self.chunks, "frames": int(self.frame_ids.shape[0])}


@dataclass
class ChunkPlan:
    """One recording's chunks (`Transcriber.plan`): where each starts and stops, which of its frames
    it keeps, and the whole recording's normalisation."""

    spans: list[tuple[int, int]]  # chunk k reads samples [start, stop)
    bounds: list[int | None]  # chunk k keeps whole-recording frames [bounds[k], bounds[k + 1]); None: to the end
    stride: int  # samples per frame
    mean: float
    scale: float

    def chunk(self, stream: AudioStream | ArrayStream, k: int) -> np.ndarray:
        """Chunk k's samples, normalised with the whole recording's statistics."""
        start, stop = self.spans[k]
        return ((stream.read(start, stop) - self.mean) * self.scale).astype(np.float32)

    def keep(self, k: int, row: np.ndarray) -> np.ndarray:
        """The frames of chunk k's output `row` (frames first) that the stitched recording keeps."""
        first = self.spans[k][0] // self.stride
        bound = self.bounds[k + 1]
        stop = first + row.shape[0] if bound is None else min(bound, first + row.shape[0])
        return row[self.bounds[k] - first: stop - first]


class Transcriber:
    """A CTC model (artifact or checkpoint), its front end and tokenizer; `transcribe` runs files."""

    def __init__(self, source: str | Path, *, threads: int | None = None, model: Any = None,
                 verified: bool = False) -> None:
        """`model`: the checkpoint's CTC model, already loaded (not read again); `verified`: the
        artifact's files were hashed against its manifest already (not hashed again)."""
        from hubert_export.artifact import MANIFEST_NAME, Artifact

        from hubert_export.hub import resolve_model  # an owner/name id: its snapshot in the hub cache

        self.source = resolve_model(source)
        self.contract = None  # an artifact's input contract (contract.InputContract)
        self.window = None  # the one shape (batch, samples) of a fixed-shape artifact
        if (self.source / MANIFEST_NAME).is_file():
            artifact = Artifact.open(self.source)
            if not verified:
                artifact.verify_files()
            if artifact.task != "ctc":
                raise HubertExportError(
                    f"artifact {self.source} outputs {artifact.task}, not CTC logits: transcribe needs an artifact "
                    "built with --task ctc from a fine-tuned CTC checkpoint")
            self._load_metadata("artifact")
            from hubert_export.backends import load_runner

            self.contract = artifact.input_contract
            # Built for one shape (LiteRT, OpenVINO static shapes): every chunk runs through that window, zero-padded.
            self.window = self.contract.window
            self.runner = load_runner(artifact, threads=threads)
        elif (self.source / "config.json").is_file():
            from hubert_export.runner import EagerRunner
            from hubert_export.tasks import family_of

            config = load_config(self.source)
            family = family_of(config)
            ctc = family.task("ctc")
            if family.infer_task(config) != "ctc":
                backbone = family.task("feature-extraction").model_class.__name__
                raise HubertExportError(
                    f"checkpoint {self.source} is a {', '.join(config.architectures or [backbone])}, "
                    f"not a {ctc.model_class.__name__}: transcribe needs a fine-tuned CTC checkpoint "
                    "(e.g. hubert-large-ls960-ft or wav2vec2-base-960h)")
            self._load_metadata("checkpoint")
            model = model if model is not None else ctc.model_class.from_pretrained(self.source)
            self.runner = EagerRunner(model, ctc, with_attention_mask=self.fe.return_attention_mask).activate()
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
        self.config = load_config(self.source)
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

    def transcribe(self, path: str | Path, *, chunk_seconds: float = DEFAULT_CHUNK_SECONDS, overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
                   batch_size: int = 1) -> Transcription:
        with self.open(path) as stream:
            return self.run(stream, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                            batch_size=batch_size)

    def run(self, stream: AudioStream | ArrayStream, *, chunk_seconds: float = DEFAULT_CHUNK_SECONDS, overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
            batch_size: int = 1, keep_logits: bool = False) -> Transcription:
        """Transcribe an open recording in overlapping chunks; `keep_logits` keeps the stitched
        frame logits too (the long-form check compares them with the whole utterance's)."""
        plan = self.plan(stream, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                         batch_size=batch_size)
        spans = plan.spans
        log.info(f"transcribing {stream.path}: {stream.num_samples / self.fe.sampling_rate:.1f} s in {len(spans)} chunk(s)")
        kept: list[np.ndarray] = []
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            logits = self._run([w for _, w in pending])
            for (k, _), row in zip(pending, logits):
                frames = plan.keep(k, row)
                kept.append(frames if keep_logits else frames.argmax(axis=-1).astype(np.int32))
            pending.clear()

        for k in range(len(spans)):
            waveform = plan.chunk(stream, k)
            # Only equal lengths share a batch: padding would change the model's output.
            if pending and (len(pending) == batch_size or pending[-1][1].shape[0] != waveform.shape[0]):
                flush()
            pending.append((k, waveform))
        flush()
        stitched = np.concatenate(kept)
        ids = stitched.argmax(axis=-1).astype(np.int32) if keep_logits else stitched
        return Transcription(stream.path, self.tokenizer.decode_ids(ids), stream.num_samples / self.fe.sampling_rate,
                             len(spans), ids, stream.largest_block, stitched if keep_logits else None)

    def plan(self, stream: AudioStream | ArrayStream, *, chunk_seconds: float = DEFAULT_CHUNK_SECONDS, overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
             batch_size: int = 1) -> ChunkPlan:
        """How `run` cuts an open recording into normalised chunks and stitches their frames back
        (`hubert-export serve` runs the chunks of many requests in one batch, then stitches each)."""
        _check_options(chunk_seconds, overlap_seconds, batch_size)
        rate = self.fe.sampling_rate
        # Chunk starts on the frame grid (so chunk frames are whole-file frames) and in the resampler's phase.
        align = math.lcm(self.stride, stream.up)
        chunk = round(chunk_seconds * rate / align) * align
        if self.window is not None:  # no longer than the window, and a quarter of it overlapping at most
            chunk = min(chunk, self.window.samples // align * align)
            overlap_seconds = min(overlap_seconds, chunk / rate / 4)
        # Without overlap the frame straddling each seam would belong to no chunk: one frame is the least.
        least = -(-(self.config.receptive_field - self.stride) // align) * align
        overlap = max(round(overlap_seconds * rate / align) * align, least)
        spans = (chunk_spans(stream.num_samples, chunk, overlap) if self.window is None
                 else window_spans(stream.num_samples, chunk, overlap, align))
        self._check_shapes(stream.path, spans, batch_size)
        mean, scale = 0.0, 1.0
        if self.fe.do_normalize:
            mean, var = _moments(stream, chunk)
            scale = 1.0 / math.sqrt(var + NORM_EPS)

        # Chunk k keeps frames [bounds[k], bounds[k + 1]): the seams lie mid-overlap.
        bounds = [0] + [(start + overlap // 2) // self.stride for start, _ in spans[1:]] + [None]
        return ChunkPlan(spans, bounds, self.stride, mean, scale)

    def _check_shapes(self, path: Path, spans: list[tuple[int, int]], batch_size: int) -> None:
        if self.contract is None or self.window is not None:
            return  # a window takes any batch of chunks no longer than it, which these are by construction
        low, high = self.contract.min, self.contract.max
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


def window_spans(num_samples: int, chunk: int, overlap: int, align: int) -> list[tuple[int, int]]:
    """Spans for a fixed-window artifact: every one `chunk` long except the last, which ends at the
    end of the recording and starts as late as the `align` grid allows, so that padding (inexact for
    models without an attention mask) is at most align - 1 samples, or a recording shorter than
    the window. `chunk_spans` instead shortens the last span and may lengthen the one before it."""
    if num_samples <= chunk:
        return [(0, num_samples)]
    spans, start = [], 0
    while start + chunk < num_samples:
        spans.append((start, start + chunk))
        start += chunk - overlap
    spans.append((-(-(num_samples - chunk) // align) * align, num_samples))
    return spans


def _check_options(chunk_seconds: float, overlap_seconds: float, batch_size: int) -> None:
    if not (math.isfinite(chunk_seconds) and chunk_seconds > 0):
        raise HubertExportError(f"--chunk-seconds {chunk_seconds} must be a positive number of seconds, e.g. 20")
    if not (math.isfinite(overlap_seconds) and 0 <= overlap_seconds < chunk_seconds):
        raise HubertExportError(f"--overlap-seconds {overlap_seconds} must be at least 0 and shorter than "
                                f"--chunk-seconds ({chunk_seconds}): e.g. a tenth of the chunk")
    if batch_size < 1:
        raise HubertExportError(f"--batch-size {batch_size} must be at least 1")


def transcribe(source: str | Path, audio: list[str | Path], *, chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
               overlap_seconds: float = DEFAULT_OVERLAP_SECONDS, batch_size: int = 1) -> list[Transcription]:
    """Transcribe every file of `audio` with the CTC artifact or checkpoint at `source`."""
    _check_options(chunk_seconds, overlap_seconds, batch_size)
    with Transcriber(source) as transcriber:
        for path in audio:  # every file is checked before the first one is run
            transcriber.open(path).close()
        return [transcriber.transcribe(p, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                                       batch_size=batch_size) for p in audio]
