"""Benchmarks: latency, throughput, memory and share of the machine's matmul ceiling.

    hubert-export bench ARTIFACT_DIR... [--lengths 1,5,10,30] [--batch 1,4] [--repeats 10] [--warmup 2]
                        [--threads N] [--output DIR] [--eager CHECKPOINT] [--no-memory] [--ceiling-size N]

A *subject* is anything that runs: an artifact (through its back end's `load`), the eager PyTorch
model of a checkpoint (`--eager`), transformers' eager model, or a bare ONNX file on ONNX Runtime
(`benchmarks/run.py` adds the last two). All subjects are loaded into one process and measured
round-robin (each repeat runs every subject once), so drift in machine load hits all alike.

What each number means:
  latency        wall time of one `infer` call on random audio after --warmup untimed calls (subjects
                 take turns, in an order rotated each repeat, with a 50 ms pause before each call); p50,
                 p90, p99 over --repeats with linear interpolation between order statistics (numpy's
                 default), so with few repeats p90/p99 sit near the slowest run.
  throughput     seconds of audio processed per second: batch * length / p50.
  real-time factor  p50 / (batch * length); below 1 is faster than real time.
  gflop          `hubert_export.flops.count_flops` for that shape (multiply-accumulates only).
  ceiling_share  gflop / p50 / the float32 matmul ceiling measured at the start of the same run
                 (numpy 4096x4096 product, median of 5): the fraction of the machine's dense-FP32 peak
                 the subject reaches. INT8 subjects can exceed 1: their multiply rate is higher.
  speedup        the baseline's p50 / this subject's p50 at the same shape (baseline: transformers
                 eager in benchmarks/run.py, the --eager model here, otherwise none).
  vs_baseline    max abs difference and frame-argmax agreement of the main output against the
                 baseline's output on the same input (a sanity check that both compute the same model).
  load_seconds   wall time of opening the subject in the benchmarking process (OpenVINO and
                 TensorRT compile here; ONNX Runtime optimises the graph).
  memory         peak resident set size (VmHWM of /proc/self/status) of a fresh subprocess that
                 imports the libraries, loads the subject and runs one inference at the largest
                 benchmarked shape the subject accepts; `peak_above_baseline_bytes` subtracts the
                 VmHWM after the imports, so it is what the model, the runtime's arenas and one
                 inference add. Linux only; null elsewhere or with --no-memory.
  accuracy       the parity summary recorded in the artifact's manifest by its last build or check.

bench.json schema (schema_version 1; a key is added without a version change, a key renamed or
removed bumps it):

    schema_version  1
    created_utc     "YYYY-MM-DDTHH:MM:SSZ"
    machine         {platform, machine, cpu_count, libraries: {name: version}}
    settings        {lengths_s: [float], batches: [int], repeats, warmup, threads: int|null,
                     sample_rate, baseline: subject name|null}
    ceiling         {library: "numpy", dtype: "float32", size, runs_s: [float], gflops}
    subjects        [{name, kind: artifact|eager|transformers|onnx-file, path, target, precision,
                      task, size_bytes, load_seconds, error: str|null,
                      memory: {peak_rss_bytes, baseline_rss_bytes, peak_above_baseline_bytes,
                               batch, samples}|{error}|null,
                      accuracy: {passed, worst: {metric: value}, headline: {metric, value}}|null}]
    measurements    [{subject, seconds, batch, samples, runs_s: [float], p50_s, p90_s, p99_s, mean_s,
                      throughput_audio_s_per_s, real_time_factor, gflop, ceiling_share,
                      speedup: float|null, vs_baseline: {max_abs_error, argmax_agreement}|null,
                      skipped: str|null}]   (a skipped measurement has null timings)
    notes           [str]
    exports         (benchmarks/run.py only) {name: {seconds, ...}}: each artifact's first build
    export_timing   (benchmarks/run.py only) {ours-onnx-fp32 | optimum-validated | optimum-no-validation:
                      {runs: [{seconds, import_seconds, subprocess_wall_seconds, ...}], median: {...}}}
    comparisons     (benchmarks/run.py only) {name: ratio} of ours against Optimum
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubert_export.errors import HubertExportError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SAMPLE_RATE = 16_000
SUBJECT_KINDS = ("artifact", "eager", "transformers", "onnx-file")
PAUSE_S = 0.05


@dataclass
class Subject:
    """Something to benchmark, described by plain values so a subprocess can open it too."""

    name: str
    kind: str  # one of SUBJECT_KINDS
    path: str  # artifact directory, checkpoint directory, or ONNX file
    config_dir: str | None = None  # where config.json is, for the FLOP count (default: path or its folder)
    # "module:function" or "path/to/file.py:function" returning a Runner for (subject, threads): how
    # subjects from outside the package open (benchmarks/baselines.py: transformers' eager model).
    opener: str | None = None


def artifact_subject(path: str | Path, name: str | None = None) -> Subject:
    return Subject(name or Path(path).resolve().name, "artifact", str(path))


# --------------------------------------------------------------------------------------------
# Statistics and the ceiling


def matmul_ceiling(size: int = 4096, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """GFLOP/s of a float32 size x size matrix product in numpy: the dense-FP32 peak a model can approach."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    limit = _blas_threads(threads)
    try:
        a @ b  # warm-up: thread pool start and page faults
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            runs.append(time.perf_counter() - start)
    finally:
        if limit is not None:
            limit.restore_original_limits()
    median = float(np.median(runs))
    return {"library": "numpy", "dtype": "float32", "size": size, "threads": threads, "runs_s": runs,
            "gflops": 2 * size**3 / median / 1e9}


