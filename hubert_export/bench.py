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

import argparse
import dataclasses
import itertools
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubert_export.errors import HubertExportError
from hubert_export.runner import Runner

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


def artifact_subject(path: str | Path, name: str | None = None) -> Subject:
    return Subject(name or Path(path).resolve().name, "artifact", str(path))


# --------------------------------------------------------------------------------------------
# Statistics and the ceiling


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics: numpy.percentile's default."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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
    median = percentile(runs, 50)
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
    config, task = _config_and_task(subject)
    if subject.kind == "eager":
        from hubert_export.runner import EagerRunner
        from hubert_export.tasks import get_task

        spec = get_task(task)
        return EagerRunner(spec.model_class.from_pretrained(subject.path), spec)
    return TransformersRunner(subject.path, task)


class TransformersRunner(Runner):
    """transformers' own eager model (default attention implementation): the usual starting point."""

    def __init__(self, checkpoint: str | Path, task: str) -> None:
        from hubert_export.tasks import get_task

        spec = get_task(task)
        self.checkpoint = checkpoint
        # Our model classes carry transformers' names.
        self.class_name = spec.model_class.__name__
        self.name = "transformers"
        self.input_names = ["input_values"]
        self.output_names = spec.output_names

    def _activate(self) -> None:
        import transformers

        self.model = getattr(transformers, self.class_name).from_pretrained(self.checkpoint).eval()

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(inputs["input_values"])))
        return {name: getattr(out, name).float().numpy() for name in self.output_names}

    def _deactivate(self) -> None:
        self.model = None


def _config_and_task(subject: Subject) -> tuple[Any, str]:
    from hubert_export.model import HubertConfig
    from hubert_export.tasks import infer_task

    path = Path(subject.path)
    config_dir = Path(subject.config_dir) if subject.config_dir else (path if path.is_dir() else path.parent)
    config = HubertConfig.from_pretrained(config_dir)
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
    parity = artifact.manifest.get("parity")
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
    return {"target": artifact.target, "precision": artifact.precision,
            "size_bytes": sum(f.stat().st_size for f in artifact.model_files if f.is_file()), "accuracy": accuracy}


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


def _shape_range(subject: Subject) -> Any:
    if subject.kind != "artifact":
        return None
    from hubert_export.artifact import Artifact

    return Artifact.open(subject.path).shape_range()


