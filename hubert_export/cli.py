"""The command line: parse, call one library function, print.

    hubert-export --target onnx|openvino|tensorrt|litert|executorch [--model DIR] [--output DIR] ...   build an artifact
    hubert-export build --matrix RECIPE... [--model DIR] [--ray [ADDRESS]]            several, each gated
    hubert-export check ARTIFACT_DIR [--data DIR] [--reference DIR] [--junit FILE]    the CI gate
    hubert-export check ARTIFACT_DIR... --data CORPUS --ray [ADDRESS]                 the same over a corpus, on Ray
    hubert-export check ARTIFACT_DIR --golden                                         the same, no torch
    hubert-export transcribe ARTIFACT_OR_CHECKPOINT AUDIO...                          speech to text
    hubert-export bench ARTIFACT_DIR... [--lengths 1,5,10] [--batch 1,4]              latency and memory
    hubert-export import CKPT.pt OUT_DIR [--dict dict.ltr.txt]                        a fairseq checkpoint, imported
    hubert-export serve ARTIFACT_DIR... [--http-port 8000] [--max-batch 16]            Triton (KServe v2) server
    hubert-export serve --model-repository OUT ARTIFACT_DIR...                        a Triton model repository

Exit codes: 0 success, 1 a parity threshold failed, 2 bad input (one line on stderr; the traceback
only with --debug), 3 an internal error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from hubert_export.errors import EXIT_INTERNAL, EXIT_OK, EXIT_PARITY_FAILED, HubertExportError, InternalError
from hubert_export.isa import IsaName
from hubert_export.targets import TARGETS

SUBCOMMANDS = ("build", "check", "transcribe", "bench", "serve", "import")  # no command: build


class ProgressHandler(logging.Handler):
    """Timestamped step lines on stderr (`[  12.3s] message`): long builds show where they are.
    The clock starts at the first line, so the command's imports do not count."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.start: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        # sys.stderr looked up per line: whoever replaced it since (a test's capture) gets the line.
        print(f"[{time.perf_counter() - self.start:6.1f}s] {record.getMessage()}", file=sys.stderr, flush=True)


def _shape(text: str) -> tuple[int, int]:
    try:
        batch, samples = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not BATCH,SAMPLES (e.g. 1,160000)") from None
    return batch, samples