def _blas_threads(threads: int | None) -> Any:
    # The ceiling must use the cores the subjects use; threadpoolctl (an nncf dependency) can cap BLAS.
    if threads is None:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


# --------------------------------------------------------------------------------------------
# Opening subjects


def open_subject(subject: Subject, threads: int | None = None) -> Any:
    """An inactive `Runner` for `subject`, with `threads` intra-op threads where the runtime takes a count."""
    if subject.kind not in SUBJECT_KINDS:
        raise HubertExportError(f"unknown subject kind {subject.kind!r}: choose one of {', '.join(SUBJECT_KINDS)}")
    if subject.kind in ("eager", "transformers") and threads:
        import torch

        torch.set_num_threads(threads)
    if subject.kind == "artifact":
        from hubert_export.artifact import Artifact
        from hubert_export.backends import get_backend

        artifact = Artifact.open(subject.path)
        return get_backend(artifact.target).load(artifact, threads=threads or None)
    if subject.kind == "onnx-file":
        from hubert_export.backends.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(Path(subject.path), threads=threads or 0)
    if subject.opener is not None:
        return _resolve(subject.opener)(subject, threads)
    if subject.kind != "eager":
        raise HubertExportError(f"subject {subject.name} of kind {subject.kind} needs an opener "
                                "(benchmarks/baselines.py has the transformers one)")
    from hubert_export.runner import EagerRunner
    from hubert_export.tasks import family_of

    config, task = config_and_task(subject)
    spec = family_of(config).task(task)
    return EagerRunner(spec.model_class.from_pretrained(subject.path), spec)


def _resolve(opener: str) -> Any:
    import importlib
    import importlib.util

    location, _, name = opener.rpartition(":")
    if location.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(location).stem, location)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    return getattr(module, name)


def config_and_task(subject: Subject) -> tuple[Any, str]:
    from hubert_export.model import load_config
    from hubert_export.tasks import infer_task

    path = Path(subject.path)
    config_dir = Path(subject.config_dir) if subject.config_dir else (path if path.is_dir() else path.parent)
    config = load_config(config_dir)
    task = None
    if subject.kind == "artifact":
        from hubert_export.artifact import Artifact

        task = Artifact.open(path).task
    return config, task or infer_task(config)


