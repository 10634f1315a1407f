"""The product's two library calls: build a verified artifact, and re-check one.

    export_artifact(model_dir, output, recipe)  checkpoint -> ONNX -> passes -> back end -> parity
    check_artifact(artifact_dir)                re-run the parity gate against the source checkpoint

Both are what the CLI calls. A build is the only writer of an artifact: its parity reports and
golden outputs are written before the manifest's hash table, so every file but manifest.json is
hashed. `check_artifact` (and `golden.check_golden`, its torch-free twin) writes nothing into
the artifact: reports go to the `report_dir` the caller names.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubert_export import artifact as artifacts
from hubert_export.audio import FeatureExtractorConfig, iter_audio_files, load_audio, prepare_batch
from hubert_export.backends import Backend, BackendBuild, BuildInputs, ExportedGraph, get_backend
from hubert_export.corpus import CorpusOptions
from hubert_export.errors import HubertExportError
from hubert_export.hub import resolve_model
from hubert_export.isa import manifest_section
from hubert_export.long_form import LongFormOptions
from hubert_export.model import HubertConfig, load_config
from hubert_export.model.weights import load_checkpoint_state
from hubert_export.golden import RecordingRunner, write_golden
from hubert_export.parity import (CaseOutcome, ParityCase, ParityReport, builtin_cases, data_cases, fit_cases,
                                  shape_case, thresholds_for)
from hubert_export.recipes import Recipe
from hubert_export.runner import EagerRunner, Runner
from hubert_export.tasks import TaskSpec, family_of
from hubert_export.verification import ParityCheck

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_MODEL_DIR = DATA_DIR / "tiny-ctc"
BUILTIN_CALIBRATION_DIR = DATA_DIR / "calibration"
EXPORT_NAME = "export.onnx"  # after the back end's graph passes: what its build starts from

log = logging.getLogger(__name__)

@dataclass
class BuildResult:
    path: Path
    size_bytes: int
    report: ParityReport
    latency_seconds: float | None
    latency_shape: list[int]

    @property
    def passed(self) -> bool:
        return self.report.passed


def load_model(model_dir: Path, task_name: str):
    """(config, task, eager model) of a checkpoint for `task_name` ("auto": from its architecture)."""
    config = load_config(model_dir)
    family = family_of(config)
    task = family.task(family.infer_task(config) if task_name == "auto" else task_name)
    head = task.head_prefix
    # from_pretrained initialises a missing head at random (for fine-tuning); an export of one is garbage.
    if head and not any(k.startswith(head) for k in load_checkpoint_state(model_dir)):  # mmap: names only
        raise HubertExportError(
            f"checkpoint {model_dir} has no {head.rstrip('.')} weights, so it was not fine-tuned for --task "
            f"{task.name}: pass a {task.model_class.__name__} checkpoint, or --task {family.default_task}")
    return config, task, task.model_class.from_pretrained(model_dir)


def _calibration_loader(recipe: Recipe, fe: FeatureExtractorConfig,
                        input_names: list[str]) -> Callable[[], list[dict[str, np.ndarray]]]:
    def load() -> list[dict[str, np.ndarray]]:
        directory = recipe.calibration.data or BUILTIN_CALIBRATION_DIR
        files = iter_audio_files(directory)[: recipe.calibration.subset_size]
        log.info(f"reading {len(files)} calibration recordings from {directory}")
        max_samples = recipe.shapes.max.samples
        batches = []
        for path in files:
            waveform = load_audio(path, fe.sampling_rate)[:max_samples]
            batch = prepare_batch([waveform], dataclasses.replace(fe, return_attention_mask="attention_mask" in input_names))
            batches.append(batch)
        return batches
    return load


def export_artifact(
    model_dir: str | Path | None,
    output: str | Path,
    recipe: Recipe,
    *,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    latency_repeats: int = 3,
    corpus_options: CorpusOptions | None = None,
    normalize: bool = True,
    recorded_checkpoint: str | Path | None = None,
) -> BuildResult:
    """Export `model_dir` (default: the small model shipped in the package) as `recipe` says.

    The artifact is built beside `output` and moved into place complete, with its manifest and
    parity reports; a parity failure still leaves the (complete) artifact for inspection and is
    reported by `BuildResult.passed`. The latency is the median of `latency_repeats` runs at the
    recipe's opt shape (0: not measured). `model_dir` may be a model id in the local Hugging Face
    cache; `corpus_options` and `normalize` say how `data_dir` is read and its transcripts scored.
    `recorded_checkpoint` is the source path the manifest records when `model_dir` is a copy of it
    (a build on a Ray worker; default: `model_dir`). Progress goes to the `hubert_export` logger.
    """
    model_dir = resolve_model(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not model_dir.is_dir():
        raise HubertExportError(f"model directory {model_dir} does not exist: pass --model a checkpoint directory "
                                "or a model id (owner/name) in the local Hugging Face cache")
    backend = get_backend(recipe.target)  # an unusable target fails before any work
    backend.check_available(recipe)
    log.info(f"loading {model_dir}")
    config, task, model = load_model(model_dir, recipe.task)
    fe = FeatureExtractorConfig.from_dir(model_dir)
    with_mask = fe.return_attention_mask if recipe.export.attention_mask == "auto" else bool(recipe.export.attention_mask)
    family = family_of(config)
    input_names = family.input_names(with_mask)
    output_names = [s.name for s in family.outputs(task, recipe.export.output_hidden_states)]

    # Hashing reads the whole checkpoint; hashlib and file reads release the GIL, so it runs on the
    # second core while the (mostly single-threaded) export runs on the first.
    with ThreadPoolExecutor(max_workers=1) as pool, artifacts.building(output, overwrite=overwrite) as tmp:
        checkpoint_sha256 = pool.submit(artifacts.hash_checkpoint, model_dir)
        declared = backend.input_contract(recipe, with_mask)
        # The eager model is held by the build inputs alone (no local name here), so that a build
        # with external data can let go of it while the back end works and read it again after.
        held, model = [model], None
        built, pass_names, model = _build_model_files(backend, BuildInputs(
            tmp, tmp / ".work", recipe, config, fe, task, input_names, output_names, None, declared,
            _calibration_loader(recipe, fe, input_names), model=held.pop()), pool)
        if model is None:
            log.info(f"reading {model_dir} again for the parity check")
            model = load_model(model_dir, recipe.task)[2]
        backend_section = {**built.section, "graph_passes": pass_names}
        _remove_tree(tmp / ".work")
        artifacts.copy_checkpoint_metadata(model_dir, tmp)
        manifest = artifacts.new_manifest(
            source={"checkpoint": str(Path(recorded_checkpoint or model_dir).resolve()), "checkpoint_sha256": checkpoint_sha256.result(),
                    "architecture": task.model_class.__name__},
            task=task.name, target=recipe.target, precision=recipe.precision, recipe=recipe.to_dict(),
            io=family.io_section(input_names, task, recipe.export.output_hidden_states, config),
            input_contract=(built.contract or declared).to_dict(),
            backend=backend_section, isa=manifest_section(recipe.deployment_isa),
        )
        # Written twice: the runner reads this one; the last one adds the reports' and golden outputs'
        # hashes (the model files' digests carried over, not read again).
        artifacts.write_manifest(tmp, manifest, known_sha256=built.file_sha256)
        artifact = artifacts.Artifact.open(tmp)
        verified = _verify(artifact, model, config, task, fe, recipe,
                           data_dir=Path(data_dir) if data_dir else None, latency_repeats=latency_repeats,
                           corpus_options=corpus_options, normalize=normalize, record_reference=True)
        report = verified.report
        report.failures.extend(f"build: {failure}" for failure in built.failures)
        report.write(tmp)
        manifest["golden"] = write_golden(tmp, verified.cases, verified.reference, verified.thresholds, recipe)
        manifest["parity"] = _parity_summary(report)
        artifacts.write_manifest(tmp, manifest, known_sha256={
            name: entry.sha256 for name, entry in artifact.manifest.files.items()})
    final = Path(output)
    size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
    log.info(f"artifact written to {final} ({size / 1e6:.1f} MB), parity {'PASS' if report.passed else 'FAIL'}")
    latency = report.latency or {"seconds": None, "shape": [recipe.shapes.opt.batch, recipe.shapes.opt.samples]}
    return BuildResult(final, size, report, latency["seconds"], latency["shape"])


def _build_model_files(backend: Backend, inputs: BuildInputs,
                       pool: ThreadPoolExecutor) -> tuple[BackendBuild, list[str], Any]:
    """The back end's model files in `inputs.out_dir`: for an ONNX back end, the model exported to
    ONNX, checked on the second core meanwhile, and run through the back end's graph passes first.
    Returns the build, the passes run and the eager model, or None when it was let go of: a model
    exported with external data (over 1.8 GB) is not kept through the back end's build, whose
    quantisers and converters hold copies of their own (hubert-xlarge, OpenVINO INT8: 16.7 GiB at
    the peak with it, docs/large-models.md)."""
    from hubert_export.export import check_onnx, export_onnx_serialized, uses_external_data
    from hubert_export.passes import run_passes

    recipe, task = inputs.recipe, inputs.task
    inputs.work_dir.mkdir()
    checked = None
    if backend.needs_onnx:
        log.info(f"exporting {task.name} to ONNX")
        # With external data the export is a file in the scratch space (its weights beside it, read
        # on demand by the passes and the back end): never a second copy of them in memory.
        external = uses_external_data(inputs.model, recipe.export.external_data)
        exported, serialized = export_onnx_serialized(
            inputs.model, task, inputs.work_dir / "exported.onnx" if external else None, opset=recipe.export.opset,
            with_attention_mask="attention_mask" in inputs.input_names,
            output_hidden_states=recipe.export.output_hidden_states, exporter=recipe.export.exporter,
            check=False, parse=False, external_data=recipe.export.external_data)
        # onnx.checker releases the GIL: it checks on the second core while the build goes on, and
        # the artifact is not finished until it has passed.
        checked = pool.submit(check_onnx, serialized) if serialized is not None else None
        if external:
            inputs = dataclasses.replace(inputs, model=None)
    try:
        pass_names = backend.graph_passes(recipe)
        if backend.needs_onnx:
            graph = ExportedGraph(inputs.work_dir / EXPORT_NAME, exported, serialized)
            if pass_names:
                graph = ExportedGraph(inputs.work_dir / EXPORT_NAME, run_passes(graph.model(), pass_names))
            inputs = dataclasses.replace(inputs, graph=graph)
        log.info(f"building the {recipe.target} {recipe.precision} artifact")
        return backend.build(inputs), pass_names, inputs.model
    finally:
        # A model the checker rejects explains any later failure: its error is the one reported.
        if checked is not None:
            checked.result()


def check_artifact(
    artifact_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    reference: str | Path | None = None,
    junit: str | Path | None = None,
    latency_repeats: int = 3,
    corpus_options: CorpusOptions | None = None,
    normalize: bool = True,
    report_dir: str | Path | None = None,
    long_form: LongFormOptions | None = None,
) -> ParityReport:
    """Re-run an artifact's parity gate against its source checkpoint (the CI accuracy gate).

    The artifact is only read (it may sit on a read-only mount): parity.json and parity.md go to
    `report_dir` when given, JUnit XML to `junit`. With `long_form`, the `data_dir` utterances are
    checked whole as transcribe runs them, in chunks (hubert_export/long_form.py), instead of cut
    to the artifact's shape range.
    """
    report = verify_artifact(artifact_dir, data_dir=data_dir, reference=reference, latency_repeats=latency_repeats,
                             corpus_options=corpus_options, normalize=normalize, long_form=long_form).report
    if report_dir is not None:
        report.write(Path(report_dir))
    if junit:
        Path(junit).write_text(report.to_junit())
    return report


def verify_artifact(
    artifact_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    reference: str | Path | None = None,
    latency_repeats: int = 3,
    corpus_options: CorpusOptions | None = None,
    normalize: bool = True,
    long_form: LongFormOptions | None = None,
) -> Verification:
    """`check_artifact` without writing anything: the file hashes, the source checkpoint (found
    through the manifest, or `reference`; its hash must match), then the parity cases and latency."""
    artifact = artifacts.Artifact.open(artifact_dir)
    log.info(f"verifying the files of {artifact.path}")
    artifact.verify_files()
    manifest = artifact.manifest
    model_dir = resolve_model(reference) if reference else Path(manifest.source.checkpoint)
    if not model_dir.is_dir():
        raise HubertExportError(
            f"the source checkpoint {model_dir} recorded in the manifest is not there: pass --reference CHECKPOINT_DIR"
        )
    recorded = manifest.source.checkpoint_sha256
    if recorded and artifacts.hash_checkpoint(model_dir) != recorded:
        raise HubertExportError(
            f"checkpoint {model_dir} is not the one this artifact was built from (its hash differs from the "
            "manifest's): pass --reference with the original checkpoint, or rebuild the artifact"
        )
    recipe = artifact.recipe()
    if long_form is not None and data_dir is None:
        raise HubertExportError("--chunk-seconds checks the --data recordings in chunks: add --data CORPUS")
    if long_form is not None and manifest.task != "ctc":
        raise HubertExportError(f"--chunk-seconds checks recordings the way transcribe runs them, and artifact "
                                f"{artifact.path} outputs {manifest.task}, not CTC logits: drop --chunk-seconds")
    config, task, model = load_model(model_dir, manifest.task)
    fe = FeatureExtractorConfig.from_dir(model_dir)
    verified = _verify(artifact, model, config, task, fe, recipe,
                       data_dir=Path(data_dir) if data_dir and long_form is None else None,
                       latency_repeats=latency_repeats, corpus_options=corpus_options, normalize=normalize)
    if long_form is not None:
        from hubert_export.corpus import read_corpus
        from hubert_export.long_form import check_long_form

        utterances = read_corpus(Path(data_dir), corpus_options).utterances
        report = verified.report
        report.long_form = check_long_form(artifact.path, model_dir, model, utterances, long_form,
                                           thresholds=verified.thresholds, normalize=normalize)
        report.failures.extend(report.long_form.failures())
    return verified


@dataclass
class Verification:
    """A parity check's report and what it was made of."""

    report: ParityReport
    cases: list[ParityCase]
    reference: Runner  # a RecordingRunner holding the eager outputs when asked for
    thresholds: dict[str, float]
    outcomes: list[CaseOutcome]  # per case, in the report's order (`parity.summarize` made the report)


