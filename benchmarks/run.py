"""The standard comparison: one checkpoint built into every artifact, measured beside what users would otherwise run.

    python benchmarks/run.py [--model DIR | --tiny] [--lengths 10] [--batch 1] [--repeats 5] [--warmup 1]
                             [--threads N] [--out benchmarks/results] [--work DIR] [--reuse]
                             [--optimum-python PYTHON] [--export-repeats 3]

Builds, with the library calls (`export_artifact` + recipes), ONNX Runtime FP32 and INT8 (dynamic),
OpenVINO FP32 and INT8 (NNCF) and TensorRT FP16; a target whose back end cannot be imported or is
unavailable on this machine is skipped with the reason. Then measures them in one process, round-robin,
beside our eager PyTorch FP32, transformers' eager model and Optimum's ONNX export on the same ONNX
Runtime (`hubert_export.bench.run_benchmark`). Export wall time, ours against Optimum's, is timed
--export-repeats times, alternating: our ONNX Runtime FP32 build as the CLI runs it (split at its
parity check and its latency measurement), Optimum's main_export as its CLI runs it (with its
validation) and without validation; medians are compared like for like.

The default checkpoint is a random-init hubert-base-architecture HubertForCTC written by transformers
into ~/.cache/hubert-export (--tiny: a tiny one, for a smoke run). Optimum needs transformers < 4.58
while this project tests against transformers 5, so it usually lives in its own virtual environment:
its export runs in a subprocess of --optimum-python (default: this interpreter, when it has Optimum);
its ONNX file is then measured here, on this process's ONNX Runtime.

Writes OUT/bench.json (schema: hubert_export.bench, plus `exports` and `comparisons`), OUT/bench.md
and OUT/*.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eager import checkpoint_dir  # benchmarks/eager.py: the random hubert-base checkpoint
from hubert_export.plots import plot  # noqa: E402
from hubert_export.bench import Subject, artifact_subject, run_benchmark, write_results
from hubert_export.errors import HubertExportError

CACHE = Path.home() / ".cache" / "hubert-export"
# (subject name, target, precision, recipe overrides)
STANDARD = [
    ("ours-onnx-fp32", "onnx", "fp32", {}),
    ("ours-onnx-int8", "onnx", "int8", {"calibration.method": "dynamic"}),
    ("ours-openvino-fp32", "openvino", "fp32", {}),
    ("ours-openvino-int8", "openvino", "int8", {}),
    ("ours-tensorrt-fp16", "tensorrt", "fp16", {}),
]
OPTIMUM_TASKS = {"ctc": "automatic-speech-recognition", "feature-extraction": "feature-extraction",
                 "sequence-classification": "audio-classification"}
OPTIMUM_EXPORT = r"""
import json, sys, time
start = time.perf_counter()
from optimum.exporters.onnx import main_export
imported = time.perf_counter()
main_export(sys.argv[1], sys.argv[2], task=sys.argv[3], do_validation=sys.argv[4] == "validate")
print(json.dumps({"seconds": time.perf_counter() - imported, "import_seconds": imported - start}))
"""
# Our ONNX Runtime FP32 build as `hubert-export --target onnx` runs it, in a fresh interpreter like
# Optimum's: seconds after the imports, and when the parity check and the latency runs began.
OURS_EXPORT = r"""
import json, logging, sys, time
start = time.perf_counter()
from hubert_export.build import export_artifact
from hubert_export.recipes import default_recipe
imported = time.perf_counter()
marks = {}
class Marks(logging.Handler):
    def emit(self, record):
        for key, prefix in (("parity", "parity check"), ("latency", "latency:")):
            if record.getMessage().startswith(prefix):
                marks[key] = time.perf_counter() - imported
logging.getLogger("hubert_export").addHandler(Marks())
logging.getLogger("hubert_export").setLevel(logging.INFO)
result = export_artifact(sys.argv[1], sys.argv[2], default_recipe("onnx", "fp32"), overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - imported, "import_seconds": imported - start,
                  "seconds_before_parity_check": marks.get("parity"), "seconds_before_latency": marks.get("latency"),
                  "passed": result.passed}))