def _repeats(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of runs (0 or more; 0 skips the measurement)")
    return value


def _positive_list(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive numbers")
        return values
    return parse


def _latency_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--latency-repeats", type=_repeats, default=3, metavar="N",
                        help="after the parity check, time N runs at the recipe's opt shape and report the median "
                             "(default 3, after one warm-up run; 0 skips it: a faster gate)")
    return parent


def _positive_int(noun: str) -> Callable[[str], int]:
    """An argparse type for a whole number of at least 1, its error naming what the number counts."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {noun}")
        return value
    return parse


_count = _positive_int("number of utterances")
_positive = _positive_int("whole number")


def _corpus(parser: argparse.ArgumentParser) -> None:
    """The options of --data: which utterances of a corpus, which manifest columns, how it is scored."""
    group = parser.add_argument_group("--data corpus")
    group.add_argument("--limit", type=_count, metavar="N", help="check only the first N utterances of --data")
    group.add_argument("--sample", type=_count, metavar="N",
                       help="check N utterances of --data drawn at random with --seed (deterministic; before --limit)")
    group.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --sample (default 0)")
    group.add_argument("--audio-column", metavar="NAME",
                       help="audio path column of a CSV/TSV/JSONL manifest or a datasets folder (default: path, "
                            "audio_filepath, audio, ...)")
    group.add_argument("--text-column", metavar="NAME",
                       help="transcript column (default: sentence, text, transcript, ...)")
    group.add_argument("--no-normalize", dest="normalize", action="store_false",
                       help="score CER/WER against the reference transcripts as written, without folding case and "
                            "removing characters the vocabulary lacks")


def _corpus_options(args: argparse.Namespace):
    from hubert_export.corpus import CorpusOptions

    return CorpusOptions(audio_column=args.audio_column, text_column=args.text_column, limit=args.limit,
                         sample=args.sample, seed=args.seed)


def _ray_option(group: argparse._ArgumentGroup, what: str) -> None:
    group.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help=f"{what} on Ray (pip install 'hubert-export[ray]'): alone, a new local Ray; with "
                            "ADDRESS (HOST:PORT, ray://HOST:PORT or auto), that cluster")
    group.add_argument("--ray-files", choices=["store", "shared"], default="store",
                       help="how the checkpoint and artifacts (and, for check, the audio) reach the workers: "
                            "store, through Ray's object store (default); shared, as paths every node mounts")


def _common_parent() -> argparse.ArgumentParser:
    """The options every command shares (parsers list it last among their parents)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parent.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubert-export", parents=[_latency_parent(), _common_parent()],
        description="Export a HuBERT checkpoint to a verified ONNX Runtime, OpenVINO or TensorRT artifact. "
                    "Other commands: check, transcribe, bench (hubert-export COMMAND --help).",
    )
    parser.add_argument("--target", choices=list(TARGETS),
                        help="back end to build for (required unless --recipe names one)")
    parser.add_argument("--model", type=Path,
                        help="checkpoint directory (config.json + model.safetensors), or a model id (owner/name) in "
                             "the local Hugging Face cache; default: the small CTC model shipped with hubert-export")
    parser.add_argument("--output", type=Path,
                        help="artifact directory to write; default: artifacts/<model>-<target>-<precision>")
    parser.add_argument("--recipe", type=Path, help="a recipe file (see recipes/); flags override its values")
    parser.add_argument("--task", choices=["feature-extraction", "ctc", "sequence-classification"],
                        help="what the artifact outputs; default: inferred from the checkpoint's architecture")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                        help="default: fp32 (onnx, openvino), fp16 (tensorrt)")
    parser.add_argument("--opset", type=int, help="ONNX opset (18..21, default 18)")
    parser.add_argument("--output-hidden-states", action="store_true", default=None,
                        help="feature-extraction: also output every hidden state, (batch, layers+1, frames, hidden)")
    parser.add_argument("--attention-mask", choices=["auto", "true", "false"],
                        help="export an attention_mask input: auto (default) when the checkpoint's feature extractor "
                             "returns one; false for runtimes that feed input_values only (Optimum's ORTModelForCTC)")
    parser.add_argument("--min-shape", type=_shape, metavar="B,SAMPLES", help="smallest input (default 1,400)")
    parser.add_argument("--opt-shape", type=_shape, metavar="B,SAMPLES",
                        help="the shape to optimise for (default 1,160000: 10 s)")
    parser.add_argument("--max-shape", type=_shape, metavar="B,SAMPLES", help="largest input (default 16,960000: 60 s)")
    parser.add_argument("--calibration-data", type=Path, metavar="AUDIO_DIR",
                        help="INT8: recordings to calibrate on (default: a built-in set)")
    parser.add_argument("--max-accuracy-drop", type=float, metavar="X",
                        help="OpenVINO INT8: accuracy-controlled quantisation keeping the metric drop under X")
    parser.add_argument("--deployment-isa", type=str.lower, choices=list(get_args(IsaName)), metavar="ISA",
                        help="INT8: the CPU the artifact is for, which decides INT8 arithmetic (default: this "
                             "machine's): " + ", ".join(get_args(IsaName)))
    parser.add_argument("--data", type=Path, metavar="CORPUS",
                        help="also check parity on these recordings: a folder (transcripts.tsv, LibriSpeech, Kaldi or "
                             "STEM.txt transcripts add CER/WER), a CSV/TSV/JSONL manifest, or a datasets folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --output")
    _corpus(parser)
    matrix = parser.add_argument_group("build matrix")
    matrix.add_argument("--matrix", nargs="+", type=Path, metavar="RECIPE",
                        help="build one artifact per recipe from --model, each gated by its parity check, and "
                             "print a summary table; artifacts go to --output/<recipe name> (default "
                             "artifacts/<model>-<recipe name>)")
    _ray_option(matrix, "build the --matrix recipes in parallel, one task each")
    matrix.add_argument("--cpus-per-build", type=float, default=1.0, metavar="N",
                        help="Ray CPUs (and intra-op threads) per build task (default 1); TensorRT builds also take "
                             "one GPU")
    return parser