def _artifact_info(subject: Subject) -> dict[str, Any]:
    path = Path(subject.path)
    if subject.kind != "artifact":
        files = [path] if path.is_file() else list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
        if path.is_file():  # external data beside an ONNX file belongs to it
            files += [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
        return {"target": {"onnx-file": "onnx"}.get(subject.kind), "precision": "fp32",
                "size_bytes": sum(f.stat().st_size for f in files if f.is_file()), "accuracy": None}
    from hubert_export.artifact import Artifact

    artifact = Artifact.open(path)
    parity = artifact.manifest.parity
    accuracy = None
    if isinstance(parity, dict):
        worst = parity.get("worst") or {}
        metric = "argmax_agreement" if "argmax_agreement" in worst else (
            "top1_agreement" if "top1_agreement" in worst else "relative_l2_error")
        value = worst.get(metric)
        if value is not None and metric.endswith("agreement"):
            metric, value = f"1 - {metric}", 1 - value
        accuracy = {"passed": parity.get("passed"), "worst": worst,
                    "headline": {"metric": metric, "value": value}}
    return {"target": artifact.target, "precision": artifact.precision, "int8_layers": artifact.int8_layers,
            "deployment_isa": artifact.deployment_isa, "size_bytes": sum(f.stat().st_size for f in artifact.model_files if f.is_file()), "accuracy": accuracy}


# --------------------------------------------------------------------------------------------
# Memory: one fresh process per subject


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _input_contract(subject: Subject) -> Any:
    if subject.kind != "artifact":
        return None
    from hubert_export.artifact import Artifact

    return Artifact.open(subject.path).input_contract


def measure_memory(subject: Subject, shapes: list[tuple[int, int]], threads: int | None) -> dict[str, Any] | None:
    """Peak RSS of loading `subject` and one inference at the largest of `shapes` it accepts (a subprocess)."""
    if _vm_hwm_bytes() is None:
        return None
    contract = _input_contract(subject)
    fits = [s for s in shapes if contract is None or contract.contains(*s)]
    if not fits:
        return {"error": "no benchmarked shape is inside the artifact's shape range"}
    batch, samples = max(fits, key=lambda s: s[0] * s[1])
    request = json.dumps({"subject": dataclasses.asdict(subject), "threads": threads, "batch": batch,
                          "samples": samples})
    probe = subprocess.run([sys.executable, "-m", "hubert_export.bench", "--memory-probe", request],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        lines = (probe.stderr or probe.stdout).strip().splitlines()
        return {"error": f"memory probe failed: {lines[-1] if lines else f'exit {probe.returncode}'}"}
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    result["peak_above_baseline_bytes"] = result["peak_rss_bytes"] - result["baseline_rss_bytes"]
    return result | {"batch": batch, "samples": samples}


def _memory_probe(request_json: str) -> None:
    request = json.loads(request_json)
    subject = Subject(**request["subject"])
    # Import everything loading will need before the baseline, so the delta is the model's, not torch's.
    import torch  # noqa: F401

    import hubert_export.runner  # noqa: F401
    if subject.kind == "artifact":
        from hubert_export.artifact import Artifact
        from hubert_export.backends import get_backend

        get_backend(Artifact.open(subject.path).target)
    elif subject.kind == "onnx-file":
        import hubert_export.backends.onnxruntime  # noqa: F401
    if subject.opener is not None:
        _resolve(subject.opener)  # imports what the opener's module imports (transformers)
    baseline = _vm_hwm_bytes()
    runner = open_subject(subject, request["threads"]).activate()
    runner.infer(_inputs(runner, request["batch"], request["samples"]))
    print(json.dumps({"baseline_rss_bytes": baseline, "peak_rss_bytes": _vm_hwm_bytes()}))


# --------------------------------------------------------------------------------------------
# The measurement


def _inputs(runner: Any, batch: int, samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = {"input_values": (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)}
    if "attention_mask" in runner.input_names:
        inputs["attention_mask"] = np.ones((batch, samples), dtype=np.int64)
    return inputs


def _agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float] | None:
    name = next((n for n in reference if n in candidate), None)
    if name is None or reference[name].shape != candidate[name].shape:
        return None
    ref, cand = reference[name], candidate[name]
    return {"output": name, "max_abs_error": float(np.abs(ref - cand).max()),
            "argmax_agreement": float((ref.argmax(-1) == cand.argmax(-1)).mean())}


def run_benchmark(
    subjects: list[Subject],
    *,
    lengths: Sequence[float] = (1, 5, 10, 30),
    batches: Sequence[int] = (1,),
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    baseline: str | None = None,
    memory: bool = True,
    ceiling_size: int = 4096,
) -> dict[str, Any]:
    """Measure every subject at every length x batch; returns the bench.json document."""
    if repeats < 1 or warmup < 0:
        raise HubertExportError(f"--repeats must be at least 1 and --warmup at least 0, got {repeats} and {warmup}")
    if not subjects:
        raise HubertExportError("nothing to benchmark: pass at least one artifact directory (or --eager CHECKPOINT)")
    if len({s.name for s in subjects}) != len(subjects):
        raise HubertExportError("two subjects share a name: give each artifact its own directory name")
    if baseline is not None and baseline not in {s.name for s in subjects}:
        raise HubertExportError(f"baseline {baseline!r} is not one of the subjects")
    shapes = [(b, int(round(s * SAMPLE_RATE))) for s in lengths for b in batches]
    notes: list[str] = []

    log.info(f"matmul ceiling: numpy float32 {ceiling_size}x{ceiling_size}")
    ceiling = matmul_ceiling(ceiling_size, threads=threads)
    log.info(f"matmul ceiling: {ceiling['gflops']:.1f} GFLOP/s")

    records, runners, flop_config = _open_subjects(subjects, threads)
    if baseline is not None and baseline not in runners:
        notes.append(f"baseline {baseline} could not be loaded: no speed-ups")
        baseline = None
    measurements: list[dict[str, Any]] = []
    for seconds, batch in itertools.product(lengths, batches):
        measurements += _measure_shape(runners, flop_config, seconds, batch, repeats=repeats, warmup=warmup,
                                       gflops=ceiling["gflops"], baseline=baseline)

    for runner in runners.values():
        runner.close()
    if memory:
        for record, subject in zip(records, subjects):
            if record["error"] is None:
                log.info(f"peak memory of {subject.name} (fresh process)")
                record["memory"] = measure_memory(subject, shapes, threads)
        if _vm_hwm_bytes() is None:
            notes.append("peak memory not measured: /proc/self/status has no VmHWM on this system")
    from hubert_export.artifact import library_versions
    from hubert_export.isa import host_description  # the flags that decide INT8 speed and rounding

    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                    "cpu": host_description(), "libraries": library_versions()},
        "settings": {"lengths_s": [float(s) for s in lengths], "batches": [int(b) for b in batches],
                     "repeats": repeats, "warmup": warmup, "threads": threads, "sample_rate": SAMPLE_RATE,
                     "baseline": baseline},
        "ceiling": ceiling,
        "subjects": records,
        "measurements": measurements,
        "notes": notes,
    }


