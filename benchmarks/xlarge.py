"""hubert-xlarge (~1 B parameters, ~3.8 GB in FP32) end to end: ONNX with external data.

Builds a random-init hubert-xlarge CTC checkpoint (the published facebook/hubert-xlarge-ls960-ft
layout: 48 layers, 1280 wide, 16 heads, 5120 feed-forward, layer-norm feature encoder, stable
layer norm, conv bias, 32-token vocabulary), then, one step at a time, each in its own process:

    build onnx fp32 / onnx int8 / openvino fp32 / openvino int8   (short parity inputs, 4 calibration clips)
    check and check --golden of each artifact
    ray: the ONNX FP32 artifact through Ray's object store (share_directory -> Files.local) and back

Each step's wall time and peak resident memory (the step process's ru_maxrss from wait4, which is
its VmHWM) and the artifact's file sizes go to benchmarks/results/xlarge.json and xlarge.md.

    nice -n 10 python benchmarks/xlarge.py --work /tmp/xlarge [--steps checkpoint,onnx-fp32,...]

Steps already recorded in the JSON are skipped unless --redo; run them one at a time on a shared
machine (`--steps onnx-fp32`), with `free -g` showing room first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
XLARGE = dict(hidden_size=1280, num_hidden_layers=48, num_attention_heads=16, intermediate_size=5120,
              feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, feat_extract_activation="gelu",
              vocab_size=32, architectures=["HubertForCTC"])
BUILDS = {  # step -> (target, precision)
    "onnx-fp32": ("onnx", "fp32"), "onnx-int8": ("onnx", "int8"),
    "openvino-fp32": ("openvino", "fp32"), "openvino-int8": ("openvino", "int8"),
}
# Short parity inputs (0.5..2 s) and four calibration clips: a 1 B-parameter forward pass costs
# seconds a second of audio on two cores.
RECIPE = """name: xlarge-{step}
description: hubert-xlarge end to end (benchmarks/xlarge.py)
task: auto
target: {target}
precision: {precision}
shapes:
  min: {{batch: 1, samples: 400}}
  opt: {{batch: 1, samples: 16000}}
  max: {{batch: 2, samples: 32000}}
calibration:
  subset_size: 4