def check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubert-export check", parents=[_latency_parent(), _common_parent()],
        description="Re-run an artifact's parity check against its source checkpoint (or, with --golden, against "
                    "the reference outputs stored at build time). Exit 0 when every threshold holds, 1 when one "
                    "fails, 2 on bad input, 3 on an internal error: the CI accuracy gate. The artifact is only "
                    "read; the reports go to --report-dir.",
    )
    parser.add_argument("artifacts", type=Path, nargs="+", metavar="ARTIFACT",
                        help="artifact directory written by hubert-export (several with --ray)")
    parser.add_argument("--golden", action="store_true",
                        help="compare with the eager outputs stored in the artifact at build time: needs neither "
                             "torch nor the checkpoint, only the back end's runtime (for the deployment target)")
    parser.add_argument("--report-dir", type=Path, metavar="DIR",
                        help="write parity.json and parity.md here (default: a new temporary directory, printed)")
    parser.add_argument("--data", type=Path, metavar="CORPUS",
                        help="also check on these recordings (a folder, a CSV/TSV/JSONL manifest or a datasets folder)")
    parser.add_argument("--reference", type=Path, metavar="CHECKPOINT_DIR",
                        help="the source checkpoint (a directory or a cached model id), when it is not where the "
                             "manifest says (its hash must match)")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write the results as JUnit XML")
    _corpus(parser)
    long_form = parser.add_argument_group("long recordings, checked as transcribe runs them")
    long_form.add_argument("--chunk-seconds", type=float, metavar="S",
                           help="run each --data utterance whole in S-second chunks, stitched as transcribe does, "
                                "and gate it against the eager model in the same chunks and on the whole utterance")
    long_form.add_argument("--overlap-seconds", type=float, metavar="O",
                           help="overlap of the chunks (default: as transcribe, a quarter of the chunk up to 2 s)")
    ray = parser.add_argument_group("corpus check on Ray")
    _ray_option(ray, "check the --data corpus")
    ray.add_argument("--workers", type=_positive, metavar="N",
                     help="actors per artifact pool (default 1)")
    ray.add_argument("--reference-workers", type=_positive, metavar="N",
                     help="actors of the eager model's pool (default: --workers); it is often the slowest stage")
    ray.add_argument("--batch-size", type=_positive, metavar="N",
                     help="utterances per batch (default 1: the figures of the check without --ray; more: padded "
                          "batches, with the attention mask where the model takes one)")
    ray.add_argument("--no-bucketing", dest="bucketing", action="store_false",
                     help="batch utterances in corpus order instead of grouping similar lengths")
    ray.add_argument("--results-dir", type=Path, metavar="DIR",
                     help="per-utterance results, written as they complete; a rerun with the same DIR resumes "
                          "(default: a new temporary directory)")
    ray.add_argument("--cpus-per-worker", type=float, metavar="N",
                     help="Ray CPUs (and intra-op threads) per actor (default 1)")
    ray.add_argument("--gpus-per-worker", type=float, metavar="N",
                     help="Ray GPUs per artifact actor (default 1 for TensorRT, else 0)")
    return parser


def transcribe_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubert-export transcribe", parents=[_common_parent()],
        description="Greedy CTC transcription of recordings of any length (read and run in overlapping chunks) "
                    "with an artifact or a checkpoint. One line per file on stdout: the text, or FILE<TAB>TEXT "
                    "when several files are given.",
    )
    parser.add_argument("model", type=Path, metavar="ARTIFACT_OR_CHECKPOINT",
                        help="a CTC artifact directory written by hubert-export, a CTC checkpoint directory, or "
                             "a model id (owner/name) in the local Hugging Face cache")
    parser.add_argument("audio", type=Path, nargs="+", metavar="AUDIO",
                        help="WAV/FLAC/OGG recordings, any sampling rate and channel count")
    # The defaults live in hubert_export.transcribe, which this module does not import before it runs.
    parser.add_argument("--chunk-seconds", type=float,
                        help="longest piece of audio run at once (default 30, chosen in docs/long-form.md); bounds memory")
    parser.add_argument("--overlap-seconds", type=float,
                        help="overlap of consecutive chunks (default 2, at most a quarter of the chunk); half of it "
                             "is dropped at each seam")
    parser.add_argument("--batch-size", type=int, default=1, help="chunks per inference call (default 1)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {file, text, seconds, chunks, frames} instead")
    return parser


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubert-export bench", parents=[_common_parent()],
        description="Latency (p50/p90/p99), throughput, peak memory, load time, size, FLOPs and share of the "
                    "matmul ceiling of built artifacts, measured round-robin in one process.",
    )
    parser.add_argument("artifacts", type=Path, nargs="*", metavar="ARTIFACT_DIR", help="artifact directories")
    parser.add_argument("--lengths", type=_positive_list(float), default=[1, 5, 10, 30], metavar="S,S,...",
                        help="audio lengths in seconds (default 1,5,10,30)")
    parser.add_argument("--batch", type=_positive_list(int), default=[1], metavar="B,B,...",
                        help="batch sizes (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per subject and shape (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: each runtime's own default)")
    parser.add_argument("--output", type=Path, metavar="DIR", help="write bench.json and bench.md here")
    parser.add_argument("--eager", type=Path, metavar="CHECKPOINT",
                        help="also measure the eager PyTorch model of this checkpoint (a directory or a cached "
                             "model id), and use it as the baseline")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--ceiling-size", type=int, default=4096, metavar="N",
                        help="matrix size of the float32 matmul that measures the ceiling (default 4096)")
    return parser