def _open_subjects(subjects: list[Subject], threads: int | None) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                                         dict[str, tuple[Any, str]]]:
    """Each subject's record (its info, load time or error), its active runner and its (config, task)."""
    records: list[dict[str, Any]] = []
    runners: dict[str, Any] = {}
    flop_config: dict[str, tuple[Any, str]] = {}
    for subject in subjects:
        record: dict[str, Any] = {"name": subject.name, "kind": subject.kind, "path": str(subject.path),
                                  "error": None, "load_seconds": None, "memory": None}
        try:
            record.update(_artifact_info(subject))
            config, task = config_and_task(subject)
            record["task"] = task
            flop_config[subject.name] = (config, task)
            start = time.perf_counter()
            runners[subject.name] = open_subject(subject, threads).activate()
            record["load_seconds"] = time.perf_counter() - start
            log.info(f"loaded {subject.name} in {record['load_seconds']:.2f} s")
        except Exception as exc:  # noqa: BLE001 - one subject that cannot load must not stop the others
            record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.info(f"cannot load {subject.name}: {record['error']}")
        records.append(record)
    return records, runners, flop_config


def _measure_shape(runners: dict[str, Any], flop_config: dict[str, tuple[Any, str]], seconds: float, batch: int, *,
                   repeats: int, warmup: int, gflops: float, baseline: str | None) -> list[dict[str, Any]]:
    """Every runner at one length x batch: warm-up, then `repeats` round-robin timings; one row each."""
    samples = int(round(seconds * SAMPLE_RATE))
    active: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for name, runner in runners.items():
        row = {"subject": name, "seconds": seconds, "batch": batch, "samples": samples, "runs_s": [],
               "skipped": None, "vs_baseline": None}
        rows[name] = row
        config, task = flop_config[name]
        try:
            row["gflop"] = _count(config, samples, batch, task)
            inputs = _inputs(runner, batch, samples)
            for i in range(max(warmup, 1)):  # at least one call: it gives the outputs compared below
                out = runner.infer(inputs)
                if i == 0:
                    outputs[name] = out
            active[name] = (runner, inputs)
        except Exception as exc:  # noqa: BLE001 - outside the shape range, out of memory, ...
            row["skipped"] = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            log.info(f"{name} {seconds:g} s x{batch}: skipped ({row['skipped']})")
    order = list(active)
    for r in range(repeats if order else 0):
        # Round-robin, so drift in machine load hits every subject alike; rotated each repeat and
        # paused between subjects, so no subject always runs right after one whose idle thread pool
        # still spins (ONNX Runtime's workers busy-wait briefly after each run).
        for name in order[r % len(order):] + order[: r % len(order)]:
            runner, inputs = active[name]
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            runner.infer(inputs)
            rows[name]["runs_s"].append(time.perf_counter() - start)
        log.info(f"{seconds:g} s x{batch} repeat {r + 1}/{repeats}: "
                 + ", ".join(f"{n} {rows[n]['runs_s'][-1]:.3f} s" for n in order))
    base = rows.get(baseline) if baseline else None
    for name, row in rows.items():
        _summarise(row, gflops, base)
        if baseline and name != baseline and name in outputs and baseline in outputs:
            row["vs_baseline"] = _agreement(outputs[baseline], outputs[name])
    return list(rows.values())


