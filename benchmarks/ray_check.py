"""Throughput of a corpus check on Ray against the single-process check, in audio seconds per second.

    python benchmarks/ray_check.py [--model tiny|base|DIR] [--data CORPUS] [--copies K] [--workers 1,2]
                                   [--batch-size 4] [--cpus 2] [--nodes 1] [--out benchmarks/results]

One ONNX Runtime FP32 artifact of the model (built once into --work), one corpus: --data (default
tests/data/speech, 20 clips, 34.6 s) and --copies - 1 copies of it cut at random lengths, in a JSON
Lines manifest. Measured, in this order and on the same machine:

  single         `check_artifact(ART, data_dir=CORPUS)` minus `check_artifact(ART)` (the built-in
                 cases alone): the corpus part of the single-process check, torch on --cpus threads
  ray w=W b=B    `check_corpus` on a local Ray of --cpus CPUs (--nodes > 1: that many raylets on
                 this machine, ray.cluster_utils.Cluster, the CPUs split between them), W actors per
                 pool (eager and artifact), each with --cpus / (2 W) CPUs, batches of B utterances,
                 length bucketing on and off (batch 1 runs unpadded: bucketing is moot there)

For each: audio seconds checked, wall seconds of the corpus part (Ray: the pipeline, actor start-up
included), seconds to the first result (start-up), throughput with and without start-up, padding
fraction, and whether the verdict and the transcripts' CER/WER equal the single-process check's.
Writes ray-check-<model>[-<nodes>nodes].json and .md into --out. `--model base-mask` is a random
hubert-base with hubert-large's layer-norm feature encoder, which takes an attention mask (what
length buckets are for); `base` is hubert-base itself (no mask: only equal lengths share a batch,
so batching changes nothing); `tiny` the shipped model (start-up dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from hubert_export.build import DEFAULT_MODEL_DIR, check_artifact, export_artifact
from hubert_export.corpus import read_corpus
from hubert_export.recipes import default_recipe

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "hubert-export"


def checkpoint(model: str) -> Path:
    if model == "tiny":
        return DEFAULT_MODEL_DIR
    if model == "base":
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from eager import checkpoint_dir  # benchmarks/eager.py: the random hubert-base checkpoint

        return checkpoint_dir(None, CACHE)
    if model == "base-mask":
        return base_mask_checkpoint(CACHE / "hubert-base-mask-random-ctc")
    return Path(model)


def base_mask_checkpoint(path: Path) -> Path:
    """hubert-base's width and depth with hubert-large's layer-norm feature encoder, which takes an
    attention mask (so batches can be padded), random weights, the shipped model's vocabulary and
    feature extractor settings (transcripts are then decoded, if meaningless)."""
    if not (path / "config.json").is_file():
        import shutil

        import torch
        import transformers

        torch.manual_seed(0)
        config = transformers.HubertConfig(vocab_size=32, feat_extract_norm="layer", do_stable_layer_norm=True,
                                           conv_bias=True, pad_token_id=0)
        transformers.HubertForCTC(config).eval().save_pretrained(path)
        for name in ("vocab.json", "tokenizer_config.json", "preprocessor_config.json"):
            shutil.copy(DEFAULT_MODEL_DIR / name, path / name)
    return path


def corpus_manifest(data: Path, copies: int, work: Path) -> tuple[Path, float]:
    """--data listed `copies` times as JSON Lines; its audio seconds. Copy 0 is the corpus as it is;
    copies 1.. are its recordings cut at a random point (60-100% of their length, seed 0) and
    written beside the manifest without transcripts, so that lengths vary as in a real corpus
    (identical copies would make length buckets pad nothing)."""
    utterances = read_corpus(data).utterances
    rng = np.random.default_rng(0)
    folder = work / f"corpus-{data.name}-x{copies}"
    folder.mkdir(parents=True, exist_ok=True)
    lines, seconds = [], 0.0
    for copy in range(copies):
        for u in utterances:
            if u.path is None:
                raise SystemExit(f"{data}: the benchmark lists audio files; {u.origin} has none")
            path, text = u.path.resolve(), u.text
            audio, rate = sf.read(str(path), dtype="float32")
            if copy:
                audio = audio[: max(400, int(len(audio) * rng.uniform(0.6, 1.0)))]
                path, text = folder / f"{u.id}-{copy}.flac", None
                if not path.is_file():
                    sf.write(str(path), audio, rate)
            seconds += len(audio) / rate
            lines.append(json.dumps({"id": f"{u.id}-{copy}", "audio_filepath": str(path), "text": text}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, seconds


def time_single(artifact: Path, manifest: Path, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    check_artifact(artifact, latency_repeats=0)  # warm: imports, page cache
    start = time.perf_counter()
    check_artifact(artifact, latency_repeats=0)
    builtin = time.perf_counter() - start
    start = time.perf_counter()
    report = check_artifact(artifact, data_dir=manifest, latency_repeats=0)
    total = time.perf_counter() - start
    ids = {json.loads(line)["id"] for line in manifest.read_text().splitlines()}
    audio = sum(c.shape[1] for c in report.cases if c.name in ids) / 16_000
    seconds = total - builtin
    return {"name": "single", "workers": None, "batch_size": 1, "bucketing": None, "threads": threads,
            "audio_seconds": audio, "seconds": seconds, "first_result_seconds": None,
            "throughput": audio / seconds, "steady_throughput": audio / seconds, "padding_fraction": 0.0,
            "passed": report.passed, "ground_truth": report.ground_truth}


def time_ray(artifact: Path, manifest: Path, workers: int, batch_size: int, bucketing: bool, cpus: int,
             reference: dict) -> dict:
    from hubert_export.distributed import check_corpus

    cpus_per_worker = cpus / (2 * workers)
    with tempfile.TemporaryDirectory(prefix="ray-bench-results-") as results:
        start = time.perf_counter()
        result = check_corpus([artifact], manifest, workers=workers, batch_size=batch_size, bucketing=bucketing,
                              results_dir=results, latency_repeats=0, cpus_per_worker=cpus_per_worker)
        wall = time.perf_counter() - start
    report = next(iter(result.reports.values()))
    steady = result.corpus_seconds - (result.first_result_seconds or 0)
    name = f"ray w={workers} b={batch_size}" + ("" if batch_size == 1 else f" buckets {'on' if bucketing else 'off'}")
    return {"name": name, "workers": workers, "batch_size": batch_size, "bucketing": bucketing,
            "cpus_per_worker": cpus_per_worker, "audio_seconds": result.audio_seconds,
            "seconds": result.corpus_seconds, "call_seconds": wall,
            "first_result_seconds": result.first_result_seconds, "throughput": result.throughput,
            "steady_throughput": result.audio_seconds / steady if steady > 0 else None,
            "padding_fraction": result.padding_fraction, "batches": result.batches, "nodes_used": result.nodes,
            "passed": report.passed,
            "same_verdict": report.passed == reference["passed"],
            "same_ground_truth": report.ground_truth == reference["ground_truth"]}


def markdown(run: dict) -> str:
    single = run["runs"][0]["throughput"]
    lines = [f"# Corpus check on Ray: {run['model']}", "",
             f"{run['utterances']} utterances, {run['audio_seconds']:.1f} s of audio ({run['corpus']} x "
             f"{run['copies']}); ONNX Runtime FP32 artifact; {run['cpus']} CPUs"
             + (f" in {run['nodes']} simulated nodes" if run["nodes"] > 1 else "") + f"; {run['machine']}; "
             f"Ray {run['ray']}.", "",
             "| run | audio s/s | without start-up | vs single | wall s | first result s | padding | verdict, CER/WER as single |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in run["runs"]:
        same = "" if r["name"] == "single" else ("yes" if r["same_verdict"] and r["same_ground_truth"] else "no")
        first = "" if r["first_result_seconds"] is None else f"{r['first_result_seconds']:.1f}"
        steady = "" if r["steady_throughput"] is None else f"{r['steady_throughput']:.1f}"
        lines.append(f"| {r['name']} | {r['throughput']:.1f} | {steady} | {r['throughput'] / single:.2f}x | "
                     f"{r['seconds']:.1f} | {first} | {r['padding_fraction']:.1%} | {same} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny",
                        help="tiny (shipped), base (random hubert-base: no attention mask, so batches hold one length), "
                             "base-mask (hubert-base with a layer-norm encoder that takes a mask) or a checkpoint DIR")
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "speech", help="corpus (default: 20 clips)")
    parser.add_argument("--copies", type=int, default=10, help="times the corpus is listed (default 10)")
    parser.add_argument("--workers", default="1,2", help="actors per pool (default 1,2)")
    parser.add_argument("--batch-size", type=int, default=4, help="utterances per batch of the batched runs (default 4)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs for Ray and torch (default: all)")
    parser.add_argument("--nodes", type=int, default=1, help="simulated Ray nodes on this machine (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results directory")
    parser.add_argument("--work", type=Path, default=CACHE / "ray-bench", help="artifact and manifest folder")
    args = parser.parse_args()

    import ray

    model = checkpoint(args.model)
    label = args.model if args.model in ("tiny", "base", "base-mask") else model.name
    args.work.mkdir(parents=True, exist_ok=True)
    artifact = args.work / f"{label}-onnx"
    if not (artifact / "manifest.json").is_file():
        export_artifact(model, artifact, default_recipe("onnx"), latency_repeats=0)
    manifest, audio = corpus_manifest(args.data, args.copies, args.work)
    print(f"corpus: {manifest} ({audio:.1f} s of audio)", flush=True)

    runs = [time_single(artifact, manifest, args.cpus)]
    print(runs[-1]["name"], f"{runs[-1]['throughput']:.2f} audio s/s", flush=True)
    cluster = None
    if args.nodes > 1:
        from ray.cluster_utils import Cluster

        per_node = max(1, args.cpus // args.nodes)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per_node, "include_dashboard": False})
        for _ in range(args.nodes - 1):
            cluster.add_node(num_cpus=per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        nodes = len([n for n in ray.nodes() if n["Alive"]])
        for workers in (int(w) for w in args.workers.split(",")):
            for batch_size, bucketing in ((1, True), (args.batch_size, True), (args.batch_size, False)):
                runs.append(time_ray(artifact, manifest, workers, batch_size, bucketing, args.cpus, runs[0]))
                print(runs[-1]["name"], f"{runs[-1]['throughput']:.2f} audio s/s", flush=True)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()

    run = {"model": label, "checkpoint": str(model), "corpus": str(args.data), "copies": args.copies,
           "utterances": len(manifest.read_text().splitlines()), "audio_seconds": audio, "cpus": args.cpus,
           "nodes": nodes, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "ray": ray.__version__, "numpy": np.__version__, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"ray-check-{label}" + (f"-{nodes}nodes" if nodes > 1 else "")
    (args.out / f"{stem}.json").write_text(json.dumps(run, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(run))
    print(markdown(run))
    print(f"wrote {args.out / stem}.json, .md")


if __name__ == "__main__":
    main()