def _recipe_from_args(args: argparse.Namespace):
    from hubert_export.recipes import default_recipe, load_recipe

    if args.recipe is not None:
        recipe = load_recipe(args.recipe)
    elif args.target is None:
        raise HubertExportError(f"no target: pass --target {'|'.join(TARGETS)} or --recipe FILE")
    else:
        recipe = default_recipe(args.target, args.precision)
    overrides: dict[str, Any] = {
        "target": args.target, "precision": args.precision, "task": args.task, "export.opset": args.opset,
        "export.output_hidden_states": args.output_hidden_states, "export.attention_mask": args.attention_mask,
        "calibration.data": args.calibration_data, "calibration.max_accuracy_drop": args.max_accuracy_drop,
        "deployment_isa": args.deployment_isa,
    }
    for slot in ("min", "opt", "max"):
        shape = getattr(args, f"{slot}_shape")
        if shape is not None:
            overrides[f"shapes.{slot}.batch"], overrides[f"shapes.{slot}.samples"] = shape
    return recipe.with_overrides(**overrides)


def run_build(args: argparse.Namespace) -> int:
    from hubert_export.build import DEFAULT_MODEL_DIR, export_artifact

    if args.matrix is not None:
        return run_matrix(args)
    if args.ray is not None:
        raise HubertExportError("--ray builds a --matrix of recipes: add --matrix RECIPE..., or drop --ray")
    recipe = _recipe_from_args(args)
    model_dir = args.model or DEFAULT_MODEL_DIR
    output = args.output or Path("artifacts") / f"{Path(model_dir).resolve().name}-{recipe.target}-{recipe.precision}"
    result = export_artifact(model_dir, output, recipe, overwrite=args.overwrite, data_dir=args.data,
                             latency_repeats=args.latency_repeats,
                             corpus_options=_corpus_options(args), normalize=args.normalize)
    worst = result.report.worst()
    print(f"artifact   {result.path}  ({result.size_bytes / 1e6:.1f} MB, {recipe.target} {recipe.precision})")
    print(f"parity     {'PASS' if result.passed else 'FAIL'}  ({len(result.report.cases)} cases; "
          + ", ".join(f"{k} {v:.3g}" for k, v in sorted(worst.items())) + ")")
    for failure in result.report.failures:
        print(f"  - {failure}")
    if result.report.isa:
        print(f"machine    {result.report.machine_line()}")
    if result.latency_seconds is not None:
        b, s = result.latency_shape
        compute = (result.report.latency or {}).get("compute_seconds")
        print(f"latency    {result.latency_seconds * 1e3:.1f} ms for batch {b} x {s / 16000:.1f} s of audio "
              f"(median of {args.latency_repeats})"
              + (f", {compute * 1e3:.1f} ms without host-device copies" if compute is not None else ""))
    return EXIT_OK if result.passed else EXIT_PARITY_FAILED


def run_matrix(args: argparse.Namespace) -> int:
    given = [flag for flag, value in (("--recipe", args.recipe), ("--target", args.target),
                                      ("--precision", args.precision), ("--task", args.task)) if value]
    if given:
        raise HubertExportError(f"--matrix takes each build's settings from its recipe: drop {', '.join(given)}")
    if args.ray is not None:
        from hubert_export.distributed import require_ray

        require_ray()
    from hubert_export.distributed import build_matrix, matrix_exit_code, matrix_table

    entries = build_matrix(args.matrix, args.model, args.output, use_ray=args.ray is not None,
                           address=args.ray, files=args.ray_files, overwrite=args.overwrite,
                           latency_repeats=args.latency_repeats, data_dir=args.data,
                           corpus_options=_corpus_options(args), normalize=args.normalize,
                           cpus_per_build=args.cpus_per_build)
    print(matrix_table(entries), end="")
    return matrix_exit_code(entries)


