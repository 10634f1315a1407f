"""How chunk length and overlap move a long recording's output away from the whole utterance's.

    python benchmarks/long_form.py [--minutes 5] [--recordings 2] [--chunks 5,10,20,30]
                                   [--overlaps 0,1,2] [--reference-chunks 10,20,30]
                                   [--reference-overlaps 1,2] [--out benchmarks/results/long-form]

Recordings of `--minutes` are made by joining the test clips (tests/data/speech for the shipped
model, tests/data/reference-speech for the reference model) with 0.3 s of silence between them, in
a different order each. Each recording runs through `transcribe`'s chunker (hubert_export.long_form,
the code `check --chunk-seconds` runs) with the eager model, against the eager model on the whole
recording: the drift chunking alone causes, before any precision's. Per model and (chunk, overlap):
frame argmax agreement, relative L2 error of the logits, and the CER/WER of the chunked transcript
against the whole recording's, the worst over the recordings; the ground truth CER of both. Overlap
0 means the least overlap the chunker allows (the receptive field: one frame). Writes JSON and a
Markdown table with the machine's CPU flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {  # name: (checkpoint, its test clips, the option naming its chunk grid)
    "shipped tiny-ctc": (REPO / "hubert_export" / "data" / "tiny-ctc", REPO / "tests" / "data" / "speech", "chunks"),
    # 20x the shipped model's compute (a 512-channel feature encoder): a smaller grid.
    "reference (base layout)": (REPO / "tests" / "data" / "reference-ctc", REPO / "tests" / "data" / "reference-speech",
                                "reference_chunks"),
}
GAP_SECONDS = 0.3


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "unknown")


def long_recordings(clips: Path, rate: int, minutes: float, count: int) -> list[tuple[np.ndarray, str]]:
    """`count` recordings of about `minutes`, the clips joined with silence, each in its own order."""
    from hubert_export.audio import iter_audio_files, load_audio
    from hubert_export.corpus import read_transcripts

    texts = read_transcripts(clips)
    files = [f for f in iter_audio_files(clips) if f.stem in texts]
    audio = [load_audio(f, rate) for f in files]
    gap = np.zeros(int(GAP_SECONDS * rate), np.float32)
    recordings = []
    for seed in range(count):
        order = np.random.default_rng(seed).permutation(len(files))
        pieces, words, total = [], [], 0
        while total < minutes * 60 * rate:
            for i in order:
                pieces += [audio[i], gap]
                words.append(texts[files[i].stem])
                total += len(audio[i]) + len(gap)
        recordings.append((np.concatenate(pieces), " ".join(words)))
    return recordings


def measure(checkpoint: Path, recordings: list[tuple[np.ndarray, str]], chunks: list[float],
            overlaps: list[float]) -> list[dict[str, Any]]:
    from hubert_export.audio import FeatureExtractorConfig
    from hubert_export.long_form import LongFormOptions, chunked_outcome, whole_utterance
    from hubert_export.metrics import character_error_rate
    from hubert_export.model.config import load_config
    from hubert_export.runner import EagerRunner
    from hubert_export.tasks import family_of
    from hubert_export.transcribe import Transcriber

    config = load_config(checkpoint)
    fe = FeatureExtractorConfig.from_dir(checkpoint)
    task = family_of(config).task("ctc")
    rows = []
    with Transcriber(checkpoint) as transcriber, EagerRunner(
            task.model_class.from_pretrained(checkpoint), task, with_attention_mask=fe.return_attention_mask) as eager:
        wholes = [whole_utterance(eager, waveform, f"rec{i}", text, fe) for i, (waveform, text) in enumerate(recordings)]
        for chunk in chunks:
            for overlap in overlaps:
                if overlap >= chunk:
                    continue
                options = LongFormOptions(chunk, overlap, batch_size=8)  # equal-length chunks only: the same outputs
                start = time.perf_counter()
                results = [chunked_outcome(transcriber, case, whole, waveform, options, config=config,
                                           tokenizer=transcriber.tokenizer).result
                           for (case, whole), (waveform, _) in zip(wholes, recordings)]
                texts = [r.transcripts[0] for r in results]
                rows.append({
                    "chunk_seconds": chunk, "overlap_seconds": overlap,
                    "argmax_agreement": min(r.metrics["argmax_agreement"] for r in results),
                    "relative_l2_error": max(r.metrics["relative_l2_error"] for r in results),
                    "cer_drift": max(r.metrics["cer"] for r in results),
                    "wer_drift": max(r.metrics["wer"] for r in results),
                    "cer_truth_chunked": character_error_rate([t["artifact"] for t in texts], [t["reference"] for t in texts]),
                    "cer_truth_whole": character_error_rate([t["eager"] for t in texts], [t["reference"] for t in texts]),
                    "seconds": time.perf_counter() - start,
                })
                row = rows[-1]
                print(f"  chunk {chunk:g} s overlap {overlap:g} s: agreement {row['argmax_agreement']:.4f} "
                      f"CER drift {row['cer_drift']:.4f} WER drift {row['wer_drift']:.4f}", file=sys.stderr)
    return rows


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = ["# Long-form drift: chunked against whole recordings", "",
             f"{meta['recordings']} recordings of {meta['minutes']:g} min per model (test clips joined), eager "
             f"FP32, worst recording per cell. Machine: {meta['cpu']} ({meta['isa']}; {', '.join(meta['cpu_flags'])}). "
             f"{meta['created_utc']}.", ""]
    for model, rows in results["models"].items():
        lines += [f"## {model}", "",
                  "| chunk s | overlap s | frame agreement | logits rel. L2 | CER drift | WER drift | CER vs truth, chunked | whole |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['chunk_seconds']:g} | {r['overlap_seconds']:g} | {r['argmax_agreement']:.4f} | "
                  f"{r['relative_l2_error']:.4f} | {r['cer_drift']:.4f} | {r['wer_drift']:.4f} | "
                  f"{r['cer_truth_chunked']:.4f} | {r['cer_truth_whole']:.4f} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--recordings", type=int, default=2)
    parser.add_argument("--chunks", default="5,10,20,30")
    parser.add_argument("--overlaps", default="0,1,2")
    parser.add_argument("--reference-chunks", default="10,20,30", help="the reference model's chunk lengths")
    parser.add_argument("--reference-overlaps", default="1,2", help="the reference model's overlaps")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "long-form")
    args = parser.parse_args()
    import torch

    from hubert_export.isa import cpu_flags, host_isa

    torch.set_num_threads(2)
    results: dict[str, Any] = {"models": {}}
    for model, (checkpoint, clips, grid) in MODELS.items():
        chunks = [float(c) for c in getattr(args, grid).split(",")]
        overlaps = [float(o) for o in getattr(args, grid.replace("chunks", "overlaps")).split(",")]
        print(f"{model}: {args.recordings} recordings of {args.minutes:g} min", file=sys.stderr)
        recordings = long_recordings(clips, 16_000, args.minutes, args.recordings)
        results["models"][model] = measure(checkpoint, recordings, chunks, overlaps)
    results["meta"] = {"created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu_model(),
                       "cpu_flags": cpu_flags(), "isa": host_isa().name, "minutes": args.minutes,
                       "recordings": args.recordings, "threads": 2}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