def _verify(artifact: artifacts.Artifact, model, config: HubertConfig, task: TaskSpec, fe: FeatureExtractorConfig,
            recipe: Recipe, *, data_dir: Path | None, latency_repeats: int, corpus_options: CorpusOptions | None = None,
            normalize: bool = True, record_reference: bool = False) -> Verification:
    contract = artifact.input_contract
    with_mask = contract.attention_mask
    window = contract.window
    if window is None:
        cases = builtin_cases(fe, with_mask, contract.shape_range)
        if data_dir is not None:
            cases += data_cases(data_dir, fe, with_mask, max_samples=contract.max.samples, options=corpus_options)
        cases = [c for c in cases if contract.contains(*c.inputs["input_values"].shape)]
    else:  # built for one shape: the recipe's cases, each run through it as transcribe runs audio
        cases = builtin_cases(fe, with_mask, recipe.shapes.range)
        if data_dir is not None:
            cases += data_cases(data_dir, fe, with_mask, max_samples=None, options=corpus_options)
        cases = fit_cases(cases, window.samples, padded=with_mask)
        cases.append(shape_case(fe, with_mask, window.batch, window.samples))
    reference: Runner = EagerRunner(model, task, with_attention_mask=with_mask,
                                    output_hidden_states=recipe.export.output_hidden_states)
    if record_reference:
        reference = RecordingRunner(reference)
    thresholds = thresholds_for(recipe.precision, recipe.thresholds.explicit(), family_of(config).thresholds)
    report, outcomes = ParityCheck(cases, reference, thresholds, normalize).run(artifact, latency_repeats=latency_repeats)
    return Verification(report, cases, reference, thresholds, outcomes)


def _parity_summary(report: ParityReport) -> dict[str, Any]:
    latency = report.latency or {}
    return {"passed": report.passed, "thresholds": report.thresholds, "worst": report.worst(),
            "failures": report.failures, "cases": len(report.cases), "ground_truth": report.ground_truth,
            "latency_seconds": latency.get("seconds"), "latency_shape": latency.get("shape"),
            "latency_compute_seconds": latency.get("compute_seconds"),
            "checked_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)

