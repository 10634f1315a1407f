"""INT8 sensitivity, measured: quantise one layer group at a time and score it.

For each checkpoint (the trained reference model, a random-init hubert-base, ...) and each back end
(OpenVINO with NNCF post-training quantisation, ONNX Runtime static QDQ), this builds the FP32 ONNX
export once, then one INT8 model per configuration:

    fp32                       nothing quantised (the reference row)
    conv0 ... conv6            one feature-encoder convolution alone
    attention_scores, feature_projection, pos_conv, attention, feed_forward, head
    all                        every Conv and MatMul (what `--precision int8` did before issue 13)
    all-but-CONVS              every group except the named feature-encoder convs

and reports, against the FP32 model on the same back end: frame argmax agreement, relative L2 error
of the logits, and, where the clips have transcripts, greedy-CTC CER/WER and their delta from FP32;
with --latency-repeats, the median latency at --latency-shape (take those only on an idle machine,
and record the CPU flags, which the JSON does).

    python benchmarks/int8_sensitivity.py --model tests/data/reference-ctc --data tests/data/reference-speech \\
        --random-base --out benchmarks/results/int8-sensitivity
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from hubert_export.quantization import LAYER_GROUPS, group_patterns, matching  # noqa: E402

# The package's layer groups (regular expressions over ONNX node / OpenVINO layer names), less the
# union group: each row quantises one fine group.
GROUPS: dict[str, str] = {g: p for g, p in LAYER_GROUPS.items() if g != "feature_encoder"}
CONFIGS_DEFAULT = ["fp32", *GROUPS, "all", "all-but-conv0", "all-but-conv0-3", "all-but-conv0-6"]


def groups_for(config: str) -> list[str]:
    """The layer groups a configuration quantises."""
    if config == "fp32":
        return []
    if config == "all":
        return list(GROUPS)
    match = re.fullmatch(r"all-but-conv(\d)(?:-(\d))?", config)
    if match:
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        kept = {f"conv{i}" for i in range(first, last + 1)}
        return [g for g in GROUPS if g not in kept]
    if config in GROUPS:
        return [config]
    raise SystemExit(f"unknown configuration {config!r}: use fp32, all, all-but-convA[-B] or one of {', '.join(GROUPS)}")


# ------------------------------------------------------------------------------------- inputs
def load_clips(data: Path, fe) -> tuple[list[dict[str, np.ndarray]], list[str] | None]:
    from hubert_export.audio import iter_audio_files, load_audio, prepare_batch
    from hubert_export.corpus import read_transcripts

    files = iter_audio_files(data)
    try:
        references = read_transcripts(data)
    except Exception:
        references = {}
    inputs = [prepare_batch([load_audio(f, fe.sampling_rate)], fe) for f in files]
    texts = [references.get(f.stem) for f in files]
    return inputs, (texts if all(t is not None for t in texts) else None)


def random_base_checkpoint(directory: Path) -> Path:
    """A random-init hubert-base HubertForCTC (vocab 32), written as a Hugging Face checkpoint."""
    import torch

    from hubert_export.model import HubertConfig, HubertForCTC

    torch.manual_seed(0)
    HubertForCTC(HubertConfig(vocab_size=32)).save_pretrained(directory)
    return directory


def export_fp32(model_dir: Path, out: Path) -> Path:
    """The product's own FP32 ONNX export (the exporter's graph, checked by the parity gate)."""
    subprocess.run([sys.executable, "-m", "hubert_export.cli", "--target", "onnx", "--model", str(model_dir),
                    "--output", str(out), "--latency-repeats", "0", "--quiet", "--overwrite"], check=True)
    return out / "model.onnx"


# ---------------------------------------------------------------------------------- back ends
def openvino_models(onnx_path: Path, calibration: list[dict[str, np.ndarray]], threads: int, scratch: Path):
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    nncf.set_log_level(40)
    # As the product's default recipe: SmoothQuant off (calibration.smooth_quant_alpha -1).
    advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    core = ov.Core()
    fp32 = ov.convert_model(str(onnx_path))
    names = [i.get_any_name() for i in fp32.inputs]
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads),
              "CPU_RUNTIME_CACHE_CAPACITY": "0"}

    names_of_ops = [op.get_friendly_name() for op in fp32.get_ordered_ops()]

    def compiled_runner(path: Path):
        compiled = core.compile_model(str(path), "CPU", config)
        return lambda x: compiled({n: x[n] for n in names})[compiled.output(0)]

    def build(groups: list[str]):
        """(run, open_again): a runner now, and a way to reopen the same model from disk later."""
        model = fp32
        if groups:
            # Everything outside the groups is ignored by name, so nothing else gets a FakeQuantize.
            quantized = set(matching(names_of_ops, group_patterns(groups)))
            ignored = [n for n in names_of_ops if n not in quantized]
            model = nncf.quantize(fp32, nncf.Dataset(calibration, lambda x: {n: x[n] for n in names}),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                                  advanced_parameters=advanced,
                                  ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
        path = scratch / f"ov-{'-'.join(groups)[:80] or 'fp32'}.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
        return compiled_runner(path), lambda: compiled_runner(path)

    return build


def onnxruntime_models(onnx_path: Path, calibration: list[dict[str, np.ndarray]], threads: int, scratch: Path):
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    nodes = [n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node
             if n.op_type in ("Conv", "MatMul")]

    def session(path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return lambda x: sess.run(None, {n: x[n] for n in names})[0]

    def build(groups: list[str]):
        if not groups:
            return session(onnx_path), lambda: session(onnx_path)
        names = set(i.name for i in ort.InferenceSession(str(prepared)).get_inputs())

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(calibration)

            def get_next(self):
                item = next(self.items, None)
                return None if item is None else {k: v for k, v in item.items() if k in names}

        target = scratch / f"int8-{'-'.join(groups)[:80]}.onnx"
        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=["MatMul", "Conv"],
                        nodes_to_quantize=matching(nodes, group_patterns(groups)),
                        extra_options={"CalibTensorRangeSymmetric": False, "MatMulConstBOnly": True})
        return session(target), lambda: session(target)

    return build


# ------------------------------------------------------------------------------------- scoring
def score(run, reference: list[np.ndarray], inputs: list[dict[str, np.ndarray]], texts: list[str] | None,
          tokenizer) -> dict[str, float]:
    from hubert_export.metrics import character_error_rate, word_error_rate

    outputs = [np.asarray(run(x), dtype=np.float32) for x in inputs]
    agree = np.concatenate([(r.argmax(-1) == o.argmax(-1)).ravel() for r, o in zip(reference, outputs)])
    num = sum(float(np.sum((r.astype(np.float64) - o) ** 2)) for r, o in zip(reference, outputs))
    den = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)
    result = {"argmax_agreement": float(agree.mean()), "relative_l2_error": float(np.sqrt(num / max(den, 1e-30)))}
    if texts is not None and tokenizer is not None:
        hyps = [tokenizer.greedy_decode(o)[0] for o in outputs]
        result["cer"] = character_error_rate(hyps, texts)
        result["wer"] = word_error_rate(hyps, texts)
    return result


def latency(run, samples: int, repeats: int) -> float:
    x = {"input_values": np.random.default_rng(0).standard_normal((1, samples)).astype(np.float32),
         "attention_mask": np.ones((1, samples), dtype=np.int64)}
    run(x)
    run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", default=[], help="checkpoint directory (repeatable)")
    parser.add_argument("--random-base", action="store_true", help="also a random-init hubert-base HubertForCTC")
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "reference-speech",
                        help="held-out clips (with transcripts: CER/WER are reported)")
    parser.add_argument("--calibration", type=Path, default=REPO / "hubert_export" / "data" / "calibration")
    parser.add_argument("--backends", default="openvino,onnxruntime")
    parser.add_argument("--configs", default=",".join(CONFIGS_DEFAULT))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-repeats", type=int, default=0, help="0: no latency (the default on a busy machine)")
    parser.add_argument("--latency-samples", type=int, default=160000)
    parser.add_argument("--latency-gate", type=Path, help="wait until this file exists before timing (builds first)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "int8-sensitivity")
    args = parser.parse_args(argv)

    from hubert_export.audio import FeatureExtractorConfig
    from hubert_export.tokenizer import CTCTokenizer

    rows: list[dict] = []
    openers: list[Callable[[], Callable]] = []
    with tempfile.TemporaryDirectory(prefix="int8-sensitivity-") as tmp_name:
        tmp = Path(tmp_name)
        models = list(args.model)
        if args.random_base:
            models.append(random_base_checkpoint(tmp / "random-hubert-base"))
        for model_dir in models:
            label = model_dir.name
            fe = FeatureExtractorConfig.from_dir(model_dir)
            tokenizer = CTCTokenizer.from_dir(model_dir) if (model_dir / "vocab.json").is_file() else None
            inputs, texts = load_clips(args.data, fe)
            calibration, _ = load_clips(args.calibration, fe)
            onnx_path = export_fp32(model_dir, tmp / f"{label}-fp32")
            for backend in args.backends.split(","):
                scratch = tmp / f"{label}-{backend}"
                scratch.mkdir()
                build = (openvino_models(onnx_path, calibration, args.threads, scratch) if backend == "openvino"
                         else onnxruntime_models(onnx_path, calibration, args.threads, scratch))
                reference = None
                base_scores: dict[str, float] = {}
                for config in args.configs.split(","):
                    start = time.perf_counter()
                    run, reopen = build(groups_for(config))
                    build_seconds = time.perf_counter() - start
                    if reference is None:  # fp32 first: every other row is measured against it
                        reference = [np.asarray(run(x), dtype=np.float32) for x in inputs]
                    row = {"model": label, "backend": backend, "config": config, "groups": groups_for(config),
                           "build_seconds": round(build_seconds, 1),
                           **score(run, reference, inputs, texts, tokenizer)}
                    if config == "fp32":
                        base_scores = row
                    for metric in ("cer", "wer"):
                        if metric in row and metric in base_scores:
                            row[f"{metric}_delta"] = row[metric] - base_scores[metric]
                    rows.append(row)
                    openers.append(reopen)
                    del run
                    print(json.dumps(row), flush=True)
        if args.latency_repeats:
            # Timed after every build, one model at a time reopened from disk, so that the builds
            # can run on a busy machine and only this part needs it idle (--latency-gate).
            if args.latency_gate is not None:
                print(f"waiting for {args.latency_gate} before timing", flush=True)
                while not args.latency_gate.exists():
                    time.sleep(5)
            for row, reopen in zip(rows, openers):
                row["latency_seconds"] = latency(reopen(), args.latency_samples, args.latency_repeats)
                print(f"{row['model']} {row['backend']} {row['config']}: {row['latency_seconds']:.3f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(), "threads": args.threads,
            "data": str(args.data), "calibration": str(args.calibration),
            "latency_samples": args.latency_samples if args.latency_repeats else None,
            "latency_repeats": args.latency_repeats}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, meta))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


def markdown(rows: list[dict], meta: dict) -> str:
    def fmt(value, pct: bool = False) -> str:
        if value is None:
            return "—"
        return f"{value:+.2%}" if pct == "delta" else (f"{value:.2%}" if pct else f"{value:.3g}")

    lines = [f"CPU flags: {', '.join(meta['cpu_flags'])}; {meta['threads']} threads; clips: {meta['data']}", "",
             "| model | back end | quantised | argmax agreement | rel. L2 | CER | ΔCER | latency (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['config']} | {fmt(r['argmax_agreement'])} | "
                     f"{fmt(r['relative_l2_error'])} | {fmt(r.get('cer'), True)} | {fmt(r.get('cer_delta'), 'delta')} | "
                     f"{fmt(r.get('latency_seconds'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
