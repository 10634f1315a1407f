"""Do our artifacts load and compute the same logits in Hugging Face Optimum?

    .venv-optimum/bin/python benchmarks/optimum_interop.py [--models tiny,base] [--threads 1]
        [--work DIR] [--out benchmarks/results]

Runs in a virtual environment of its own (Optimum pins transformers below what this project tests
against; see benchmarks/README.md for the set-up, `benchmarks/optimum-requirements.txt` for the
versions). For each checkpoint, the shipped tiny CTC model and a random-init HubertForCTC in
hubert-base's layout (written by transformers' `save_pretrained` with a Wav2Vec2 processor), it
builds artifacts with our CLI and then, on the held-out clips of tests/data/speech, compares:

  optimum  the artifact directory loaded by Optimum (`ORTModelForCTC.from_pretrained(artifact)`,
           `OVModelForCTC.from_pretrained(artifact)`) fed by the Wav2Vec2Processor read from the
           same directory, as Optimum's documentation does it;
  ours     the artifact through our runner (`hubert_export.backends`), fed by our front end;
  eager    transformers' HubertForCTC from the checkpoint, float32, fed what the Optimum model got.

Cases: every clip alone (batch 1) and one padded batch of four clips (valid frames compared).
Gate (exit 1 when it fails), for each pairing Optimum is expected to run: max abs logit difference
<= 1e-4 between each two of optimum, ours and eager; greedy transcripts identical (the processor's
batch_decode against our tokenizer); the artifact unchanged (same files and hashes). Recorded as
found, not gated: OVModelForCTC with its default compile config (OpenVINO's CPU plugin computes in
bfloat16 on CPUs that have it; the JSON says whether this one does), and ORTModelForCTC on an
artifact with an attention_mask input (it feeds input_values only). Writes optimum-interop.json
and optimum-interop.md to --out; exit 0 when every gated pairing passes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "tests" / "data" / "speech"
TINY = REPO / "hubert_export" / "data" / "tiny-ctc"
FP32_TOLERANCE = 1e-4
PADDED_BATCH = 4
# facebook/hubert-base-ls960's preprocessor_config.json: normalised input, no attention mask.
BASE_FEATURE_EXTRACTOR = dict(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                              return_attention_mask=False)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "optimum", "optimum-onnx", "optimum-intel", "onnxruntime", "openvino",
                 "nncf", "huggingface_hub", "hubert-export"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def cpu_has_bf16() -> bool | None:
    try:
        return any("avx512_bf16" in line or "amx_bf16" in line for line in open("/proc/cpuinfo"))
    except OSError:
        return None


def base_checkpoint(work: Path) -> Path:
    """A random-init HubertForCTC in hubert-base's layout with a processor (the tiny model's vocabulary)."""
    import transformers

    path = work / "hubert-base-random-ctc"
    if (path / "preprocessor_config.json").is_file():
        return path
    torch.manual_seed(0)
    transformers.HubertForCTC(transformers.HubertConfig(vocab_size=32)).eval().save_pretrained(path)
    processor = transformers.Wav2Vec2Processor(
        feature_extractor=transformers.Wav2Vec2FeatureExtractor(**BASE_FEATURE_EXTRACTOR),
        tokenizer=transformers.Wav2Vec2CTCTokenizer(str(TINY / "vocab.json")))
    processor.save_pretrained(path)
    return path


def build(checkpoint: Path, out: Path, target: str, *extra: str) -> Path:
    """Our CLI, as a user runs it (the FP32 parity gate included); returns the artifact directory."""
    command = [sys.executable, "-m", "hubert_export.cli", "--target", target, "--model", str(checkpoint),
               "--output", str(out), "--overwrite", "--latency-repeats", "0", "--quiet", *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"build failed ({' '.join(command)}):\n{result.stdout}{result.stderr}")
    return out


def cases(clips: list[Path]) -> list[tuple[str, list[np.ndarray]]]:
    from hubert_export.audio import load_audio

    waves = {clip.stem: load_audio(clip, 16000) for clip in clips}
    out = [(name, [wave]) for name, wave in waves.items()]
    # Distinct lengths, so that padding and (where the artifact takes one) the mask matter.
    by_length = sorted(waves, key=lambda n: waves[n].shape[0])
    pick = [by_length[round(i * (len(by_length) - 1) / (PADDED_BATCH - 1))] for i in range(PADDED_BATCH)]
    out.append(("padded-" + "+".join(pick), [waves[n] for n in pick]))
    return out


class Ours:
    """Our runner on the artifact, fed by our front end with the artifact's preprocessor config."""

    def __init__(self, artifact_dir: Path, threads: int) -> None:
        from hubert_export.artifact import Artifact
        from hubert_export.audio import FeatureExtractorConfig
        from hubert_export.backends import get_backend

        artifact = Artifact.open(artifact_dir)
        artifact.verify_files()
        self.fe = FeatureExtractorConfig.from_dir(artifact_dir)
        self.runner = get_backend(artifact.target).load(artifact, threads=threads).activate()

    def __call__(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from hubert_export.audio import prepare_batch

        batch = prepare_batch(waves, self.fe)
        # An artifact built without a mask input takes input_values only (as Optimum feeds it).
        return self.runner.infer({k: v for k, v in batch.items() if k in self.runner.input_names})["logits"], \
            batch["input_values"]


def compare(got: np.ndarray, reference: np.ndarray, frames: list[int]) -> tuple[float, float]:
    """Max abs difference and frame argmax agreement over the valid frames of each row."""
    worst, agree, total = 0.0, 0, 0
    for row, n in enumerate(frames):
        a, b = got[row, :n], reference[row, :n]
        worst = max(worst, float(np.abs(a - b).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += n
    return worst, agree / total


def run_pairing(label: str, loader, artifact_dir: Path, checkpoint: Path, all_cases, threads: int,
                gated: bool, note: str = "") -> dict[str, Any]:
    import transformers

    from hubert_export.model.config import HubertConfig

    row: dict[str, Any] = {"pairing": label, "artifact": artifact_dir.name, "gated": gated, "note": note}
    files_before = sorted(p.name for p in artifact_dir.iterdir())
    processor = transformers.AutoProcessor.from_pretrained(artifact_dir)
    row["processor"] = type(processor).__name__
    try:
        model = loader(artifact_dir)
        row["loads"] = True
    except Exception as exc:  # noqa: BLE001 - a refusal is a result here
        row.update(loads=False, runs=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        return row
    eager = transformers.HubertForCTC.from_pretrained(checkpoint).eval()
    ours = Ours(artifact_dir, threads)
    config = HubertConfig.from_pretrained(artifact_dir)
    artifact_inputs = set(ours.runner.input_names)
    worst = {"optimum_vs_eager": 0.0, "optimum_vs_ours": 0.0, "ours_vs_eager": 0.0, "input_values": 0.0}
    agreement = {"optimum_vs_eager": 1.0, "optimum_vs_ours": 1.0}
    same_text, texts = 0, 0
    for name, waves in all_cases:
        features = processor(waves, sampling_rate=16000, return_tensors="pt", padding=True)
        try:
            logits = model(**features).logits
        except Exception as exc:  # noqa: BLE001
            row.update(runs=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}", failed_case=name)
            return row
        logits = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
        with torch.no_grad():
            fed = {k: v for k, v in features.items() if k in artifact_inputs}
            expected = eager(**fed).logits.numpy()
        mine, my_input_values = ours(waves)
        frames = [config.num_frames(w.shape[0]) for w in waves]
        worst["input_values"] = max(worst["input_values"], float(np.abs(
            my_input_values - features["input_values"].numpy()).max()))
        for key, (a, b) in {"optimum_vs_eager": (logits, expected), "optimum_vs_ours": (logits, mine),
                            "ours_vs_eager": (mine, expected)}.items():
            diff, agree = compare(a, b, frames)
            worst[key] = max(worst[key], diff)
            if key in agreement:
                agreement[key] = min(agreement[key], agree)
        theirs = processor.batch_decode([logits[i, :n].argmax(-1) for i, n in enumerate(frames)])
        ours_text = ours_decode(artifact_dir, mine, frames)
        same_text += sum(a == b for a, b in zip(theirs, ours_text))
        texts += len(waves)
    ours.runner.close()
    # Optimum only reads the artifact: the same files, each with the hash its manifest records.
    from hubert_export.artifact import Artifact
    from hubert_export.errors import HubertExportError

    try:
        Artifact.open(artifact_dir).verify_files()
        row["artifact_unchanged"] = sorted(p.name for p in artifact_dir.iterdir()) == files_before
    except HubertExportError:
        row["artifact_unchanged"] = False
    row.update(runs=True, cases=len(all_cases), decodes=texts, transcripts_identical=same_text,
               max_abs_diff={k: float(f"{v:.3g}") for k, v in worst.items()},
               min_argmax_agreement={k: round(v, 4) for k, v in agreement.items()})
    row["passed"] = (max(worst["optimum_vs_eager"], worst["optimum_vs_ours"], worst["ours_vs_eager"]) <= FP32_TOLERANCE
                     and same_text == texts and row["artifact_unchanged"]) if gated else None
    return row


def ours_decode(artifact_dir: Path, logits: np.ndarray, frames: list[int]) -> list[str]:
    from hubert_export.tokenizer import CTCTokenizer

    return CTCTokenizer.from_dir(artifact_dir).greedy_decode(logits, frames)


def pairings(name: str, checkpoint: Path, work: Path, threads: int, all_cases) -> list[dict[str, Any]]:
    from optimum.intel import OVModelForCTC

    try:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCTC
    except ImportError as exc:  # an optimum-intel-only environment
        ORTModelForCTC, ort_missing = None, str(exc)

    rows = []
    onnx_dir = build(checkpoint, work / f"{name}-onnx", "onnx")
    has_mask = any(i["name"] == "attention_mask"
                   for i in json.loads((onnx_dir / "manifest.json").read_text())["io"]["inputs"])
    if ORTModelForCTC is not None:
        def ort_loader(path: Path):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            return ORTModelForCTC.from_pretrained(path, session_options=options)

        if has_mask:
            rows.append(run_pairing("ORTModelForCTC", ort_loader, onnx_dir, checkpoint, all_cases, threads,
                                    gated=False, note="default build: attention_mask input"))
            nomask_dir = build(
                checkpoint, work / f"{name}-onnx-nomask", "onnx", "--attention-mask", "false")
            rows.append(run_pairing("ORTModelForCTC", ort_loader, nomask_dir, checkpoint, all_cases, threads,
                                    gated=True, note="--attention-mask false"))
        else:
            rows.append(run_pairing("ORTModelForCTC", ort_loader, onnx_dir, checkpoint, all_cases, threads,
                                    gated=True, note="default build"))
    else:
        rows.append({"pairing": "ORTModelForCTC", "artifact": onnx_dir.name, "loads": False, "runs": False,
                     "gated": False, "error": f"optimum.onnxruntime not installed: {ort_missing}"})

    ov_dir = build(checkpoint, work / f"{name}-openvino", "openvino")
    compile_config = dict(json.loads((ov_dir / "manifest.json").read_text())["backend"]["compile"],
                          INFERENCE_NUM_THREADS=str(threads))
    rows.append(run_pairing(
        "OVModelForCTC", lambda p: OVModelForCTC.from_pretrained(p, ov_config=compile_config), ov_dir, checkpoint,
        all_cases, threads, gated=True, note="ov_config: the manifest's backend.compile (f32 inference precision)"))
    rows.append(run_pairing(
        "OVModelForCTC", lambda p: OVModelForCTC.from_pretrained(p, ov_config={"INFERENCE_NUM_THREADS": str(threads)}),
        ov_dir, checkpoint, all_cases, threads, gated=False, note="default ov_config"))
    for row in rows:
        row["model"] = name
    return rows


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [
        "# Optimum interoperability",
        "",
        f"`benchmarks/optimum_interop.py`: optimum {v.get('optimum')}, optimum-onnx {v.get('optimum-onnx', 'absent')}, "
        f"optimum-intel {v.get('optimum-intel')}, transformers {v.get('transformers')}, torch {v.get('torch')}, "
        f"onnxruntime {v.get('onnxruntime')}, openvino {v.get('openvino')}. CPU with bfloat16: {result['cpu_bf16']}. "
        f"{result['utterances']} clips of tests/data/speech, each alone and one padded batch of {PADDED_BATCH}; "
        f"max abs logit difference over valid frames; gate {FP32_TOLERANCE:g} and identical transcripts.",
        "",
        "| model | artifact | Optimum class, preprocessing from the artifact | runs | max abs vs eager | "
        "max abs vs our runner | our runner vs eager | transcripts identical | gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        who = f"`{r['pairing']}` ({r['note']})" if r.get("note") else f"`{r['pairing']}`"
        if r.get("runs"):
            d = r["max_abs_diff"]
            cells = ["yes", f"{d['optimum_vs_eager']:.2g}", f"{d['optimum_vs_ours']:.2g}", f"{d['ours_vs_eager']:.2g}",
                     f"{r['transcripts_identical']}/{r['decodes']}"]
        else:
            cells = [f"{'loads, ' if r.get('loads') else ''}fails: {r.get('error', '')}", "", "", "", ""]
        gate = {True: "PASS", False: "FAIL", None: "not gated"}[r.get("passed") if r.get("gated") else None]
        lines.append(f"| {r['model']} | {r['artifact']} | {who} | " + " | ".join(cells) + f" | {gate} |")
    lines += ["", f"Preprocessing: Wav2Vec2Processor from the artifact against our front end, max abs difference of "
                  f"input_values: " + ", ".join(f"{m} {x:.2g}" for m, x in result["input_values_max_abs"].items()) + ".",
              "", f"Verdict: {'PASS' if result['passed'] else 'FAIL'}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,base", help="tiny (the shipped model), base (random hubert-base)")
    parser.add_argument("--threads", type=int, default=1, help="threads for every runtime and torch (default 1)")
    parser.add_argument("--clips", type=int, default=0, help="use only the first N clips (default: all)")
    parser.add_argument("--work", type=Path, help="where checkpoints and artifacts go (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="write optimum-interop.json and optimum-interop.md here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # ORTModelForCTC warns on every call that it drops the processor's attention_mask (recorded per row instead).
    logging.getLogger("optimum.onnxruntime").setLevel(logging.ERROR)
    clips = sorted(SPEECH.glob("*.flac"))[: args.clips or None]
    all_cases = cases(clips)
    with tempfile.TemporaryDirectory(prefix="optimum-interop-") as temp:
        work = args.work or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in args.models.split(","):
            checkpoint = {"tiny": lambda: TINY, "base": lambda: base_checkpoint(work)}[name]()
            print(f"{name}: building artifacts from {checkpoint}", file=sys.stderr)
            model_rows = pairings(name, checkpoint, work, args.threads, all_cases)
            rows += model_rows
            for r in model_rows:
                print(f"  {r['pairing']} on {r['artifact']} ({r.get('note', '')}): "
                      f"{r.get('max_abs_diff') or r.get('error')}", file=sys.stderr)
    gated = [r for r in rows if r.get("gated")]
    result = {
        "schema_version": 1,
        "versions": versions(),
        "cpu_bf16": cpu_has_bf16(),
        "tolerance": {"max_abs_diff": FP32_TOLERANCE, "transcripts": "identical"},
        "clips": [c.name for c in clips],
        "utterances": len(clips),
        "input_values_max_abs": {m: max(r["max_abs_diff"]["input_values"] for r in rows if r["model"] == m and r.get("runs"))
                                 for m in dict.fromkeys(r["model"] for r in rows if r.get("runs"))},
        "rows": rows,
        "passed": bool(gated) and all(r.get("passed") for r in gated),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optimum-interop.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "optimum-interop.md").write_text(markdown(result))
    print(markdown(result))
    # One closing line in the form CI logs are read by: gated rows passed/failed, the rest skipped.
    failed = sum(1 for r in gated if not r.get("passed"))
    print(f"optimum_interop: {len(gated) - failed} passed, {failed} failed, {len(rows) - len(gated)} skipped")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