def _count(config: Any, samples: int, batch: int, task: str) -> float:
    from hubert_export.flops import count_flops

    return count_flops(config, samples, batch, task)["total"] / 1e9


def _summarise(row: dict[str, Any], ceiling_gflops: float, base: dict[str, Any] | None) -> None:
    runs = row["runs_s"]
    keys = ("p50_s", "p90_s", "p99_s", "mean_s", "throughput_audio_s_per_s", "real_time_factor", "ceiling_share",
            "speedup")
    if not runs:
        row.update(dict.fromkeys(keys))
        row.setdefault("gflop", None)
        return
    p50, p90, p99 = (float(v) for v in np.percentile(runs, [50, 90, 99]))
    audio = row["batch"] * row["seconds"]
    row.update(p50_s=p50, p90_s=p90, p99_s=p99, mean_s=sum(runs) / len(runs),
               throughput_audio_s_per_s=audio / p50, real_time_factor=p50 / audio,
               ceiling_share=row["gflop"] / p50 / ceiling_gflops,
               speedup=float(np.median(base["runs_s"])) / p50 if base and base["runs_s"] else None)


# --------------------------------------------------------------------------------------------
# Reports


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    ceiling = results["ceiling"]
    lines = [
        f"Benchmark {results['created_utc']} on {results['machine']['platform']} "
        f"({results['machine']['cpu_count']} CPUs), threads {s['threads'] or 'runtime default'}, "
        f"{s['warmup']} warm-up + {s['repeats']} timed runs each, round-robin. Float32 matmul ceiling "
        f"{ceiling['gflops']:.1f} GFLOP/s (numpy {ceiling['size']}x{ceiling['size']}).",
        "",
        "| subject | audio | batch | p50 | p90 | p99 | audio s/s | RTF | GFLOP | of ceiling | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in results["measurements"]:
        if m["p50_s"] is None:
            lines.append(f"| {m['subject']} | {m['seconds']:g} s | {m['batch']} | skipped: {m['skipped']} "
                         "| | | | | | | |")
            continue
        speedup = f"{m['speedup']:.2f}x" if m["speedup"] is not None else "-"
        lines.append(f"| {m['subject']} | {m['seconds']:g} s | {m['batch']} | {_ms(m['p50_s'])} | {_ms(m['p90_s'])} "
                     f"| {_ms(m['p99_s'])} | {m['throughput_audio_s_per_s']:.1f} | {m['real_time_factor']:.3f} "
                     f"| {m['gflop']:.3g} | {m['ceiling_share']:.0%} | {speedup} |")
    lines += ["", "| subject | kind | target | precision | size | load | peak RSS above baseline | parity | "
              "accuracy delta |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["subjects"]:
        mem = r.get("memory") or {}
        rss = (f"{mem['peak_above_baseline_bytes'] / 2**20:.0f} MiB" if "peak_above_baseline_bytes" in mem
               else mem.get("error", "-"))
        acc = r.get("accuracy") or {}
        head = acc.get("headline") or {}
        delta = f"{head['metric']} = {head['value']:.3g}" if head.get("value") is not None else "-"
        parity = {True: "pass", False: "FAIL"}.get(acc.get("passed"), "-")
        load = f"{r['load_seconds']:.2f} s" if r.get("load_seconds") is not None else f"error: {r['error']}"
        size = f"{r['size_bytes'] / 1e6:.1f} MB" if r.get("size_bytes") is not None else "-"
        precision = r.get("precision") or "-"
        if r.get("int8_layers") is not None:
            precision += f" ({r['int8_layers']} INT8 layers, for {r.get('deployment_isa') or 'an unrecorded ISA'})"
        lines.append(f"| {r['name']} | {r['kind']} | {r.get('target') or '-'} | {precision} | "
                     f"{size} | {load} | {rss} | {parity} | {delta} |")
    if results.get("notes"):
        lines += [""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def write_results(results: dict[str, Any], out_dir: str | Path, extra_markdown: str = "") -> list[Path]:
    """bench.json and bench.md in `out_dir`; returns the files written (benchmarks/plots.py draws them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from hubert_export.artifact import _json_default

    (out_dir / "bench.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    (out_dir / "bench.md").write_text(markdown(results) + extra_markdown)
    return [out_dir / "bench.json", out_dir / "bench.md"]


if __name__ == "__main__":  # the memory probe's fresh process (`measure_memory`)
    if len(sys.argv) != 3 or sys.argv[1] != "--memory-probe":
        sys.exit("usage: python -m hubert_export.bench --memory-probe REQUEST_JSON (the CLI is hubert-export bench)")
    _memory_probe(sys.argv[2])
