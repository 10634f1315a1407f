"""Corpus checks and build matrices on a Ray cluster (the optional `[ray]` extra).

    check_corpus(artifacts, data, ...)     hubert-export check ART... --data CORPUS --ray [ADDRESS]
    build_matrix(recipes, model_dir, ...)  hubert-export build --matrix RECIPE... --model DIR --ray

A corpus check is the single-machine check (`build.verify_artifact`) spread over Ray Data:

    driver        reads the corpus (`corpus.read_corpus`, every format), estimates each utterance's
                  length from its header, plans batches (length buckets): one dataset row per batch
    eager pool    `ReferenceWorker` actors decode, cut and pad each batch (`parity.batch_case`) and
                  run the eager model: the reference outputs, computed once per checkpoint and
                  carried in the rows past every artifact's pool
    one pool per  `ArtifactWorker` actors run the back end's runner (`Backend.load`) on the same
    artifact      padded batch and compare each utterance on its own frames (`parity.compare_case`)
    driver        appends each utterance's outcome to RESULTS_DIR/<artifact>-<digest>.jsonl as it
                  arrives; a rerun reads them back and computes only what is missing
    one task per  with the artifact's resources: file hashes, checkpoint hash, built-in cases and
    artifact      latency (`build.verify_artifact` without the corpus)
    driver        `parity.summarize` over the built-in and corpus outcomes in corpus order: the
                  report, JUnit and exit code of `check_artifact`, figure for figure at batch size 1

Artifact and checkpoint directories reach the workers through Ray's object store (`files="store"`:
packed once by the driver, unpacked once per node under $TMPDIR/hubert-export-ray/<digest>) or as
paths every node mounts (`files="shared"`). Ray itself is imported only when one of these runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hubert_export.artifact import MANIFEST_NAME, Artifact
from hubert_export.corpus import CorpusOptions, Utterance, read_corpus
from hubert_export.errors import EXIT_INTERNAL, EXIT_OK, EXIT_PARITY_FAILED, HubertExportError
from hubert_export.parity import CaseOutcome, ParityCase, ParityReport, batch_case, compare_case, summarize

RAY_EXTRA = "pip install 'hubert-export[ray]'"
FILE_MODES = ("store", "shared")
STORE_CHUNK_BYTES = 256 << 20  # the largest piece of a file put in the object store (Files)
RESULTS_FORMAT = 1

log = logging.getLogger(__name__)


def require_ray() -> Any:
    """The `ray` module, or the one-line refusal that names the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (the check's pipeline; part of the extra)
    except ImportError:
        raise HubertExportError(f"--ray needs Ray, an optional extra: {RAY_EXTRA}") from None
    return ray


def connect(address: str | None = None) -> Any:
    """Ray, initialised: this process's session if it has one, else a new local Ray (`address`
    None or "local") or the cluster at `address` ("auto", "HOST:PORT", "ray://HOST:PORT")."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            if address in (None, "local"):
                ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False)
            else:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HubertExportError(f"cannot join the Ray cluster at {address} ({first}): start it with "
                                    "`ray start --head` or pass its address (HOST:PORT)") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Not its notices ("progress bars disabled") nor its report of a failed batch: the error itself
    # is raised here, once, as one line (a worker's bad input comes back as data).
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    return ray


# ------------------------------------------------------------------------------------------ files
@dataclass(frozen=True)
class Files:
    """A directory as Ray workers see it: the driver's path, mounted at the same place on every
    node (`ref` None), or its files in the object store, unpacked once per node (`ref`)."""

    path: str
    digest: str = ""  # SHA-256 over names and bytes (store mode): the unpacked copy's name
    # ObjectRef of {relative posix name: [ObjectRef of bytes, ...]}: each file in pieces of at most
    # STORE_CHUNK_BYTES, so that a model file of gigabytes (hubert-xlarge's 3.8 GB model.onnx.data)
    # is never whole in the memory of the driver or of a worker, only in the object store.
    ref: Any = None

    def local(self) -> Path:
        """The directory on this node."""
        if self.ref is None:
            path = Path(self.path)
            if not path.is_dir():
                raise HubertExportError(f"{path} is not on this node: put it on a path every node mounts, "
                                        "or pass --ray-files store to send it through Ray's object store")
            return path
        root = Path(tempfile.gettempdir()) / "hubert-export-ray" / self.digest
        if root.is_dir():
            return root
        import ray

        files = ray.get(self.ref)
        root.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{self.digest[:16]}-", dir=root.parent))
        for name, chunks in files.items():
            (temp / name).parent.mkdir(parents=True, exist_ok=True)
            with open(temp / name, "wb") as out:
                for chunk in chunks:
                    out.write(ray.get(chunk))
        try:
            os.rename(temp, root)  # atomic: a worker never sees half a copy
        except OSError:  # another worker on this node unpacked it first
            shutil.rmtree(temp, ignore_errors=True)
        return root


def share_directory(directory: str | Path, mode: str, names: list[str] | None = None) -> Files:
    """`directory` for the workers: as a path (`mode` "shared") or through the object store
    ("store"; `names`, relative paths, default every file in it)."""
    if mode not in FILE_MODES:
        raise HubertExportError(f"--ray-files {mode!r} is not one of {', '.join(FILE_MODES)}")
    directory = Path(directory).resolve()
    if mode == "shared":
        return Files(str(directory))
    import ray

    if names is None:
        names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    files: dict[str, list[Any]] = {}
    for name in names:
        digest.update(f"{name}\0{(directory / name).stat().st_size}\n".encode())
        files[name] = []
        with open(directory / name, "rb") as f:
            for data in iter(lambda: f.read(STORE_CHUNK_BYTES), b""):
                digest.update(data)
                files[name].append(ray.put(data))
    return Files(str(directory), digest.hexdigest(), ray.put(files))


def _pack(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _user_error(exc: BaseException) -> BaseException | None:
    """The HubertExportError a worker raised, out of Ray's wrappers (None: not one of ours)."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(current, HubertExportError) and not isinstance(cause, BaseException):
            return current
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None


def pack_payload(value: Any) -> bytes:
    """A stage's row (dicts, lists, strings, numbers, bytes and numpy arrays) as bytes: JSON for
    the structure, the arrays and bytes in an .npz. Nothing is pickled: reading it back runs no code."""
    arrays: list[np.ndarray] = []

    def strip(item: Any) -> Any:
        if isinstance(item, np.ndarray):
            arrays.append(item)
            return {"__array__": len(arrays) - 1}
        if isinstance(item, (bytes, bytearray)):
            arrays.append(np.frombuffer(bytes(item), dtype=np.uint8))
            return {"__bytes__": len(arrays) - 1}
        if isinstance(item, dict):
            return {key: strip(v) for key, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [strip(v) for v in item]
        if isinstance(item, np.generic):
            return item.item()
        return item

    structure = json.dumps(strip(value)).encode()
    buffer = io.BytesIO()
    np.savez(buffer, structure=np.frombuffer(structure, dtype=np.uint8), *arrays)
    return buffer.getvalue()


def unpack_payload(data: bytes) -> Any:
    """`pack_payload`'s value back."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}

    def restore(item: Any) -> Any:
        if isinstance(item, dict):
            if "__array__" in item:
                return arrays[f"arr_{item['__array__']}"]
            if "__bytes__" in item:
                return arrays[f"arr_{item['__bytes__']}"].tobytes()
            return {key: restore(v) for key, v in item.items()}
        if isinstance(item, list):
            return [restore(v) for v in item]
        return item

    return restore(json.loads(arrays["structure"].tobytes()))


def _worker_threads(threads: int | None, cpus: float) -> int:
    return threads if threads else max(1, int(cpus))


# ------------------------------------------------------------------------------------------ workers
def _failure(exc: HubertExportError, *copies: Files) -> dict[str, Any]:
    """A worker's bad-input error as data, which the driver raises as it is (Ray would wrap it),
    naming the driver's folders rather than this node's copies of them."""
    message = str(exc)
    for files in copies:
        if files.ref is not None:
            message = message.replace(str(Path(tempfile.gettempdir()) / "hubert-export-ray" / files.digest), files.path)
    return {"error": message, "exit_code": exc.exit_code}


def _utterance(member: dict[str, Any]) -> Utterance:
    path = member["path"]
    return Utterance(member["id"], member["text"], member["origin"], path=Path(path) if path else None,
                     encoded=member["encoded"], samples=member["samples"], samples_rate=member["samples_rate"])


class ReferenceWorker:
    """A Ray Data actor: batches of utterances -> padded inputs and the eager model's outputs."""

    def __init__(self, checkpoint: Files, spec: dict[str, Any], threads: int) -> None:
        import torch

        from hubert_export.audio import FeatureExtractorConfig
        from hubert_export.build import load_model
        from hubert_export.runner import EagerRunner

        torch.set_num_threads(threads)
        self.spec = spec
        self.error: dict[str, Any] | None = None  # bad input is data for the driver, not a crash to retry
        try:
            model_dir = checkpoint.local()
            _, task, model = load_model(model_dir, spec["task"])
            self.fe = FeatureExtractorConfig.from_dir(model_dir)
            self.runner = EagerRunner(model, task, with_attention_mask=spec["with_mask"],
                                      output_hidden_states=spec["hidden"]).activate()
        except HubertExportError as exc:
            self.error = _failure(exc, checkpoint)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads, real, padded = [], [], []
        for members in batch["members"]:
            try:
                payload = self.error or self._run(unpack_payload(members))
            except HubertExportError as exc:
                payload = _failure(exc)
            payloads.append(pack_payload(payload))
            real.append(payload.get("real", 0))
            padded.append(payload.get("padded", 0))
        return {"batch": batch["batch"], "payload": np.array(payloads, dtype=object),
                "real": np.array(real, dtype=np.int64), "padded": np.array(padded, dtype=np.int64)}

    def _run(self, members: list[dict[str, Any]]) -> dict[str, Any]:
        from hubert_export.parity import utterance_waveform

        spec = self.spec
        skipped, loaded = [], []
        for member in members:
            waveform = utterance_waveform(_utterance(member), self.fe, spec["max_samples"])
            if len(waveform) < spec["min_samples"]:  # outside the artifacts' range: left out, as in check
                skipped.append({"index": member["index"], "id": member["id"], "skipped": len(waveform)})
            else:
                loaded.append((member, waveform))
        if not spec["with_mask"]:
            # Without an attention mask padding changes every frame (the normalisation and GroupNorm
            # see it), so only utterances of one length share a batch.
            by_length: dict[int, list] = {}
            for item in loaded:
                by_length.setdefault(len(item[1]), []).append(item)
            sets = list(by_length.values())
        else:
            sets = [loaded] if loaded else []
        groups, real, padded = [], 0, 0
        for items in sets:
            case = batch_case("batch", [w for _, w in items], self.fe, spec["with_mask"], [m["text"] for m, _ in items])
            start = time.perf_counter()
            reference = self.runner.infer({k: v for k, v in case.inputs.items() if k in self.runner.input_names})
            seconds = time.perf_counter() - start
            real += sum(case.sample_lengths)
            padded += len(items) * max(case.sample_lengths) - sum(case.sample_lengths)
            groups.append({"indices": [m["index"] for m, _ in items], "ids": [m["id"] for m, _ in items],
                           "texts": case.reference_texts, "lengths": case.sample_lengths, "inputs": case.inputs,
                           "reference": reference, "output_names": list(self.runner.output_names),
                           "seconds": seconds})
        return {"groups": groups, "skipped": skipped, "real": real, "padded": padded}


class ArtifactWorker:
    """A Ray Data actor: runs one artifact on the reference stage's batches and adds a column of
    per-utterance outcomes (JSON); utterances in `done` (already in the results file) are skipped."""

    def __init__(self, files: Files, column: str, done: frozenset[str], threads: int, last: bool = False) -> None:
        from hubert_export.backends import get_backend
        from hubert_export.model.config import load_config
        from hubert_export.tasks import family_of, frame_axes

        self.error: dict[str, Any] | None = None
        try:
            artifact = Artifact.open(files.local())
            artifact.verify_files()
            recipe = artifact.recipe()
            self.config = load_config(artifact.path)
            self.task = artifact.task
            self.frame_axes = frame_axes(family_of(self.config).task(self.task), recipe.export.output_hidden_states)
            self.tokenizer = artifact.tokenizer()
            self.runner = get_backend(artifact.target).load(artifact, threads=threads).activate()
        except HubertExportError as exc:
            self.error = _failure(exc, files)
        self.files = files
        self.last = last  # the last pool drops the batch's arrays: the driver needs the outcomes only
        self.column = column
        self.done = done
        self.calls = 0
        import ray

        self.node = ray.get_runtime_context().get_node_id()[:12]  # which node ran it, for the run's summary

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        column = []
        for blob in batch["payload"]:
            payload = unpack_payload(blob)
            failure = self.error or (payload if "error" in payload else None)  # this worker's, or the eager stage's
            if failure is None:
                try:
                    column.append(json.dumps({"records": self._run(payload)}))
                    continue
                except HubertExportError as exc:
                    failure = _failure(exc, self.files)
            column.append(json.dumps({"error": failure["error"], "exit_code": failure["exit_code"]}))
        batch[self.column] = np.array(column, dtype=object)
        if self.last:
            del batch["payload"]
        return batch

    def _member(self, outputs: dict[str, np.ndarray], row: int, frames: int) -> dict[str, np.ndarray]:
        """One utterance's outputs out of a padded batch's: its row, its real frames."""
        member = {}
        for name, array in outputs.items():
            array = array[row:row + 1]
            axis = self.frame_axes.get(name)
            if axis is not None and axis < array.ndim:
                array = array[(slice(None),) * axis + (slice(0, frames),)]
            member[name] = array
        return member

    def _run(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        records = [{**item, "node": self.node} for item in payload["skipped"] if item["id"] not in self.done]
        for group in payload["groups"]:
            todo = [row for row, id_ in enumerate(group["ids"]) if id_ not in self.done]
            if not todo:
                continue
            inputs = {k: v for k, v in group["inputs"].items() if k in self.runner.input_names}
            start = time.perf_counter()
            candidate = self.runner.infer(inputs)
            seconds = time.perf_counter() - start
            share = 1 / len(group["ids"])
            for row in todo:
                length = group["lengths"][row]
                frames = self.config.num_frames(length)
                case = ParityCase(group["ids"][row], {k: v[row:row + 1, :length] for k, v in group["inputs"].items()},
                                  [length], [group["texts"][row]])
                outcome = compare_case(case, self._member(group["reference"], row, frames),
                                       self._member(candidate, row, frames), output_names=group["output_names"],
                                       config=self.config, task=self.task, tokenizer=self.tokenizer,
                                       seconds=(group["seconds"] * share, seconds * share))
                records.append({"index": group["indices"][row], "id": group["ids"][row], "node": self.node,
                                "outcome": outcome.to_dict()})
        return records


def _builtin_check(files: Files, checkpoint: Files, latency_repeats: int, threads: int) -> dict[str, Any]:
    """A Ray task: the artifact's file hashes, its checkpoint's hash, the built-in cases and the latency."""
    import torch

    from hubert_export.build import verify_artifact

    torch.set_num_threads(threads)
    try:
        verification = verify_artifact(files.local(), reference=checkpoint.local(), latency_repeats=latency_repeats)
    except HubertExportError as exc:
        failure = _failure(exc, files, checkpoint)
        raise HubertExportError(failure["error"], exit_code=failure["exit_code"]) from None
    # isa: the CPU of the node that ran the built-in cases (verification.note_machine), INT8 layers with it.
    return {"outcomes": [o.to_dict() for o in verification.outcomes], "latency": verification.report.latency,
            "thresholds": verification.thresholds, "isa": verification.report.isa,
            "int8_layers": verification.report.int8_layers}


# ------------------------------------------------------------------------------------------ results
class ResultsFile:
    """RESULTS_DIR/<artifact>-<digest>.jsonl: a header line (what the results are of), then one
    line per utterance, appended and flushed as it arrives. Read back on a rerun: a header that
    differs is refused, a torn last line (a run killed mid-write) is dropped, an id is kept once."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            self._read(header)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"header": header}) + "\n")
        self.resumed = len(self.records)
        self._file = open(path, "a", encoding="utf-8")

    def _read(self, header: dict[str, Any]) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        good = 0  # bytes of complete lines
        for number, line in enumerate(lines, start=1):
            last = number == len(lines)
            if not line.strip():
                good += len(line) + (0 if last else 1)
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                if last:  # torn by a killed run: cut off, recomputed
                    break
                raise HubertExportError(f"{self.path} line {number} is not JSON: the results file is damaged; "
                                        "delete it (its utterances are then checked again)") from None
            if number == 1:
                if entry.get("header") != header:
                    raise HubertExportError(
                        f"{self.path} holds results of another check (other corpus, options or batching): pass "
                        "another --results-dir, or delete the file to start over")
            elif last:
                break  # no newline yet: the write may not be whole
            else:
                self.records.setdefault(entry["id"], entry)
            good += len(line) + 1
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def add(self, record: dict[str, Any]) -> bool:
        """Append `record` unless its utterance is already there; True when written."""
        if record["id"] in self.records:
            return False
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.records[record["id"]] = record
        return True

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------------------------------ the check
@dataclass
class _Subject:
    """One artifact being checked, as the driver sees it."""

    artifact: Artifact
    label: str
    checkpoint_dir: Path
    checkpoint_sha256: str
    task: str
    with_mask: bool
    hidden: bool
    min_samples: int
    max_samples: int
    max_batch: int
    num_gpus: float
    files: Files | None = None
    checkpoint: Files | None = None
    results: ResultsFile | None = None

    @property
    def column(self) -> str:
        return f"outcomes_{self.label}"


@dataclass
class CorpusCheck:
    """What `check_corpus` found: one report per artifact (by label) and the run's figures."""

    reports: dict[str, ParityReport]
    artifacts: dict[str, Path]
    results_dir: Path
    report_dirs: dict[str, Path] = field(default_factory=dict)
    utterances: int = 0  # in the corpus (after --limit/--sample)
    resumed: dict[str, int] = field(default_factory=dict)  # per artifact: utterances read back from its results
    computed: int = 0  # utterances run through the pipeline in this run
    skipped: int = 0  # utterances outside the artifacts' length range (left out, as check does)
    audio_seconds: float = 0.0  # of the utterances computed in this run (as run: cut to the range)
    padding_fraction: float = 0.0  # padded samples / all samples of this run's batches
    corpus_seconds: float = 0.0  # wall time of the corpus pipeline
    first_result_seconds: float | None = None  # from its start to the first batch's results: mostly actor start-up
    batches: int = 0
    nodes: int = 0  # Ray nodes whose artifact workers checked utterances in this run

    @property
    def passed(self) -> bool:
        return all(report.passed for report in self.reports.values())

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_PARITY_FAILED

    @property
    def throughput(self) -> float | None:
        """Audio seconds checked per wall second in this run's corpus pipeline."""
        return self.audio_seconds / self.corpus_seconds if self.corpus_seconds > 0 and self.computed else None

    def junit(self) -> str:
        """JUnit XML: the single-machine check's for one artifact; a <testsuites> of them for several."""
        if len(self.reports) == 1:
            return next(iter(self.reports.values())).to_junit()
        suites = ET.Element("testsuites")
        for report in self.reports.values():
            suites.append(ET.fromstring(report.to_junit()))
        return ET.tostring(suites, encoding="unicode")

    def summary(self) -> dict[str, Any]:
        return {"artifacts": {k: str(v) for k, v in self.artifacts.items()},
                "passed": {k: r.passed for k, r in self.reports.items()}, "utterances": self.utterances,
                "resumed": self.resumed, "computed": self.computed, "skipped": self.skipped,
                "batches": self.batches, "nodes": self.nodes, "audio_seconds": self.audio_seconds,
                "corpus_seconds": self.corpus_seconds, "first_result_seconds": self.first_result_seconds,
                "throughput": self.throughput,
                "padding_fraction": self.padding_fraction, "results_dir": str(self.results_dir)}


def _open_subjects(paths: list[str | Path], reference: str | Path | None) -> list[_Subject]:
    from hubert_export.hub import resolve_model

    subjects: list[_Subject] = []
    seen: dict[Path, str] = {}
    for path in paths:
        artifact = Artifact.open(path)
        resolved = artifact.path.resolve()
        if resolved in seen:
            raise HubertExportError(f"artifact {path} is named twice: list every artifact once")
        manifest = artifact.manifest
        contract = manifest.input_contract
        if contract.min.samples == contract.max.samples:
            raise HubertExportError(f"artifact {path} is compiled for one input shape, and a corpus check on Ray "
                                    "batches utterances of every length: check it without --ray")
        if contract.min.batch > 1:
            raise HubertExportError(f"artifact {path} takes batches of {contract.min.batch} or more, and a corpus "
                                    "check runs single utterances too: check it without --ray")
        checkpoint_dir = resolve_model(reference) if reference else Path(manifest.source.checkpoint)
        if not checkpoint_dir.is_dir():
            raise HubertExportError(f"the source checkpoint {checkpoint_dir} recorded in the manifest of {path} is "
                                    "not there: pass --reference CHECKPOINT_DIR")
        label = "".join(c if c.isalnum() or c in "-_." else "_" for c in artifact.path.name) or "artifact"
        if label in seen.values():
            label = f"{label}-{len(subjects)}"
        seen[resolved] = label
        subjects.append(_Subject(
            artifact=artifact, label=label, checkpoint_dir=checkpoint_dir.resolve(),
            checkpoint_sha256=manifest.source.checkpoint_sha256 or str(checkpoint_dir.resolve()),
            task=manifest.task, with_mask=contract.attention_mask,
            hidden=artifact.recipe().export.output_hidden_states, min_samples=contract.min.samples,
            max_samples=contract.max.samples, max_batch=contract.max.batch,
            num_gpus=1.0 if artifact.target == "tensorrt" else 0.0))
    return subjects


def _estimated_samples(utterance: Utterance, rate: int) -> int:
    """The utterance's length at `rate` from its header (or its decoded samples): for bucketing."""
    import soundfile as sf

    try:
        if utterance.samples is not None:
            frames, source_rate = max(np.shape(utterance.samples)), utterance.samples_rate or rate
        else:
            info = sf.info(io.BytesIO(utterance.encoded) if utterance.encoded is not None else str(utterance.path))
            frames, source_rate = info.frames, info.samplerate
    except (RuntimeError, ValueError, TypeError, OSError):
        return 0  # unreadable: the worker that loads it says why
    return -(-frames * rate // source_rate)


def plan_batches(lengths: list[int], batch_size: int, bucketing: bool) -> list[list[int]]:
    """Positions of `lengths` grouped into batches of up to `batch_size`: with `bucketing`, sorted
    by length first (similar lengths share a batch, so little is padding), else in corpus order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i)) if bucketing else list(range(len(lengths)))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of the samples run that are padding, for `batches` of positions in `lengths`."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 1 - sum(lengths[i] for b in batches for i in b) / total if total else 0.0


@dataclass(frozen=True)
class _PipelineOptions:
    """How the corpus pipeline runs: batching, how files reach the workers, and each pool's actors."""

    files: str
    workers: int
    reference_workers: int
    batch_size: int
    bucketing: bool
    cpus_per_worker: float
    threads: int
    runtime_env: dict[str, Any] | None
    worker_class: type


def check_corpus(
    artifacts: list[str | Path],
    data: str | Path | None,
    *,
    address: str | None = None,
    files: str = "store",
    workers: int = 1,
    reference_workers: int | None = None,
    batch_size: int = 1,
    bucketing: bool = True,
    results_dir: str | Path | None = None,
    reference: str | Path | None = None,
    corpus_options: CorpusOptions | None = None,
    normalize: bool = True,
    latency_repeats: int = 3,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    threads: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    worker_class: type | None = None,
    report_dir: str | Path | None = None,
    junit: str | Path | None = None,
) -> CorpusCheck:
    """`check_artifact` of every artifact over the corpus `data`, on Ray (module docstring).

    `address`: None starts a local Ray unless this process already joined one; `files` "store" or
    "shared" (how artifacts, checkpoints and audio reach the workers); `workers` actors per
    artifact pool, `reference_workers` in the eager pool (default `workers`: the eager model is
    often the slowest stage, so give it more);
    `batch_size` utterances per batch (1: the single-machine check's figures exactly; more: each
    utterance runs padded in a batch, with the attention mask where the model takes one), sorted
    into length buckets unless `bucketing` is False; `results_dir` holds the per-utterance results
    that a rerun resumes from (default: a new temporary directory); `cpus_per_worker` and
    `gpus_per_worker` (default 1 for TensorRT, else 0) are each actor's Ray resources, `threads`
    its intra-op threads (default: its CPUs), `runtime_env` Ray's runtime environment for the artifact
    actors (environment variables, packages), `worker_class` their class (an `ArtifactWorker` subclass).
    Reports go to `report_dir` (one folder per artifact when there are several) and `junit`.
    """
    reference_workers = workers if reference_workers is None else reference_workers
    subjects = _open_checked_subjects(artifacts, reference, files=files, workers=workers,
                                      reference_workers=reference_workers, batch_size=batch_size)
    corpus = read_corpus(data, corpus_options) if data is not None else None
    if results_dir is None:
        results_dir = tempfile.mkdtemp(prefix="hubert-export-results-") if corpus is not None else "."
    ray = connect(address)
    result = CorpusCheck({}, {s.label: s.artifact.path for s in subjects}, Path(results_dir))
    pipeline = _PipelineOptions(files=files, workers=workers, reference_workers=reference_workers,
                                batch_size=batch_size, bucketing=bucketing, cpus_per_worker=cpus_per_worker,
                                threads=_worker_threads(threads, cpus_per_worker), runtime_env=runtime_env,
                                worker_class=worker_class or ArtifactWorker)
    _share_with_workers(subjects, files, gpus_per_worker)
    builtin = _start_builtin_checks(ray, subjects, latency_repeats, pipeline)
    builtin_results = _run_checks(ray, subjects, corpus, corpus_options or CorpusOptions(), data, result, builtin,
                                  pipeline)
    order = {u.id: i for i, u in enumerate(corpus.utterances)} if corpus is not None else {}
    for subject in subjects:
        result.reports[subject.label] = _subject_report(subject, builtin_results[subject.label], order, normalize)
    _write_reports(result, report_dir, junit, one_artifact=len(subjects) == 1)
    return result


def _open_checked_subjects(artifacts: list[str | Path], reference: str | Path | None, *, files: str, workers: int,
                           reference_workers: int, batch_size: int) -> list[_Subject]:
    """The artifacts, opened, once the options are known to be good for them."""
    if batch_size < 1 or workers < 1 or reference_workers < 1:
        raise HubertExportError("--batch-size, --workers and --reference-workers must be positive")
    if files not in FILE_MODES:
        raise HubertExportError(f"--ray-files {files!r} is not one of {', '.join(FILE_MODES)}")
    require_ray()
    subjects = _open_subjects(artifacts, reference)
    for subject in subjects:
        if batch_size > subject.max_batch:
            raise HubertExportError(f"--batch-size {batch_size} is above the largest batch artifact "
                                    f"{subject.artifact.path} takes ({subject.max_batch}): pass --batch-size "
                                    f"{subject.max_batch} or less")
    return subjects


def _share_with_workers(subjects: list[_Subject], files: str, gpus_per_worker: float | None) -> None:
    """Each subject's artifact and checkpoint for the workers (a checkpoint shared by several, once)."""
    log.info(f"sending {len(subjects)} artifact(s) and their checkpoint(s) to the workers ({files})")
    checkpoints: dict[Path, Files] = {}
    for subject in subjects:
        subject.files = share_directory(subject.artifact.path, files,
                                        [MANIFEST_NAME, *sorted(subject.artifact.manifest.files)])
        if subject.checkpoint_dir not in checkpoints:
            checkpoints[subject.checkpoint_dir] = share_directory(subject.checkpoint_dir, files)
        subject.checkpoint = checkpoints[subject.checkpoint_dir]
        if gpus_per_worker is not None:
            subject.num_gpus = gpus_per_worker


def _start_builtin_checks(ray: Any, subjects: list[_Subject], latency_repeats: int,
                          pipeline: _PipelineOptions) -> dict[str, Any]:
    """One Ray task per artifact, with its actors' resources: its ObjectRef by label."""
    return {s.label: ray.remote(_builtin_check).options(num_cpus=pipeline.cpus_per_worker, num_gpus=s.num_gpus).remote(
            s.files, s.checkpoint, latency_repeats, pipeline.threads) for s in subjects}


def _run_checks(ray: Any, subjects: list[_Subject], corpus: Any, options: CorpusOptions, data: str | Path | None,
                result: CorpusCheck, builtin: dict[str, Any],
                pipeline: _PipelineOptions) -> dict[str, dict[str, Any]]:
    """The corpus pipeline (when there is a corpus), then the built-in checks' results by label."""
    try:
        if corpus is not None:
            _run_corpus(ray, subjects, corpus, options, data, result, pipeline)
        return {label: ray.get(ref) for label, ref in builtin.items()}
    except Exception as exc:
        cause = _user_error(exc)
        if cause is not None:
            raise cause from None
        raise
    finally:
        for subject in subjects:
            if subject.results is not None:
                subject.results.close()


def _subject_report(subject: _Subject, found: dict[str, Any], order: dict[str, int], normalize: bool) -> ParityReport:
    """`check_artifact`'s report: the built-in cases, then the corpus outcomes in corpus order."""
    outcomes = [CaseOutcome.from_dict(o) for o in found["outcomes"]]
    records = subject.results.records.values() if subject.results is not None else []
    kept = sorted((r for r in records if r["id"] in order and "outcome" in r), key=lambda r: order[r["id"]])
    outcomes += [CaseOutcome.from_dict(r["outcome"]) for r in kept]
    tokenizer = subject.artifact.tokenizer()
    report = summarize(outcomes, target=subject.artifact.target, precision=subject.artifact.precision,
                       task=subject.task, thresholds=found["thresholds"], tokenizer=tokenizer, normalize=normalize)
    report.latency, report.isa, report.int8_layers = found["latency"], found["isa"], found["int8_layers"]
    return report


def _write_reports(result: CorpusCheck, report_dir: str | Path | None, junit: str | Path | None, *,
                   one_artifact: bool) -> None:
    if report_dir is not None:
        for label, report in result.reports.items():
            folder = Path(report_dir) if one_artifact else Path(report_dir) / label
            report.write(folder)
            result.report_dirs[label] = folder
        (Path(report_dir) / "ray-check.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    if junit:
        Path(junit).write_text(result.junit())


def _run_corpus(ray: Any, subjects: list[_Subject], corpus: Any, options: CorpusOptions, data: str | Path,
                result: CorpusCheck, pipeline: _PipelineOptions) -> None:
    """The corpus part: plan, resume, run the pipeline, append results (fills `result`)."""
    from hubert_export.audio import FeatureExtractorConfig

    utterances = corpus.utterances
    result.utterances = len(utterances)
    _open_results(subjects, result, data, options, pipeline)
    start = time.perf_counter()
    real = padded = 0
    nodes: set[str] = set()
    for (_, task, with_mask, hidden, min_samples, max_samples), members in _reference_groups(subjects).items():
        pending = [i for i, u in enumerate(utterances) if any(u.id not in s.results.records for s in members)]
        if not pending:
            continue
        rate = FeatureExtractorConfig.from_dir(members[0].checkpoint_dir).sampling_rate
        batches = _planned_batches(utterances, pending, rate, max_samples, pipeline)
        spec = {"task": task, "with_mask": with_mask, "hidden": hidden, "min_samples": min_samples,
                "max_samples": max_samples}
        dataset = _corpus_dataset(ray, _batch_rows(utterances, pending, batches, pipeline.files), members, spec,
                                  pipeline)
        group_real, group_padded = _store_results(dataset, members, result, nodes, start, rate)
        real += group_real
        padded += group_padded
    result.corpus_seconds = time.perf_counter() - start
    result.nodes = len(nodes)
    result.padding_fraction = padded / (real + padded) if real + padded else 0.0


def _open_results(subjects: list[_Subject], result: CorpusCheck, data: str | Path, options: CorpusOptions,
                  pipeline: _PipelineOptions) -> None:
    """Each subject's results file, read back when a run of the same check left one."""
    header = {"format": RESULTS_FORMAT, "corpus": str(Path(data).resolve()),
              "corpus_options": dataclasses.asdict(options), "batch_size": pipeline.batch_size,
              "bucketing": pipeline.bucketing}
    for subject in subjects:
        manifest_sha = hashlib.sha256((subject.artifact.path / MANIFEST_NAME).read_bytes()).hexdigest()
        subject.results = ResultsFile(result.results_dir / f"{subject.label}-{manifest_sha[:12]}.jsonl",
                                      {**header, "manifest_sha256": manifest_sha})
        result.resumed[subject.label] = subject.results.resumed


def _reference_groups(subjects: list[_Subject]) -> dict[tuple, list[_Subject]]:
    """The subjects by checkpoint and input form: one reference (eager) pool per group, whose eager
    outputs every artifact of the group is compared with."""
    groups: dict[tuple, list[_Subject]] = {}
    for subject in subjects:
        key = (subject.checkpoint_sha256, subject.task, subject.with_mask, subject.hidden, subject.min_samples,
               subject.max_samples)
        groups.setdefault(key, []).append(subject)
    return groups


def _planned_batches(utterances: list[Utterance], pending: list[int], rate: int, max_samples: int,
                     pipeline: _PipelineOptions) -> list[list[int]]:
    """Batches of positions in `pending` (corpus indices), by the lengths the audio headers give."""
    lengths = [min(_estimated_samples(utterances[i], rate), max_samples) for i in pending]
    batches = plan_batches(lengths, pipeline.batch_size, pipeline.bucketing)
    log.info(f"corpus: {len(pending)} of {len(utterances)} utterances to check in {len(batches)} batches "
             f"(estimated padding {padding_fraction(lengths, batches):.1%}), {pipeline.reference_workers} eager and "
             f"{pipeline.workers} artifact worker(s) per pool")
    return batches


def _batch_rows(utterances: list[Utterance], pending: list[int], batches: list[list[int]],
                files: str) -> list[dict[str, Any]]:
    """One dataset row per batch: its number and its utterances, packed."""
    rows = []
    for number, batch in enumerate(batches):
        members_data = []
        for position in batch:
            index = pending[position]
            utterance = utterances[index]
            encoded = utterance.encoded
            if encoded is None and utterance.path is not None and files == "store":
                encoded = utterance.path.read_bytes()  # the audio travels with the row
            members_data.append({
                "index": index, "id": utterance.id, "text": utterance.text, "origin": utterance.origin,
                "path": str(utterance.path.resolve()) if utterance.path is not None and encoded is None else None,
                "encoded": encoded, "samples": utterance.samples, "samples_rate": utterance.samples_rate})
        rows.append({"batch": number, "members": pack_payload(members_data)})
    return rows


def _corpus_dataset(ray: Any, rows: list[dict[str, Any]], members: list[_Subject], spec: dict[str, Any],
                    pipeline: _PipelineOptions) -> Any:
    """The Ray dataset of `rows` through the eager pool, then one pool per artifact of `members`."""
    remote_args: dict[str, Any] = {"runtime_env": dict(pipeline.runtime_env)} if pipeline.runtime_env else {}
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    dataset = dataset.map_batches(
        ReferenceWorker, fn_constructor_kwargs={"checkpoint": members[0].checkpoint, "spec": spec,
                                                "threads": pipeline.threads},
        batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pipeline.reference_workers),
        num_cpus=pipeline.cpus_per_worker, **remote_args)
    for subject in members:
        dataset = dataset.map_batches(
            pipeline.worker_class, fn_constructor_kwargs={"files": subject.files, "column": subject.column,
                                                          "done": frozenset(subject.results.records),
                                                          "threads": pipeline.threads,
                                                          "last": subject is members[-1]},
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pipeline.workers),
            num_cpus=pipeline.cpus_per_worker, num_gpus=subject.num_gpus or None, **remote_args)
    # No operator after the last pool: a task there would wait for CPUs the actors hold, and
    # every result would reach the driver only at the end.
    return dataset


def _store_results(dataset: Any, members: list[_Subject], result: CorpusCheck, nodes: set[str], start: float,
                   rate: int) -> tuple[int, int]:
    """Each batch's outcomes appended to the results files as it arrives (the run's figures in
    `result`, the nodes that ran it in `nodes`). Returns the real and padded samples run."""
    real = padded = 0
    for row in dataset.iter_rows():
        _store_row(row, members, result, nodes)
        result.batches += 1
        if result.first_result_seconds is None:
            result.first_result_seconds = time.perf_counter() - start
        real += int(row["real"])
        padded += int(row["padded"])
        result.audio_seconds += int(row["real"]) / rate
    return real, padded


def _store_row(row: dict[str, Any], members: list[_Subject], result: CorpusCheck, nodes: set[str]) -> None:
    """One batch's outcomes, from every artifact's column; a worker's bad-input error raised here."""
    computed = set()
    for subject in members:
        outcome = json.loads(row[subject.column])
        if "error" in outcome:
            raise HubertExportError(outcome["error"], exit_code=outcome["exit_code"])
        for record in outcome["records"]:
            if subject.results.add(record):
                computed.add(record["id"])
                nodes.add(record["node"])
                if "skipped" in record:
                    result.skipped += 1
        subject.results.sync()
    result.computed += len(computed)


# ------------------------------------------------------------------------------------------ build matrix
@dataclass
class MatrixEntry:
    """One recipe of a build matrix: where its artifact went and how its gate ended."""

    recipe: str
    target: str
    precision: str
    output: Path
    passed: bool = False
    error: str | None = None  # the build stopped: bad input or a bug (the artifact was not written)
    exit_code: int = EXIT_OK
    size_bytes: int | None = None
    latency_seconds: float | None = None
    worst: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return "ERROR" if self.error else ("PASS" if self.passed else "FAIL")


def matrix_table(entries: list[MatrixEntry]) -> str:
    """The summary of a build matrix as a Markdown table."""
    lines = ["| recipe | target | precision | gate | size MB | latency ms | build s | worst / error | artifact |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        if e.error:
            detail = e.error
        else:
            keys = ("argmax_agreement", "relative_l2_error", "max_abs_error", "cer")
            detail = ", ".join(f"{k} {e.worst[k]:.3g}" for k in keys if k in e.worst)
            if e.failures:
                detail += f"; {len(e.failures)} failure(s): {e.failures[0]}"
        lines.append(f"| {e.recipe} | {e.target} | {e.precision} | {e.verdict} | "
                     f"{'' if e.size_bytes is None else f'{e.size_bytes / 1e6:.1f}'} | "
                     f"{'' if e.latency_seconds is None else f'{e.latency_seconds * 1e3:.1f}'} | {e.seconds:.0f} | "
                     f"{detail.replace('|', '/')} | {e.output} |")
    return "\n".join(lines) + "\n"


def matrix_exit_code(entries: list[MatrixEntry]) -> int:
    """0 when every build passed its gate; else the worst: 1 a gate failed, 2 bad input, 3 a bug."""
    return max((e.exit_code for e in entries), default=EXIT_OK)


def _build_one(recipe: Any, checkpoint: Files, recorded_checkpoint: str, output: str | None, threads: int,
               build_options: dict[str, Any]) -> dict[str, Any]:
    """A Ray task: one recipe built on a worker. `output` None: built in a local scratch folder
    and returned as {name: bytes} (store mode); else written there (a shared path)."""
    import torch

    from hubert_export.build import export_artifact

    torch.set_num_threads(threads)
    scratch = None
    if output is None:
        scratch = Path(tempfile.mkdtemp(prefix="hubert-export-build-"))
        target = scratch / "artifact"
    else:
        target = Path(output)
    try:
        started = time.perf_counter()
        built = export_artifact(checkpoint.local(), target, recipe, recorded_checkpoint=recorded_checkpoint,
                                **build_options)
        summary = {"passed": built.passed, "size_bytes": built.size_bytes, "latency_seconds": built.latency_seconds,
                   "worst": built.report.worst(), "failures": built.report.failures,
                   "seconds": time.perf_counter() - started}
        return {"summary": summary, "files": _pack(target) if scratch is not None else None}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def build_matrix(
    recipes: list[str | Path],
    model_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    *,
    use_ray: bool = True,
    address: str | None = None,
    files: str = "store",
    overwrite: bool = False,
    latency_repeats: int = 3,
    data_dir: str | Path | None = None,
    corpus_options: CorpusOptions | None = None,
    normalize: bool = True,
    cpus_per_build: float = 1.0,
    gpus_per_build: float | None = None,
) -> list[MatrixEntry]:
    """Build every recipe from one checkpoint, each gated by its parity check, in parallel on Ray
    (one task per recipe, with `cpus_per_build` CPUs and, for TensorRT, `gpus_per_build` GPUs,
    default 1) or one after another in this process (`use_ray` False). Artifacts go to
    `output_dir`/<recipe name> (default artifacts/<model>-<recipe name>). With `files` "store",
    the checkpoint travels through the object store and each artifact comes back through it, to be
    moved into place here; with "shared", workers read and write the paths themselves. A build
    that stops on an error is an entry with `error` set; the others go on."""
    from hubert_export.build import DEFAULT_MODEL_DIR, export_artifact
    from hubert_export.hub import resolve_model
    from hubert_export.recipes import load_recipe

    model_dir = resolve_model(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not Path(model_dir).is_dir():
        raise HubertExportError(f"model directory {model_dir} does not exist: pass --model a checkpoint directory "
                                "or a model id (owner/name) in the local Hugging Face cache")
    if not recipes:
        raise HubertExportError("--matrix names no recipe: pass one or more recipe files")
    loaded = [load_recipe(r) for r in recipes]
    names = [r.name for r in loaded]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise HubertExportError(f"recipes share the name {twice[0]!r}, so their artifacts would share a folder: "
                                "give each a distinct `name`")
    model_name = Path(model_dir).resolve().name
    outputs = [Path(output_dir) / r.name if output_dir is not None else Path("artifacts") / f"{model_name}-{r.name}"
               for r in loaded]
    entries = [MatrixEntry(r.name, r.target, r.precision, out) for r, out in zip(loaded, outputs)]
    build_options = {"overwrite": overwrite, "latency_repeats": latency_repeats, "data_dir": data_dir,
                     "corpus_options": corpus_options, "normalize": normalize}
    if not use_ray:
        for recipe, entry in zip(loaded, entries):
            started = time.perf_counter()
            try:
                built = export_artifact(model_dir, entry.output, recipe, **build_options)
            except HubertExportError as exc:
                _matrix_failed(entry, exc)
                continue
            _matrix_record(entry, {"passed": built.passed, "size_bytes": built.size_bytes,
                                   "latency_seconds": built.latency_seconds, "worst": built.report.worst(),
                                   "failures": built.report.failures, "seconds": time.perf_counter() - started})
        return entries
    if files not in FILE_MODES:
        raise HubertExportError(f"--ray-files {files!r} is not one of {', '.join(FILE_MODES)}")
    _matrix_on_ray(loaded, entries, model_dir, address=address, files=files, cpus_per_build=cpus_per_build,
                   gpus_per_build=gpus_per_build, build_options=build_options)
    return entries


def _matrix_on_ray(loaded: list[Any], entries: list[MatrixEntry], model_dir: str | Path, *, address: str | None,
                   files: str, cpus_per_build: float, gpus_per_build: float | None,
                   build_options: dict[str, Any]) -> None:
    """The matrix's builds as Ray tasks, their outcomes written into `entries`."""
    from hubert_export import artifact as artifacts

    ray = connect(address)
    checkpoint = share_directory(model_dir, files)
    gpus_available = ray.cluster_resources().get("GPU", 0)
    overwrite = build_options["overwrite"]
    pending: dict[Any, tuple[MatrixEntry, contextlib.ExitStack, Path | None]] = {}
    # Each output folder is claimed (artifacts.building) before its build starts, so a taken --output
    # fails at once, and held until the build's files are stored; `claims` releases every folder
    # still held if the driver stops (Ctrl-C, a lost cluster), leaving nothing half-written.
    with contextlib.ExitStack() as claims:
        for recipe, entry in zip(loaded, entries):
            gpus = (1.0 if gpus_per_build is None else gpus_per_build) if recipe.target == "tensorrt" else 0.0
            if gpus > gpus_available:
                _matrix_failed(entry, HubertExportError(
                    f"recipe {entry.recipe} builds for {recipe.target}, which needs a GPU, and the cluster has none: "
                    "add a GPU node or leave the recipe out"))
                continue
            claim, temp = contextlib.ExitStack(), None
            if files == "store":
                try:
                    temp = claim.enter_context(artifacts.building(entry.output, overwrite=overwrite))
                except HubertExportError as exc:
                    _matrix_failed(entry, exc)
                    continue
                claims.push(claim)
            task = ray.remote(_build_one).options(num_cpus=cpus_per_build, num_gpus=gpus, max_retries=1)
            ref = task.remote(recipe, checkpoint, str(Path(model_dir).resolve()),
                              None if files == "store" else str(entry.output.resolve()),
                              _worker_threads(None, cpus_per_build), build_options)
            pending[ref] = (entry, claim, temp)
        log.info(f"matrix: {len(pending)} build(s) running on Ray")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            entry, claim, temp = pending.pop(done[0])
            try:
                with claim:  # on leaving: the folder moved into place, or on an error discarded
                    built = ray.get(done[0])
                    for name, data in built["files"].items() if temp is not None else ():
                        (temp / name).parent.mkdir(parents=True, exist_ok=True)
                        (temp / name).write_bytes(data)
                _matrix_record(entry, built["summary"])
            except Exception as exc:  # noqa: BLE001  (every build's outcome goes into the table)
                _matrix_failed(entry, _user_error(exc) or exc)


def _matrix_record(entry: MatrixEntry, summary: dict[str, Any]) -> None:
    for key, value in summary.items():
        setattr(entry, key, value)
    entry.exit_code = EXIT_OK if entry.passed else EXIT_PARITY_FAILED
    log.info(f"matrix: {entry.recipe} {entry.verdict} ({entry.seconds:.0f} s)")


def _matrix_failed(entry: MatrixEntry, exc: BaseException) -> None:
    entry.error = str(exc).splitlines()[0] if isinstance(exc, HubertExportError) else \
        f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    entry.exit_code = exc.exit_code if isinstance(exc, HubertExportError) else EXIT_INTERNAL
    log.info(f"matrix: {entry.recipe} ERROR: {entry.error}")