"""
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            conv_dim=(16, 24, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=32)


def log(message: str) -> None:
    print(f"[run] {message}", file=sys.stderr, flush=True)


def tiny_checkpoint(cache: Path) -> Path:
    path = cache / "hubert-tiny-random-ctc"
    if not (path / "config.json").is_file():
        import transformers

        torch.manual_seed(0)
        transformers.HubertForCTC(transformers.HubertConfig(**TINY)).eval().save_pretrained(path)
    return path


def calibration_dir(work: Path) -> Path | None:
    """The built-in calibration set, or (while the package ships none) synthetic speech-like clips."""
    from hubert_export.build import BUILTIN_CALIBRATION_DIR

    if BUILTIN_CALIBRATION_DIR.is_dir():
        return None
    import soundfile as sf

    from hubert_export.parity import _speech_like

    directory = work / "calibration"
    if not directory.is_dir():
        directory.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(16):
            sf.write(directory / f"clip{i:02d}.flac", 0.1 * _speech_like(rng, int(rng.integers(16_000, 80_000))), 16_000)
    return directory


def build_ours(model: Path, work: Path, reuse: bool, calibration: Path | None,
               notes: list[str]) -> tuple[list[Subject], dict[str, Any]]:
    from hubert_export.build import export_artifact
    from hubert_export.recipes import default_recipe

    subjects, exports = [], {}
    for name, target, precision, overrides in STANDARD:
        out = work / name
        if reuse and (out / "manifest.json").is_file():
            log(f"{name}: reusing {out}")
            subjects.append(artifact_subject(out, name))
            continue
        if precision == "int8" and calibration is not None and "calibration.method" not in overrides:
            overrides = overrides | {"calibration.data": calibration}
        start = time.perf_counter()
        marks = _Marks(name, start)
        library_log = logging.getLogger("hubert_export")
        library_log.addHandler(marks)
        library_log.setLevel(logging.INFO)
        try:
            recipe = default_recipe(target, precision).with_overrides(**overrides)
            result = export_artifact(model, out, recipe, overwrite=True)
        except (HubertExportError, ImportError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            notes.append(f"{name} skipped: {reason}")
            log(f"{name} skipped: {reason}")
            continue
        finally:
            library_log.removeHandler(marks)
        seconds = time.perf_counter() - start
        parity_start = next((t for t, m in marks.marks if m.startswith("parity check")), None)
        exports[name] = {"seconds": seconds, "seconds_before_parity_check": parity_start,
                         "parity_passed": result.passed, "size_bytes": result.size_bytes}
        if not result.passed:
            notes.append(f"{name} failed its parity check: {'; '.join(result.report.failures)[:300]}")
        subjects.append(artifact_subject(out, name))
    return subjects, exports


class _Marks(logging.Handler):
    """The library's progress lines of one export, timed from its start, also echoed."""

    def __init__(self, name: str, start: float) -> None:
        super().__init__(logging.INFO)
        self.name_, self.start, self.marks = name, start, []

    def emit(self, record: logging.LogRecord) -> None:
        self.marks.append((time.perf_counter() - self.start, record.getMessage()))
        log(f"{self.name_} [{self.marks[-1][0]:6.1f}s] {self.marks[-1][1]}")


def optimum_python(python: str | None, notes: list[str]) -> str | None:
    if python is None:
        if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.exporters.onnx") is None:
            notes.append("Optimum skipped: optimum.exporters.onnx is not installed here (it needs transformers "
                         "< 4.58: install optimum-onnx in its own venv and pass --optimum-python)")
            return None
        python = sys.executable
    return python