def measure_memory(subject: Subject, shapes: list[tuple[int, int]], threads: int | None) -> dict[str, Any] | None:
    """Peak RSS of loading `subject` and one inference at the largest of `shapes` it accepts (a subprocess)."""
    if _vm_hwm_bytes() is None:
        return None
    shape_range = _shape_range(subject)
    fits = [s for s in shapes if shape_range is None or shape_range.contains(*s)]
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
    elif subject.kind == "transformers":
        import transformers  # noqa: F401
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

    records: list[dict[str, Any]] = []
    runners: dict[str, Any] = {}
    flop_config: dict[str, tuple[Any, str]] = {}
    for subject in subjects:
        record: dict[str, Any] = {"name": subject.name, "kind": subject.kind, "path": str(subject.path),
                                  "error": None, "load_seconds": None, "memory": None}
        try:
            record.update(_artifact_info(subject))
            config, task = _config_and_task(subject)
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
    if baseline is not None and baseline not in runners:
        notes.append(f"baseline {baseline} could not be loaded: no speed-ups")
        baseline = None

    measurements: list[dict[str, Any]] = []
    for seconds, batch in itertools.product(lengths, batches):
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
            _summarise(row, ceiling["gflops"], base)
            if baseline and name != baseline and name in outputs and baseline in outputs:
                row["vs_baseline"] = _agreement(outputs[baseline], outputs[name])
            measurements.append(row)

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

    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                    "libraries": library_versions()},
        "settings": {"lengths_s": [float(s) for s in lengths], "batches": [int(b) for b in batches],
                     "repeats": repeats, "warmup": warmup, "threads": threads, "sample_rate": SAMPLE_RATE,
                     "baseline": baseline},
        "ceiling": ceiling,
        "subjects": records,
        "measurements": measurements,
        "notes": notes,
    }


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
    p50 = percentile(runs, 50)
    audio = row["batch"] * row["seconds"]
    row.update(p50_s=p50, p90_s=percentile(runs, 90), p99_s=percentile(runs, 99), mean_s=sum(runs) / len(runs),
               throughput_audio_s_per_s=audio / p50, real_time_factor=p50 / audio,
               ceiling_share=row["gflop"] / p50 / ceiling_gflops,
               speedup=percentile(base["runs_s"], 50) / p50 if base and base["runs_s"] else None)


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
        lines.append(f"| {r['name']} | {r['kind']} | {r.get('target') or '-'} | {r.get('precision') or '-'} | "
                     f"{size} | {load} | {rss} | {parity} | {delta} |")
    if results.get("notes"):
        lines += [""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def plot(results: dict[str, Any], out_dir: Path) -> tuple[list[Path], str | None]:
    """latency.png and (with a baseline) accuracy_vs_speedup.png; (files, note when skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install hubert-export[bench])"
    written = []
    measured = [m for m in results["measurements"] if m["p50_s"] is not None]
    batches = sorted({m["batch"] for m in measured})
    if measured:
        fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
        for ax, batch in zip(axes[0], batches):
            for name in dict.fromkeys(m["subject"] for m in measured):
                points = sorted((m["seconds"], m["p50_s"]) for m in measured if m["subject"] == name
                                and m["batch"] == batch)
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
            ax.set(xlabel="audio length (s)", ylabel="p50 latency (s)", title=f"batch {batch}")
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(fontsize="small")
        fig.tight_layout()
        written.append(out_dir / "latency.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    accuracy = {r["name"]: r["accuracy"]["headline"] for r in results["subjects"]
                if r.get("accuracy") and r["accuracy"]["headline"].get("value") is not None}
    if results["settings"]["baseline"] is None or not accuracy:
        return written, None if written else "plots skipped: no measurement succeeded"
    # One point per subject at the largest smallest-batch shape: the interactive-use case.
    batch = min(batches)
    seconds = max(m["seconds"] for m in measured if m["batch"] == batch)
    points = {m["subject"]: m["speedup"] for m in measured
              if m["batch"] == batch and m["seconds"] == seconds and m["speedup"] is not None}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, head in accuracy.items():
        if name in points:
            ax.scatter(points[name], head["value"])
            ax.annotate(name, (points[name], head["value"]), fontsize="small", xytext=(4, 4),
                        textcoords="offset points")
    metrics = sorted({h["metric"] for h in accuracy.values()})
    ax.set(xlabel=f"speed-up over {results['settings']['baseline']} ({seconds:g} s, batch {batch})",
           ylabel=" / ".join(metrics) + " (parity, worst case)", title="accuracy delta vs speed-up")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    written.append(out_dir / "accuracy_vs_speedup.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written, None


def write_results(results: dict[str, Any], out_dir: str | Path, extra_markdown: str = "") -> list[Path]:
    """bench.json, bench.md and the plots in `out_dir`; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs, note = plot(results, out_dir)
    if note:
        results["notes"].append(note)
    from hubert_export.artifact import _json_default

    (out_dir / "bench.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    (out_dir / "bench.md").write_text(markdown(results) + extra_markdown)
    return [out_dir / "bench.json", out_dir / "bench.md", *pngs]


# --------------------------------------------------------------------------------------------
# Command line


def _list(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive numbers")
        return values
    return parse


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubert-export bench",
        description="Latency (p50/p90/p99), throughput, peak memory, load time, size, FLOPs and share of the "
                    "matmul ceiling of built artifacts, measured round-robin in one process.",
    )
    parser.add_argument("artifacts", type=Path, nargs="*", metavar="ARTIFACT_DIR", help="artifact directories")
    parser.add_argument("--lengths", type=_list(float), default=[1, 5, 10, 30], metavar="S,S,...",
                        help="audio lengths in seconds (default 1,5,10,30)")
    parser.add_argument("--batch", type=_list(int), default=[1], metavar="B,B,...", help="batch sizes (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per subject and shape (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: each runtime's own default)")
    parser.add_argument("--output", type=Path, metavar="DIR", help="write bench.json, bench.md and plots here")
    parser.add_argument("--eager", type=Path, metavar="CHECKPOINT",
                        help="also measure the eager PyTorch model of this checkpoint, and use it as the baseline")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--ceiling-size", type=int, default=4096, metavar="N",
                        help="matrix size of the float32 matmul that measures the ceiling (default 4096)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def run_bench(args: argparse.Namespace) -> int:
    from hubert_export.artifact import Artifact

    for path in args.artifacts:
        Artifact.open(path)  # a wrong path is the user's mistake: exit 2, not a row marked "error"
    subjects = [artifact_subject(path) for path in args.artifacts]
    baseline = None
    if args.eager is not None:
        if not (args.eager / "config.json").is_file():
            raise HubertExportError(f"--eager {args.eager} is not a checkpoint directory (no config.json): "
                                    "pass a Hugging Face checkpoint directory")
        subjects.append(Subject("eager-fp32", "eager", str(args.eager)))
        baseline = "eager-fp32"
    names = [s.name for s in subjects]
    for i, subject in enumerate(subjects):  # two artifacts in same-named folders of different parents
        if names.count(subject.name) > 1:
            subject.name = f"{subject.name}-{i}"
    results = run_benchmark(subjects, lengths=args.lengths, batches=args.batch, repeats=args.repeats,
                            warmup=args.warmup, threads=args.threads, baseline=baseline,
                            memory=not args.no_memory, ceiling_size=args.ceiling_size)
    written = write_results(results, args.output) if args.output is not None else []
    print(markdown(results), end="")
    if written:
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        _memory_probe(sys.argv[2])
    else:
        from hubert_export.cli import main

        sys.exit(main(["bench", *sys.argv[1:]]))