def run_check(args: argparse.Namespace) -> int:
    if args.ray is not None:
        return run_ray_check(args)
    ray_only = [flag for flag, value in (("--workers", args.workers), ("--reference-workers", args.reference_workers),
                                         ("--batch-size", args.batch_size),
                                         ("--results-dir", args.results_dir), ("--no-bucketing", not args.bucketing),
                                         ("--cpus-per-worker", args.cpus_per_worker),
                                         ("--gpus-per-worker", args.gpus_per_worker)) if value]
    if ray_only:
        raise HubertExportError(f"{', '.join(ray_only)} configure a check on Ray: add --ray, or drop them")
    if len(args.artifacts) > 1:
        raise HubertExportError(f"check takes one artifact ({len(args.artifacts)} given): check several at once with "
                                "--ray, or one per command")
    args.artifact = args.artifacts[0]
    if args.overlap_seconds is not None and args.chunk_seconds is None:
        raise HubertExportError("--overlap-seconds is the overlap of --chunk-seconds chunks: add --chunk-seconds")
    if args.golden:
        given = [flag for flag, value in (("--data", args.data), ("--reference", args.reference),
                                          ("--chunk-seconds", args.chunk_seconds)) if value]
        if given:
            raise HubertExportError(f"check --golden runs the cases stored at build time and needs no checkpoint: "
                                    f"drop {' and '.join(given)}, or drop --golden for the full check")
        from hubert_export.golden import check_golden  # torch-free: what a deployment target has

        report = check_golden(args.artifact, junit=args.junit, latency_repeats=args.latency_repeats)
    else:
        from hubert_export.build import check_artifact
        from hubert_export.long_form import LongFormOptions

        long_form = None
        if args.chunk_seconds is not None:
            long_form = LongFormOptions(args.chunk_seconds, _overlap(args))
        report = check_artifact(args.artifact, data_dir=args.data, reference=args.reference, junit=args.junit,
                                latency_repeats=args.latency_repeats, corpus_options=_corpus_options(args),
                                normalize=args.normalize, long_form=long_form)
    report_dir = _report_dir(args)
    report.write(report_dir)
    _print_report(report, args.artifact, report_dir)
    return EXIT_OK if report.passed else EXIT_PARITY_FAILED


def _report_dir(args: argparse.Namespace) -> Path:
    """--report-dir, or a new temporary directory (the check only reads the artifact)."""
    if args.report_dir is not None:
        return args.report_dir
    import tempfile

    return Path(tempfile.mkdtemp(prefix="hubert-export-check-"))


def _print_report(report, artifact: Path, report_dir: Path) -> None:
    print(f"parity {'PASS' if report.passed else 'FAIL'}: {artifact} ({report.target} {report.precision}, "
          f"{len(report.cases)} cases)")
    for failure in report.failures:
        print(f"  - {failure}")
    if report.isa:
        print(report.machine_line())
    if report.ground_truth:
        gt = report.ground_truth
        print(f"reference transcripts: artifact CER {gt['artifact_cer']:.3f} (eager {gt['eager_cer']:.3f}), "
              f"WER {gt['artifact_wer']:.3f} (eager {gt['eager_wer']:.3f}); raw: CER {gt['raw_artifact_cer']:.3f}, "
              f"WER {gt['raw_artifact_wer']:.3f}")
        print(f"normalisation: {report.normalization or 'none (--no-normalize)'}")
    if report.long_form is not None:
        form = report.long_form
        for label, sub in (("same chunks in eager", form.served), ("whole utterances in eager", form.drift)):
            worst = sub.worst()
            print(f"long-form ({form.options.chunk_seconds:g} s chunks, {form.options.overlap_seconds:g} s overlap, "
                  f"{len(sub.cases)} utterances) against {label}: frame agreement {worst.get('argmax_agreement', 1):.4f}, "
                  f"CER {worst.get('cer', 0):.4f}, WER {worst.get('wer', 0):.4f} (worst utterance)")
    if report.latency:
        batch, samples = report.latency["shape"]
        compute = report.latency.get("compute_seconds")
        print(f"latency {report.latency['seconds'] * 1e3:.1f} ms for batch {batch} x {samples / 16000:.1f} s of audio"
              + (f" ({compute * 1e3:.1f} ms without host-device copies)" if compute is not None else ""))
    print(f"reports {report_dir / 'parity.json'}, {report_dir / 'parity.md'}")