def _clear(out: Path) -> None:
    """Remove a previous output before a timed run, and let the disk settle: freeing 400 MB on a
    discard-mounted disk slows the next file creation, which would bill one tool for the other."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()


def run_optimum_export(python: str, model: Path, out: Path, task: str, validate: bool = True) -> dict[str, Any]:
    """One main_export in a fresh interpreter; seconds exclude its imports. Raises on failure."""
    return _timed_export([python, "-c", OPTIMUM_EXPORT, str(model), str(out), OPTIMUM_TASKS[task],
                          "validate" if validate else "no-validation"], out / "model.onnx")


def run_ours_export(model: Path, out: Path) -> dict[str, Any]:
    """Our FP32 build in a fresh interpreter; seconds exclude its imports. Raises on failure."""
    return _timed_export([sys.executable, "-c", OURS_EXPORT, str(model), str(out)], out / "model.onnx")


def _timed_export(argv: list[str], expected: Path) -> dict[str, Any]:
    """Run an export script that prints its timings as JSON on its last line; adds the process wall time."""
    _clear(expected.parent)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not expected.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(tail[-1] if tail else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"subprocess_wall_seconds": wall}


EXPORT_KEYS = ("seconds", "import_seconds", "subprocess_wall_seconds", "seconds_before_parity_check",
               "seconds_before_latency")


def time_exports(model: Path, work: Path, task: str, python: str | None, repeats: int,
                 notes: list[str]) -> dict[str, Any]:
    """Export wall times, `repeats` rounds alternating ours and Optimum's (with and without its
    validation), each in a fresh interpreter; per-run values and medians."""
    runs: dict[str, list[dict[str, Any]]] = {"ours-onnx-fp32": [], "optimum-validated": [], "optimum-no-validation": []}
    python = optimum_python(python, [])  # build_optimum has already noted a missing Optimum
    try:
        for round_ in range(repeats):
            log(f"export timing round {round_ + 1}/{repeats}")
            runs["ours-onnx-fp32"].append(run_ours_export(model, work / "timing-ours"))
            if python is not None:
                for name, validate in (("optimum-validated", True), ("optimum-no-validation", False)):
                    runs[name].append(run_optimum_export(python, model, work / "timing-optimum", task, validate))
    except RuntimeError as exc:
        notes.append(f"export timing stopped: {exc}")
        return {}
    shutil.rmtree(work / "timing-ours", ignore_errors=True)
    shutil.rmtree(work / "timing-optimum", ignore_errors=True)
    summary: dict[str, Any] = {}
    for name, found in runs.items():
        if found:
            medians = {k: float(np.median([r[k] for r in found])) for k in EXPORT_KEYS
                       if all(r.get(k) is not None for r in found)}
            summary[name] = {"runs": found, "median": medians}
    return summary


def build_optimum(model: Path, work: Path, task: str, python: str | None, reuse: bool,
                  notes: list[str]) -> tuple[Subject | None, dict[str, Any] | None]:
    out = work / "optimum-onnx"
    subject = Subject("optimum-onnx-fp32", "onnx-file", str(out / "model.onnx"), config_dir=str(model))
    if reuse and (out / "model.onnx").is_file():
        return subject, None
    python = optimum_python(python, notes)
    if python is None:
        return None, None
    log(f"Optimum export with {python}")
    try:
        timing = run_optimum_export(python, model, out, task)
    except RuntimeError as exc:
        notes.append(f"Optimum export failed: {exc}")
        return None, None
    versions = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('optimum-onnx'), "
                               "m.version('transformers'))"], capture_output=True, text=True).stdout.split()
    log(f"Optimum export took {timing['seconds']:.1f} s")
    return subject, {"seconds": timing["seconds"], "import_seconds": timing["import_seconds"],
                     "subprocess_wall_seconds": timing["subprocess_wall_seconds"], "python": python,
                     "optimum_onnx": versions[0] if versions else None,
                     "transformers": versions[1] if len(versions) > 1 else None}


def comparisons(results: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Issue 3's checks: our export time and ONNX Runtime FP32 latency against Optimum's."""
    found, lines = {}, ["", "## Ours against Optimum (same ONNX Runtime, same run)", ""]
    timing = results.get("export_timing", {})
    ours, validated, bare = (timing.get(k, {}).get("median") for k in
                             ("ours-onnx-fp32", "optimum-validated", "optimum-no-validation"))
    if ours and validated and bare:
        rounds = len(timing["ours-onnx-fp32"]["runs"])
        found["export_seconds_ratio"] = ours["seconds_before_parity_check"] / bare["seconds"]
        found["export_with_check_seconds_ratio"] = ours["seconds_before_latency"] / validated["seconds"]
        found["export_cli_seconds_ratio"] = ours["seconds"] / validated["seconds"]
        found["export_process_wall_ratio"] = ours["subprocess_wall_seconds"] / validated["subprocess_wall_seconds"]
        lines += [
            f"Export wall time, median of {rounds} alternating rounds, each in a fresh interpreter, seconds after "
            "the imports (ratio: ours / Optimum's):",
            "",
            "| step | ours | Optimum main_export | ratio |",
            "| --- | --- | --- | --- |",
            f"| checkpoint to a written ONNX model (ours `onnx.checker`-checked too) | "
            f"{ours['seconds_before_parity_check']:.2f} s | "
            f"{bare['seconds']:.2f} s (do_validation=False) | {found['export_seconds_ratio']:.2f} |",
            f"| ... and verified against the PyTorch model | {ours['seconds_before_latency']:.2f} s "
            f"(parity gate: 5 cases) | {validated['seconds']:.2f} s (its validation: 1 input) | "
            f"{found['export_with_check_seconds_ratio']:.2f} |",
            f"| the whole command as users run it | {ours['seconds']:.2f} s (+ latency, 1 + 3 runs at 10 s) | "
            f"{validated['seconds']:.2f} s | {found['export_cli_seconds_ratio']:.2f} |",
            f"| the same, process wall time with imports | {ours['subprocess_wall_seconds']:.2f} s | "
            f"{validated['subprocess_wall_seconds']:.2f} s | {found['export_process_wall_ratio']:.2f} |",
            "",
        ]
    rows = {(m["subject"], m["seconds"], m["batch"]): m for m in results["measurements"] if m["p50_s"] is not None}
    for (name, seconds, batch), m in rows.items():
        other = rows.get(("optimum-onnx-fp32", seconds, batch))
        if name == "ours-onnx-fp32" and other:
            ratio = m["p50_s"] / other["p50_s"]
            found[f"ort_fp32_latency_ratio_{seconds:g}s_b{batch}"] = ratio
            lines.append(f"- ONNX Runtime FP32 p50 at {seconds:g} s, batch {batch}: ours {m['p50_s']:.3f} s, "
                         f"Optimum's {other['p50_s']:.3f} s: ratio {ratio:.2f} (below 1: ours faster)")
    return found, "\n".join(lines) + "\n" if found else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="HubertForCTC checkpoint (default: random-init hubert-base)")
    source.add_argument("--tiny", action="store_true", help="a tiny random checkpoint instead (smoke run)")
    parser.add_argument("--lengths", default="10", help="audio lengths in seconds (default 10)")
    parser.add_argument("--batch", default="1", help="batch sizes (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per subject and shape (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: each runtime's default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results directory")
    parser.add_argument("--work", type=Path, help="where artifacts are built (default ~/.cache/hubert-export/bench/NAME)")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts already in --work (no export times)")
    parser.add_argument("--optimum-python", help="a Python with optimum-onnx installed, for Optimum's export")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--export-repeats", type=int, default=3,
                        help="rounds of export timing, ours against Optimum's (default 3; 0 skips)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or (tiny_checkpoint(CACHE) if args.tiny else checkpoint_dir(None, CACHE))
    work = args.work or CACHE / "bench" / model.resolve().name
    work.mkdir(parents=True, exist_ok=True)
    log(f"checkpoint {model}, artifacts in {work}")

    from hubert_export.model import load_config
    from hubert_export.tasks import infer_task

    task = infer_task(load_config(model))
    notes: list[str] = []
    subjects, exports = build_ours(model, work, args.reuse, calibration_dir(work), notes)
    optimum, optimum_export = build_optimum(model, work, task, args.optimum_python, args.reuse, notes)
    if optimum_export:
        exports["optimum-onnx-fp32"] = optimum_export
    subjects += [s for s in [optimum] if s]
    subjects.append(Subject("ours-eager-fp32", "eager", str(model)))
    if importlib.util.find_spec("transformers") is not None:
        from baselines import transformers_subject  # benchmarks/baselines.py

        subjects.append(transformers_subject("transformers-eager", model))
    else:
        notes.append("transformers eager skipped: transformers is not installed")
    baseline = subjects[-1].name

    export_timing = (time_exports(model, work, task, args.optimum_python, args.export_repeats, notes)
                     if args.export_repeats > 0 else {})
    lengths = [float(v) for v in args.lengths.split(",")]
    batches = [int(v) for v in args.batch.split(",")]
    results = run_benchmark(subjects, lengths=lengths, batches=batches, repeats=args.repeats, warmup=args.warmup,
                            threads=args.threads, baseline=baseline, memory=not args.no_memory)
    results["notes"] = notes + results["notes"]
    results["checkpoint"] = str(model)
    results["exports"] = exports
    results["export_timing"] = export_timing
    results["comparisons"], extra = comparisons(results)
    args.out.mkdir(parents=True, exist_ok=True)
    pngs, note = plot(results, args.out)
    if note:
        results["notes"].append(note)
    written = write_results(results, args.out, extra) + pngs
    print((args.out / "bench.md").read_text(), end="")
    print(f"wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()
