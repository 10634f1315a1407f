"""`hubert-export serve` under load, beside the same artifact's runner called directly.

    .venv-serve/bin/python benchmarks/serve.py [--artifact DIR] [--seconds 10] [--out benchmarks/results]

Requests: speech of mixed lengths (the held-out clips, 1.2-2.5 s, and concatenations of them to
about 5 and 10 s), sent by 1, 4 and 16 concurrent gRPC clients (tritonclient, one client per
thread, each looping for --seconds), with Triton's dynamic batching on (--max-batch 16,
--max-queue-delay-ms 2) and off (--max-batch 1). A third server has batching on and two
instances of one thread each (one computes while the other's batch forms). Throughput is seconds of
audio answered per second of wall time; latency is per request, as the client sees it.

The baseline is the artifact's runner in this process: `runner.infer` on the same recordings,
normalised, sorted by length and padded (attention mask) in batches of 1, 4 and 16 (its best case:
the whole queue known up front), front end and decoding excluded; its best batch is the goal's reference (16 clients with batching at
0.9x of it or better, p99 at most 2x p50). Clients and server share this machine's cores, as the
runner alone does not: the numbers say what one machine serving its own load gets.

Writes serve.json and serve.md (with the CPU's flags) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hubert_export.audio import load_audio  # noqa: E402
from hubert_export.isa import cpu_flags, host_isa  # noqa: E402

SPEECH = REPO / "tests" / "data" / "speech"
CLIENTS = (1, 4, 16)
BATCHES = (1, 4, 16)


def recordings() -> list[np.ndarray]:
    clips = [load_audio(p) for p in sorted(SPEECH.glob("*.flac"))]
    mixed = list(clips[:16])
    for size in (5, 10):  # concatenations of about 5 and 10 s
        for start in range(4):
            pieces, total = [], 0
            for clip in clips[start * 4:] + clips:
                pieces.append(clip)
                total += clip.shape[0]
                if total >= size * 16_000:
                    break
            mixed.append(np.concatenate(pieces)[: size * 16_000])
    order = np.random.default_rng(0).permutation(len(mixed))  # lengths interleaved
    return [mixed[i] for i in order]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def runner_baseline(artifact: Path, audio: list[np.ndarray], seconds: float, threads: int) -> list[dict]:
    from hubert_export.serve import ModelService

    service = ModelService(artifact, threads=threads)
    pieces = [p for a in audio for p in service._prepare({"audio": a[None]}).pieces]  # normalised, chunked like the server
    pieces.sort(key=len)  # the runner's best case: the whole queue known up front, batched by length
    rows = []
    for batch in BATCHES:
        groups = [pieces[i:i + batch] for i in range(0, len(pieces), batch)]
        service.max_rows = batch
        service._run(groups[0])  # warm-up
        done, took, start = 0.0, 0.0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for group in groups:
                values, mask = _padded(group, service.mask)
                tic = time.perf_counter()
                service.runner.infer({"input_values": values, **({"attention_mask": mask} if service.mask else {})})
                took += time.perf_counter() - tic
                done += sum(p.shape[0] for p in group) / 16_000
        rows.append({"batch": batch, "audio_seconds": done, "seconds": took, "throughput": done / took})
    service.close()
    return rows


def _padded(group: list[np.ndarray], mask: bool) -> tuple[np.ndarray, np.ndarray]:
    if not mask:  # equal lengths only, as the server batches a model without a mask: here, cut to the shortest
        length = min(p.shape[0] for p in group)
        return np.stack([p[:length] for p in group]), np.ones((len(group), length), np.int64)
    length = max(p.shape[0] for p in group)
    values, attention = np.zeros((len(group), length), np.float32), np.zeros((len(group), length), np.int64)
    for row, piece in enumerate(group):
        values[row, :piece.shape[0]], attention[row, :piece.shape[0]] = piece, 1
    return values, attention


def serve_run(artifact: Path, audio: list[np.ndarray], max_batch: int, seconds: float, threads: int,
              instances: int = 1) -> list[dict]:
    import tritonclient.grpc as grpcclient

    http, grpc, metrics = free_ports(3)
    log = Path(tempfile.mkdtemp(prefix="serve-bench-")) / "server.log"
    argv = [sys.executable, "-m", "hubert_export.cli", "serve", str(artifact), "--name", "asr",
            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            "--max-batch", str(max_batch), "--max-queue-delay-ms", "2", "--threads", str(max(1, threads // instances)),
            "--instances", str(instances)]
    server = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/asr/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        rows = []
        for clients in CLIENTS:
            latencies: list[float] = []
            answered = [0.0]
            lock = threading.Lock()
            barrier = threading.Barrier(clients)

            def client_loop(index: int) -> None:
                client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
                k = index
                first = audio[k % len(audio)]
                tensor = grpcclient.InferInput("audio", [1, first.shape[0]], "FP32")
                tensor.set_data_from_numpy(first[None])
                client.infer("asr", [tensor])  # warm-up
                barrier.wait()
                stop = time.perf_counter() + seconds
                while time.perf_counter() < stop:
                    waveform = audio[k % len(audio)]
                    k += clients
                    tensor = grpcclient.InferInput("audio", [1, waveform.shape[0]], "FP32")
                    tensor.set_data_from_numpy(waveform[None])
                    tic = time.perf_counter()
                    client.infer("asr", [tensor])
                    took = time.perf_counter() - tic
                    with lock:
                        latencies.append(took)
                        answered[0] += waveform.shape[0] / 16_000
                client.close()

            threads_ = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
            start = time.perf_counter()
            for t in threads_:
                t.start()
            for t in threads_:
                t.join()
            wall = time.perf_counter() - start
            p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99))
            rows.append({"clients": clients, "max_batch": max_batch, "instances": instances, "requests": len(latencies),
                         "audio_seconds": answered[0], "wall_seconds": wall, "throughput": answered[0] / wall,
                         "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "p99_over_p50": p99 / p50})
            print(f"  {clients:2d} clients, max batch {max_batch:2d}, {instances} instance(s): "
                  f"{rows[-1]['throughput']:.1f} audio s/s, "
                  f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms", flush=True)
        return rows
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def markdown(result: dict) -> str:
    meta = result["machine"]
    best = max(result["runner"], key=lambda r: r["throughput"])
    lines = [f"# hubert-export serve under load ({result['artifact_name']})", "",
             f"{meta['cpu']}, {meta['cores']} cores ({meta['isa']}; flags {', '.join(meta['cpu_flags'])}); "
             f"{result['threads']} intra-op threads; load average at start "
             f"{meta['load_average_at_start'][0]:.1f} (other work on the machine); {result['created_utc']}. Requests: {len(result['lengths_s'])} "
             f"recordings of {min(result['lengths_s']):.1f}-{max(result['lengths_s']):.1f} s "
             f"(mean {np.mean(result['lengths_s']):.1f} s), gRPC clients, {result['seconds']:g} s per cell. "
             "Throughput in seconds of audio per second.", "",
             "| subject | clients / batch | throughput (audio s/s) | vs runner's best | p50 (ms) | p99 (ms) | p99/p50 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["runner"]:
        lines.append(f"| runner direct | batch {row['batch']} | {row['throughput']:.1f} | "
                     f"{row['throughput'] / best['throughput']:.2f} | | | |")
    for row in result["server"]:
        mode = ("batching on" if row["max_batch"] > 1 else "batching off") + (
            f", {row['instances']} instances x {max(1, result['threads'] // row['instances'])} thread"
            if row["instances"] > 1 else "")
        lines.append(f"| serve, {mode} | {row['clients']} clients | {row['throughput']:.1f} | "
                     f"{row['throughput'] / best['throughput']:.2f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['p99_over_p50']:.2f} |")
    goal = result["goal"]
    lines += ["", f"Goal at 16 clients with batching: throughput >= 0.9x the runner's best "
                  f"({goal['throughput_ratio']:.2f}x: {'met' if goal['throughput_met'] else 'missed'}), "
                  f"p99 <= 2x p50 ({goal['p99_over_p50']:.2f}x: {'met' if goal['latency_met'] else 'missed'}).", ""]
    return "\n".join(lines)


def main() -> None:
    from hubert_export.build import DEFAULT_MODEL_DIR, export_artifact
    from hubert_export.recipes import default_recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, help="default: an ONNX Runtime FP32 artifact of the shipped model")
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell (default 10)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    artifact = args.artifact
    if artifact is None:
        artifact = Path(tempfile.mkdtemp(prefix="serve-bench-")) / "tiny-ctc-onnx"
        export_artifact(DEFAULT_MODEL_DIR, artifact, default_recipe("onnx"), latency_repeats=0)
    audio = recordings()
    load = list(os.getloadavg())  # other work on the machine skews every number: recorded
    print("runner direct", flush=True)
    runner = runner_baseline(artifact, audio, args.seconds, args.threads)
    for row in runner:
        print(f"  batch {row['batch']:2d}: {row['throughput']:.1f} audio s/s", flush=True)
    server = []
    for max_batch, instances in ((16, 1), (1, 1), (16, 2)):
        print(f"serve, max batch {max_batch}, {instances} instance(s)", flush=True)
        server += serve_run(artifact, audio, max_batch, args.seconds, args.threads, instances)
    best = max(r["throughput"] for r in runner)
    top = next(r for r in server if r["clients"] == 16 and r["max_batch"] > 1 and r["instances"] == 1)
    result = {
        "artifact_name": artifact.name, "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": _lscpu("Model name") or platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_at_start": load,
                    "isa": host_isa().name, "cpu_flags": cpu_flags(), "lscpu_flags": _lscpu("Flags").split()},
        "threads": args.threads, "seconds": args.seconds, "lengths_s": [a.shape[0] / 16_000 for a in audio],
        "runner": runner, "server": server,
        "goal": {"throughput_ratio": top["throughput"] / best, "throughput_met": top["throughput"] >= 0.9 * best,
                 "p99_over_p50": top["p99_over_p50"], "latency_met": top["p99_over_p50"] <= 2.0},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "serve.md").write_text(markdown(result))
    print(markdown(result))


def _lscpu(field: str) -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    line = next((line for line in text.splitlines() if line.startswith(field + ":")), "")
    return line.split(":", 1)[1].strip() if line else ""


if __name__ == "__main__":
    main()