def run_ray_check(args: argparse.Namespace) -> int:
    from hubert_export.distributed import check_corpus, require_ray

    require_ray()  # the one-line refusal before any other work
    if args.golden:
        raise HubertExportError("check --golden runs on the deployment target itself: drop --ray")
    if args.chunk_seconds is not None:
        raise HubertExportError("--chunk-seconds runs each recording in chunks on one machine: drop --ray")
    result = check_corpus(args.artifacts, args.data, address=args.ray, files=args.ray_files,
                          workers=args.workers or 1, reference_workers=args.reference_workers,
                          batch_size=args.batch_size or 1, bucketing=args.bucketing,
                          results_dir=args.results_dir, reference=args.reference,
                          corpus_options=_corpus_options(args), normalize=args.normalize,
                          latency_repeats=args.latency_repeats, cpus_per_worker=args.cpus_per_worker or 1.0,
                          gpus_per_worker=args.gpus_per_worker, report_dir=_report_dir(args), junit=args.junit)
    for label, report in result.reports.items():
        _print_report(report, result.artifacts[label], result.report_dirs[label])
    if args.data is not None:
        resumed = ", ".join(f"{n} of {label}" for label, n in result.resumed.items() if n)
        speed = f", {result.throughput:.1f} audio s/s" if result.throughput else ""
        print(f"corpus {result.utterances} utterances: {result.computed} checked in {result.batches} batches "
              f"on {result.nodes} node(s) "
              f"({result.audio_seconds:.1f} s of audio in {result.corpus_seconds:.1f} s{speed}, padding "
              f"{result.padding_fraction:.1%})" + (f", resumed {resumed}" if resumed else "")
              + (f", {result.skipped} outside the length range" if result.skipped else ""))
        print(f"results {result.results_dir}")
    return result.exit_code


def _overlap(args: argparse.Namespace) -> float:
    """--overlap-seconds, or transcribe's default for --chunk-seconds: a quarter of the chunk, up to 2 s."""
    from hubert_export.transcribe import DEFAULT_OVERLAP_SECONDS

    return min(DEFAULT_OVERLAP_SECONDS, args.chunk_seconds / 4) if args.overlap_seconds is None else args.overlap_seconds


def run_transcribe(args: argparse.Namespace) -> int:
    from hubert_export.transcribe import DEFAULT_CHUNK_SECONDS, transcribe

    if args.chunk_seconds is None:
        args.chunk_seconds = DEFAULT_CHUNK_SECONDS
    overlap = _overlap(args)
    results = transcribe(args.model, args.audio, chunk_seconds=args.chunk_seconds,
                         overlap_seconds=overlap, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        for result in results:
            print(result.text if len(results) == 1 else f"{result.path}\t{result.text}")
    sys.stdout.flush()
    return EXIT_OK


def run_bench(args: argparse.Namespace) -> int:
    from hubert_export.artifact import Artifact
    from hubert_export.bench import Subject, artifact_subject, markdown, run_benchmark, write_results

    for path in args.artifacts:
        Artifact.open(path)  # a wrong path is the user's mistake: exit 2, not a row marked "error"
    subjects = [artifact_subject(path) for path in args.artifacts]
    baseline = None
    if args.eager is not None:
        from hubert_export.hub import resolve_model  # an owner/name id: its snapshot in the hub cache

        args.eager = resolve_model(args.eager)
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
    written, note = [], None
    if args.output is not None:
        from hubert_export.plots import plot

        written = write_results(results, args.output)
        pngs, note = plot(results, args.output)
        written += pngs
    print(markdown(results), end="")
    if written:
        print(f"wrote {', '.join(str(p) for p in written)}")
    if note:
        print(note)
    return EXIT_OK


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubert-export serve", parents=[_common_parent()],
        description="Serve artifacts on Triton Inference Server (PyTriton; pip install 'hubert-export[serve]'): "
                    "KServe v2 over HTTP and gRPC, inputs audio (FP32, 16 kHz mono) or audio_file (WAV/FLAC/OGG "
                    "bytes), the same front end, chunking and CTC decoding as transcribe. SIGTERM or SIGINT drain "
                    "and stop. With --model-repository, write a repository for Triton's own back ends instead.")
    parser.add_argument("artifacts", type=Path, nargs="+", metavar="ARTIFACT_DIR", help="artifact directories")
    parser.add_argument("--name", action="append", metavar="NAME",
                        help="model name of each artifact, in order (repeat; default: each directory's name)")
    parser.add_argument("--http-port", type=_positive, default=8000, metavar="PORT", help="default 8000")
    parser.add_argument("--grpc-port", type=_positive, default=8001, metavar="PORT", help="default 8001")
    parser.add_argument("--metrics-port", type=_positive, default=8002, metavar="PORT",
                        help="Prometheus metrics (default 8002)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--max-batch", type=_positive, default=16, metavar="N",
                        help="requests per model call through Triton's dynamic batcher (default 16; 1: no batching)")
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0, metavar="D",
                        help="how long the batcher waits for more requests (default 2)")
    parser.add_argument("--instances", type=_positive, default=2, metavar="K",
                        help="model instances per artifact, each with its own runner (default 2: one computes "
                             "while the next batch forms; docs/serve.md)")
    parser.add_argument("--threads", type=_positive, metavar="N",
                        help="intra-op threads per instance (default: the cores divided among the instances)")
    parser.add_argument("--model-repository", type=Path, metavar="OUT",
                        help="write the artifacts as a model repository for Triton's onnxruntime, openvino and "
                             "tensorrt_plan back ends (a config.pbtxt from each manifest) instead of serving")
    return parser