"""


def make_checkpoint(path: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.HubertConfig(**XLARGE)
    model = transformers.HubertForCTC(config).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"hubert-xlarge CTC: {params / 1e6:.1f} M parameters")
    model.save_pretrained(path, safe_serialization=True)
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(path)


def child(argv: list[str], log: Path) -> dict:
    """Run one step in its own process; its wall time and peak RSS (wait4's ru_maxrss, KiB)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"argv": argv[1:], "exit_code": proc.returncode, "wall_seconds": round(time.perf_counter() - started, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "log": str(log)}


def sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()} if directory.is_dir() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hubert-xlarge"))
    parser.add_argument("--steps", default="checkpoint," + ",".join(f"{b},check-{b},golden-{b}" for b in BUILDS)
                        + ",ray")
    parser.add_argument("--redo", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where xlarge.json and xlarge.md go")
    parser.add_argument("--internal", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.internal:
        return internal(args.internal)
    args.work.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    results_path = args.results / "xlarge.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"steps": {}}
    checkpoint = args.work / "checkpoint"
    cli = [sys.executable, "-m", "hubert_export.cli"]
    for step in [s for s in args.steps.split(",") if s]:
        if step in results["steps"] and not args.redo and results["steps"][step].get("exit_code") == 0:
            print(f"{step}: recorded, skipped")
            continue
        log = args.work / f"{step}.log"
        if step == "checkpoint":
            argv = [sys.executable, __file__, "--internal", "checkpoint", str(checkpoint)]
        elif step in BUILDS:
            target, precision = BUILDS[step]
            recipe = args.work / f"{step}.yaml"
            recipe.write_text(RECIPE.format(step=step, target=target, precision=precision))
            argv = [*cli, "--recipe", str(recipe), "--model", str(checkpoint),
                    "--output", str(args.work / step), "--overwrite", "--latency-repeats", "1"]
        elif step.startswith(("check-", "golden-")):
            kind, build = step.split("-", 1)
            argv = [*cli, "check", str(args.work / build), "--report-dir", str(args.work / f"{step}-report"),
                    "--latency-repeats", "1"]
            argv += ["--golden"] if kind == "golden" else []
        elif step == "ray":
            argv = [sys.executable, __file__, "--internal", "ray", str(args.work / "onnx-fp32")]
        else:
            parser.error(f"unknown step {step}")
        print(f"{step}: {' '.join(argv[1:])}", flush=True)
        record = child(argv, log)
        record["free_gib_before"] = _free_gib()
        if step in BUILDS:
            record["files"] = sizes(args.work / step)
            record["parity"] = _parity(args.work / step / "parity.json")
        elif step.startswith(("check-", "golden-")):
            record["parity"] = _parity(args.work / f"{step}-report" / "parity.json")
        elif step == "checkpoint":
            record["files"] = sizes(checkpoint)
        results["steps"][step] = record
        results["machine"] = _machine()
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        (args.results / "xlarge.md").write_text(markdown(results))
        print(f"{step}: exit {record['exit_code']}, {record['wall_seconds']} s, peak RSS {record['peak_rss_gib']} GiB",
              flush=True)
        if record["exit_code"] != 0:
            print(f"{step} failed: see {log}")
            return 1
    return 0


def internal(argv: list[str]) -> int:
    if argv[0] == "checkpoint":
        make_checkpoint(Path(argv[1]))
        return 0
    if argv[0] == "ray":
        return ray_round_trip(Path(argv[1]))
    raise SystemExit(f"unknown internal step {argv[0]}")


def ray_round_trip(artifact: Path) -> int:
    """The artifact through Ray's object store: share_directory (store mode) on the driver,
    Files.local() in a Ray task, which re-hashes the unpacked copy against its manifest."""
    import ray

    from hubert_export.distributed import share_directory

    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        started = time.perf_counter()
        files = share_directory(artifact, "store")
        shared = time.perf_counter() - started

        @ray.remote(num_cpus=1)
        def unpack_and_verify(files) -> dict:
            from hubert_export.artifact import Artifact

            start = time.perf_counter()
            local = files.local()
            Artifact.open(local).verify_files()
            return {"path": str(local), "seconds": time.perf_counter() - start,
                    "bytes": sum(p.stat().st_size for p in local.rglob("*") if p.is_file())}

        result = ray.get(unpack_and_verify.remote(files))
        print(json.dumps({"share_seconds": round(shared, 1), "unpack_verify_seconds": round(result["seconds"], 1),
                          "bytes": result["bytes"], "unpacked_to": result["path"]}))
        import shutil

        shutil.rmtree(result["path"], ignore_errors=True)
    finally:
        ray.shutdown()
    return 0


def _parity(path: Path) -> dict | None:
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {"passed": report.get("passed"), "worst": report.get("worst") or _worst(report),
            "failures": report.get("failures"), "cases": len(report.get("cases", []))}


def _worst(report: dict) -> dict:
    worst: dict = {}
    for case in report.get("cases", []):
        for name, value in (case.get("metrics") or {}).items():
            if isinstance(value, (int, float)):
                worst[name] = max(worst.get(name, value), value)
    return worst


def _free_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


def _machine() -> dict:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "python": platform.python_version()}


def markdown(results: dict) -> str:
    lines = ["# hubert-xlarge end to end (random init, ONNX with external data)", "",
             f"Machine: {results.get('machine')}", "",
             "| step | exit | wall (s) | peak RSS (GiB) | files | parity |", "| --- | --- | --- | --- | --- | --- |"]
    for step, r in results["steps"].items():
        files = ", ".join(f"{n} {b / 2**30:.2f} GiB" if b > 2**27 else f"{n}" for n, b in (r.get("files") or {}).items()
                          if b > 2**20) or "-"
        parity = r.get("parity") or {}
        verdict = "-" if not parity else ("PASS" if parity.get("passed") else "FAIL")
        worst = parity.get("worst") or {}
        shown = ", ".join(f"{k} {v:.3g}" for k, v in worst.items() if isinstance(v, (int, float)))
        lines.append(f"| {step} | {r['exit_code']} | {r['wall_seconds']} | {r['peak_rss_gib']} | {files} | "
                     f"{verdict}{' (' + shown + ')' if shown else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
