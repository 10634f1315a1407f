"""The canonical eager model against transformers' eager model, and the memory of from_pretrained.

    python benchmarks/eager.py [--model DIR] [--seconds 10] [--repeats 5] [--threads 2] [--out benchmarks/results]

Same process, same weights (a random-init hubert-base-architecture HubertForCTC written by
transformers unless --model is given), interleaved runs so drift hits both sides alike; median of
--repeats after one warm-up. Peak RSS of `from_pretrained` is measured in a fresh subprocess per
loader (VmHWM minus the interpreter's baseline after imports). Writes eager.json and eager.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

RSS_PROBE = r"""
import sys, json
def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
which, path = sys.argv[1], sys.argv[2]
import torch
if which == "ours":
    from hubert_export import HubertForCTC
else:
    from transformers import HubertForCTC
baseline = hwm_kb()
model = HubertForCTC.from_pretrained(path)
print(json.dumps({"baseline_kb": baseline, "peak_kb": hwm_kb()}))
"""


def checkpoint_dir(model: Path | None, cache: Path) -> Path:
    if model is not None:
        return model
    path = cache / "hubert-base-random-ctc"
    if not (path / "config.json").is_file():
        import transformers

        torch.manual_seed(0)
        transformers.HubertForCTC(transformers.HubertConfig(vocab_size=32)).eval().save_pretrained(path)
    return path


def measure_latency(path: Path, seconds: float, repeats: int) -> dict[str, dict[str, float]]:
    import transformers

    from hubert_export import HubertForCTC

    models = {"hubert_export": HubertForCTC.from_pretrained(path).eval(),
              "transformers": transformers.HubertForCTC.from_pretrained(path).eval()}
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, int(seconds * 16_000))).astype(np.float32))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        outputs = {name: m(x).logits for name, m in models.items()}  # warm-up, and the outputs agree
        for _ in range(repeats):
            for name, m in models.items():
                start = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - start)
    max_abs = float((outputs["hubert_export"] - outputs["transformers"]).abs().max())
    return {name: {"median_s": statistics.median(t), "runs_s": t} for name, t in times.items()} | {
        "max_abs_error": {"logits": max_abs}}


def measure_rss(path: Path) -> dict[str, dict[str, float]]:
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    result = {}
    for which in ("ours", "transformers"):
        probe = subprocess.run([sys.executable, "-c", RSS_PROBE, which, str(path)], capture_output=True, text=True,
                               check=True)
        data = json.loads(probe.stdout.strip().splitlines()[-1])
        delta = (data["peak_kb"] - data["baseline_kb"]) * 1024
        result["hubert_export" if which == "ours" else "transformers"] = {
            "peak_rss_above_baseline_bytes": delta, "ratio_to_checkpoint": delta / size}
    result["checkpoint_bytes"] = size
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="HubertForCTC checkpoint (default: random hubert-base)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir(args.model, Path.home() / ".cache" / "hubert-export")
    print(f"checkpoint {path}", file=sys.stderr)
    latency = measure_latency(path, args.seconds, args.repeats)
    rss = measure_rss(path)
    ours, ref = latency["hubert_export"]["median_s"], latency["transformers"]["median_s"]
    result = {"schema_version": 1, "checkpoint": str(path), "seconds": args.seconds, "batch": 1,
              "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
              "latency": latency, "ratio_to_transformers": ours / ref, "memory": rss}
    (args.out / "eager.json").write_text(json.dumps(result, indent=2) + "\n")
    table = [
        f"Eager hubert-base (random init), {args.seconds:g} s audio, batch 1, {args.threads} threads, "
        f"median of {args.repeats} (torch {torch.__version__})",
        "",
        "| model | latency | ratio to transformers | from_pretrained peak RSS above baseline | x checkpoint size |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("hubert_export", "transformers"):
        m = rss[name]
        table.append(f"| {name} | {latency[name]['median_s']:.3f} s | {latency[name]['median_s'] / ref:.2f} | "
                     f"{m['peak_rss_above_baseline_bytes'] / 2**20:.0f} MiB | {m['ratio_to_checkpoint']:.2f} |")
    table.append("")
    table.append(f"Checkpoint: {rss['checkpoint_bytes'] / 2**20:.0f} MiB; logits max abs difference "
                 f"{latency['max_abs_error']['logits']:.2g}.")
    (args.out / "eager.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