def run_serve(args: argparse.Namespace) -> int:
    if args.model_repository is not None:
        from hubert_export.triton_repository import RepositoryOptions, write_model_repository

        written = write_model_repository(args.artifacts, args.model_repository, names=args.name,
                                         options=RepositoryOptions(args.max_batch, args.max_queue_delay_ms,
                                                                   args.instances))
        for model_dir in written:
            print(f"wrote {model_dir}")
        return EXIT_OK
    from hubert_export.serve import ServeOptions, serve

    serve(args.artifacts, names=args.name,
          options=ServeOptions(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                               address=args.address, max_batch=args.max_batch,
                               max_queue_delay_ms=args.max_queue_delay_ms, instances=args.instances,
                               threads=args.threads))
    return EXIT_OK


def import_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubert-export import", parents=[_common_parent()],
        description="Write a fairseq checkpoint (.pt: HuBERT or wav2vec 2.0, pretrained or CTC fine-tuned) as a "
                    "Hugging Face checkpoint directory, without fairseq and without running the pickle's code. "
                    "--model FILE.pt on the other commands does the same into a cache.")
    parser.add_argument("checkpoint", type=Path, metavar="CKPT.pt", help="the fairseq checkpoint file")
    parser.add_argument("output", type=Path, metavar="OUT_DIR", help="the directory to write (must not exist)")
    parser.add_argument("--dict", type=Path, metavar="FILE",
                        help="a CTC model's letter dictionary (default: dict.ltr.txt beside the checkpoint)")
    return parser


def run_import(args: argparse.Namespace) -> int:
    from hubert_export.model.fairseq import import_fairseq_checkpoint

    print(import_fairseq_checkpoint(args.checkpoint, args.output, dictionary=args.dict))
    return EXIT_OK


COMMANDS = {
    "build": (build_parser, run_build),
    "check": (check_parser, run_check),
    "transcribe": (transcribe_parser, run_transcribe),
    "bench": (bench_parser, run_bench),
    "serve": (serve_parser, run_serve),
    "import": (import_parser, run_import),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "build"
    if argv and argv[0] == "build":
        argv = argv[1:]
    elif command != "build":
        argv = argv[1:]
    make_parser, run = COMMANDS[command]
    args = make_parser().parse_args(argv)
    logger = logging.getLogger("hubert_export")
    handler, level = ProgressHandler(), logger.level
    if not args.quiet:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        return run(args)
    except HubertExportError as exc:
        if args.debug:
            raise
        kind = "internal error" if isinstance(exc, InternalError) else "error"
        print(f"hubert-export: {kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hubert-export: interrupted (nothing was left half-written)", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's input: still one line unless --debug
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"hubert-export: internal error: {type(exc).__name__}: {first} (rerun with --debug for the "
              "traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
