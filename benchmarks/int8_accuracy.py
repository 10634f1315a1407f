"""The INT8 accuracy table: held-out CER/WER on the trained reference model next to latency at hubert-base geometry.

    python benchmarks/int8_accuracy.py [--reference tests/data/reference-ctc] [--data tests/data/reference-speech]
                                       [--base DIR] [--configs a,b,...] [--repeats 7] [--threads 2]
                                       [--work DIR] [--reuse] [--out benchmarks/results/int8-accuracy-ISA]

One run, one machine. Each configuration (below) is built twice with the product's own builds
(`export_artifact` and the recipes users get):

  - from the trained reference model (`tests/data/reference-ctc`: hubert-base's 512-channel feature
    encoder, a 4-layer transformer, held-out CER ~5.8%) and scored on its held-out clips: greedy-CTC
    CER and WER, each clip alone at its own length, against the transcripts; eager FP32 is the
    reference row, and the INT8 bound of issue 13 is 0.5 points of CER above it;
  - from a random-init hubert-base HubertForCTC (95 M parameters, the geometry users deploy) and
    timed at 10 s, batch 1, round-robin with transformers' eager model (the baseline of every
    ratio) and our eager model (`hubert_export.bench.run_benchmark`), on --threads threads.

Both builds' wall times and parity verdicts are recorded: the accuracy-controlled build's time on
hubert-base is issue 13's "finishes in minutes" figure. Take the latency on an idle machine: the
script times nothing until every build is done. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import transformers_subject  # noqa: E402  benchmarks/baselines.py
from eager import checkpoint_dir  # noqa: E402  benchmarks/eager.py: the random hubert-base checkpoint
from hubert_export.isa import cpu_flags, host_isa  # noqa: E402  the CPU flags that decide INT8 speed and rounding

# (name, target, precision, recipe overrides): what a user gets from each command line.
# The defaults follow the build machine's ISA (hubert_export/isa.py): 7-bit weights without VNNI, bf16
# float layers with bf16 instructions; the "-8bit" rows force NNCF's / ONNX Runtime's own defaults.
CONV1_6 = {"calibration.float_groups": ["conv0", "feature_projection", "attention_scores"]}
CONFIGS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("onnx-fp32", "onnx", "fp32", {}),
    ("onnx-int8-dynamic", "onnx", "int8", {"calibration.method": "dynamic"}),
    ("onnx-int8-dynamic-8bit", "onnx", "int8", {"calibration.method": "dynamic", "calibration.overflow_fix": "disable"}),
    ("onnx-int8-static", "onnx", "int8", {}),
    ("onnx-int8-static-8bit", "onnx", "int8", {"calibration.overflow_fix": "disable"}),
    ("onnx-int8-static-conv1-6", "onnx", "int8", CONV1_6),
    ("openvino-fp32", "openvino", "fp32", {}),
    ("openvino-fp16", "openvino", "fp16", {}),
    ("openvino-int8", "openvino", "int8", {}),  # float layers in bf16 where the CPU has it (auto)
    ("openvino-int8-8bit", "openvino", "int8", {"calibration.overflow_fix": "first_layer"}),
    ("openvino-int8-f32", "openvino", "int8", {"openvino.inference_precision": "f32"}),
    ("openvino-int8-conv1-6", "openvino", "int8", CONV1_6),
    ("openvino-int8-accuracy-control", "openvino", "int8", {"calibration.max_accuracy_drop": 0.01}),
    ("openvino-int8-every-conv", "openvino", "int8", {"calibration.float_groups": []}),
    ("executorch-fp32", "executorch", "fp32", {}),
    ("executorch-int8", "executorch", "int8", {}),
]


def log(message: str) -> None:
    print(f"[int8-accuracy {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = re.search(r"^model name\s*:(.*)$", text, re.M)
    return found.group(1).strip() if found else platform.processor()


def build(model: Path, out: Path, target: str, precision: str, overrides: dict[str, Any], reuse: bool) -> dict[str, Any]:
    """One artifact as the CLI builds it; its wall time, parity verdict and manifest quantisation notes."""
    from hubert_export.artifact import Artifact
    from hubert_export.build import export_artifact
    from hubert_export.errors import HubertExportError
    from hubert_export.recipes import default_recipe

    if reuse and (out / "manifest.json").is_file():
        manifest = Artifact.open(out).manifest
        return {"path": str(out), "reused": True, "passed": (manifest.parity or {}).get("passed"),
                "quantization": _quantization(manifest)}
    start = time.perf_counter()
    try:
        recipe = default_recipe(target, precision).with_overrides(**overrides)
        result = export_artifact(model, out, recipe, overwrite=True, latency_repeats=0)
    except (HubertExportError, ImportError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    seconds = time.perf_counter() - start
    manifest = Artifact.open(out).manifest
    return {"path": str(out), "seconds": round(seconds, 1), "passed": result.passed,
            "failures": list(result.report.failures)[:5], "quantization": _quantization(manifest)}


def _quantization(manifest: Any) -> dict[str, Any] | None:
    section = manifest.backend.get("quantization")
    if not section:
        return None
    keep = ("float_groups", "quantized_layers", "accuracy_control", "method")
    return {k: section[k] for k in keep if k in section}


def held_out_scores(runner, clips: list[dict[str, np.ndarray]], texts: list[str], tokenizer) -> dict[str, float]:
    from hubert_export.metrics import character_error_rate, word_error_rate

    runner.activate()
    try:
        hyps = [tokenizer.greedy_decode(runner.infer(x)["logits"])[0] for x in clips]
    finally:
        runner.close()
    return {"cer": character_error_rate(hyps, texts), "wer": word_error_rate(hyps, texts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REPO / "tests" / "data" / "reference-ctc")
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "reference-speech")
    parser.add_argument("--base", type=Path, help="hubert-base-geometry checkpoint to time (default: random init)")
    parser.add_argument("--configs", default=",".join(c[0] for c in CONFIGS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "hubert-export" / "int8-accuracy")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts already built in --work")
    parser.add_argument("--no-latency", action="store_true", help="accuracy and build times only (a busy machine)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/int8-accuracy-ISA (this machine's, "
                                                 "hubert_export/isa.py)")
    args = parser.parse_args(argv)
    args.out = args.out or REPO / "benchmarks" / "results" / f"int8-accuracy-{host_isa().name}"

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    logging.getLogger("nncf").setLevel(logging.WARNING)
    from hubert_export.audio import FeatureExtractorConfig, iter_audio_files, load_audio, prepare_batch
    from hubert_export.corpus import read_transcripts
    from hubert_export.bench import Subject, artifact_subject, open_subject, run_benchmark
    from hubert_export.tokenizer import CTCTokenizer

    wanted = args.configs.split(",")
    unknown = sorted(set(wanted) - {c[0] for c in CONFIGS})
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}: choose from {', '.join(c[0] for c in CONFIGS)}")
    configs = [c for c in CONFIGS if c[0] in wanted]
    base = args.base or checkpoint_dir(None, Path.home() / ".cache" / "hubert-export")

    fe = FeatureExtractorConfig.from_dir(args.reference)
    tokenizer = CTCTokenizer.from_dir(args.reference)
    references = read_transcripts(args.data)
    files = [f for f in iter_audio_files(args.data) if f.stem in references]
    clips = [prepare_batch([load_audio(f, fe.sampling_rate)], fe) for f in files]
    texts = [references[f.stem] for f in files]

    rows: dict[str, dict[str, Any]] = {"eager-fp32": {"target": "eager", "precision": "fp32"}}
    rows["eager-fp32"]["reference"] = held_out_scores(
        open_subject(Subject("eager", "eager", str(args.reference)), args.threads), clips, texts, tokenizer)
    log(f"eager: CER {rows['eager-fp32']['reference']['cer']:.2%}")
    for name, target, precision, overrides in configs:
        row = rows[name] = {"target": target, "precision": precision, "overrides": {k: str(v) for k, v in overrides.items()}}
        log(f"{name}: building from the reference model")
        row["reference_build"] = build(args.reference, args.work / "reference" / name, target, precision, overrides, args.reuse)
        if "error" not in row["reference_build"]:
            row["reference"] = held_out_scores(
                open_subject(artifact_subject(args.work / "reference" / name, name), args.threads), clips, texts, tokenizer)
            log(f"{name}: CER {row['reference']['cer']:.2%} WER {row['reference']['wer']:.2%}")
        log(f"{name}: building from {base}")
        row["base_build"] = build(base, args.work / "base" / name, target, precision, overrides, args.reuse)
        log(f"{name}: {row['base_build']}")

    bench = None
    if not args.no_latency:
        subjects = [transformers_subject("transformers-eager", base), Subject("eager-fp32", "eager", str(base))]
        subjects += [artifact_subject(args.work / "base" / name, name) for name, *_ in configs
                     if "error" not in rows[name]["base_build"]]
        log(f"timing {len(subjects)} subjects at {args.seconds:g} s, batch 1, {args.repeats} repeats")
        bench = run_benchmark(subjects, lengths=[args.seconds], batches=[1], repeats=args.repeats, warmup=2,
                              threads=args.threads, baseline="transformers-eager", memory=False)
        for m in bench["measurements"]:
            rows.setdefault(m["subject"], {"target": "transformers", "precision": "fp32"})["latency"] = {
                "p50_s": m["p50_s"], "runs_s": m["runs_s"], "speedup": m.get("speedup"), "skipped": m.get("skipped")}

    eager_cer = rows["eager-fp32"]["reference"]["cer"]
    for row in rows.values():
        if "reference" in row:
            row["reference"]["cer_delta_points"] = 100 * (row["reference"]["cer"] - eager_cer)
    meta = {"created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu_model(),
            "cpu_flags": cpu_flags(), "isa": host_isa().name, "threads": args.threads, "seconds": args.seconds, "repeats": args.repeats,
            "reference": str(args.reference.relative_to(REPO) if args.reference.is_relative_to(REPO) else args.reference),
            "clips": len(clips), "base": "random-init hubert-base HubertForCTC" if args.base is None else str(args.base),
            "libraries": bench["machine"]["libraries"] if bench else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, meta))
    log(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


def markdown(rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "—" if value is None else f"{value:.2%}"

    lines = [f"{meta['cpu']} ({', '.join(meta['cpu_flags'])}), {meta['threads']} threads, {meta['created_utc']}. "
             f"CER/WER: {meta['reference']} on its {meta['clips']} held-out clips; latency: {meta['base']} at "
             f"{meta['seconds']:g} s, batch 1, median of {meta['repeats']}; ratio: against transformers' eager model, "
             "same run.", "",
             f"ISA: {meta.get('isa', '?')}. × FP32: against the FP32 artifact of the same back end.", "",
             "| artifact | CER | ΔCER (points) | WER | latency | × transformers eager | × FP32 | build on hubert-base "
             "| gate on hubert-base |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        fp32 = (rows.get(f"{row['target']}-fp32") or {}).get("latency") or {}
        fp32_p50 = fp32.get("p50_s")
        ref, lat, bb = row.get("reference", {}), row.get("latency") or {}, row.get("base_build") or {}
        p50 = lat.get("p50_s")
        speedup = lat.get("speedup")
        gate = "—" if not bb else ("error: " + bb["error"][:60] if "error" in bb else ("pass" if bb.get("passed") else "FAIL"))
        delta = ref.get("cer_delta_points")
        built = "—" if "seconds" not in bb else f"{bb['seconds']:.0f} s"
        lines.append(f"| {name} | {pct(ref.get('cer'))} | {'—' if delta is None else f'{delta:+.2f}'} | "
                     f"{pct(ref.get('wer'))} | {'—' if p50 is None else f'{p50:.3f} s'} | "
                     f"{'—' if not speedup else f'{1 / speedup:.2f}'} | "
                     f"{'—' if p50 is None or not fp32.get('p50_s') else f'{p50 / fp32_p50:.2f}'} | "
                     f"{built} | {gate} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
