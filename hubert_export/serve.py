"""`hubert-export serve`: artifacts on Triton Inference Server (PyTriton), KServe v2 over HTTP and gRPC.

Each artifact is one Triton model. A request carries one recording, as `audio` (FP32 samples at
the model's rate, 16 kHz mono, shape [1, samples]) or `audio_file` (BYTES: a WAV/FLAC/OGG file,
decoded and resampled by `audio.decode_audio`, the parity harness's front end). The model runs
what `transcribe` runs, per request:

* CTC: the whole recording's normalisation and chunking (`Transcriber.plan`), every chunk through
  the artifact's runner, the chunks' frames stitched back (`ChunkPlan.keep`) and greedy-decoded:
  outputs `logits` (frames, vocab) and `text`. A recording longer than the artifact's input
  contract is chunked, so any length is served.
* features (`last_hidden_state`) and sequence classification (`logits`, `label`): Hugging Face's
  per-utterance normalisation; a recording outside the contract's length range is refused.

Triton's dynamic batcher hands one call a list of requests (ragged: any lengths); their chunks
run together. Models that take an attention mask get padded batches (padding is masked, so each
row's output is its own); models without one (group-norm encoders, whose output changes with
padding) only batch chunks of the same length: a length bucket is one length.

A bad request (no input, both inputs, NaN, empty, too long, an undecodable file) fails alone
with INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT) and a one-line message; the others in its batch
are answered. PyTriton 0.7 answers every error of its callable with a traceback and HTTP 500 for
the whole batch, so `_patch_pytriton` edits the proxy it loads into Triton (per-request errors, and
`allow_ragged_batch` on `audio`); that is why the extra pins nvidia-pytriton==0.7.0.

SIGTERM and SIGINT drain: requests already inside a model finish, later ones get UNAVAILABLE,
then Triton and every process it started stop.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubert_export.errors import HubertExportError

log = logging.getLogger(__name__)

SERVE_INSTALL = ('pip install "hubert-export[serve]" in a virtual environment of its own (PyTriton pins '
                 'numpy<2): python3 -m venv .venv-serve && .venv-serve/bin/pip install torch==2.13.0 && '
                 '.venv-serve/bin/pip install -e ".[serve]" (docs/serve.md)')
INPUTS = ("audio", "audio_file")
# A response holding this key becomes that request's error: [code, message] (see _patch_pytriton).
ERROR_KEY = "__hubert_export_error__"
PAD_RATIO = 1.25  # a batch of a masked model pads its rows to at most 1.25x the shortest
DRAIN_SECONDS = 25.0  # how long a stop waits for requests inside the models (the tests ask for exit in 30 s)


DEFAULT_INSTANCES = 2


@dataclass(frozen=True)
class ServeOptions:
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    address: str = "127.0.0.1"  # Triton listens on 0.0.0.0 unless told otherwise
    max_batch: int = 16  # requests per model call (Triton's max_batch_size); 1: no dynamic batching
    max_queue_delay_ms: float = 2.0  # how long Triton's batcher waits for more requests
    # Model instances (each its own runner) per artifact. Two: one computes while the next batch
    # forms. At 16 clients on 2 cores (benchmarks/results/serve*.md) two single-threaded instances
    # served 1.02x and 1.99x the runner's best batched throughput, one two-threaded instance 0.74x
    # and 0.80x.
    instances: int = DEFAULT_INSTANCES
    threads: int | None = None  # intra-op threads per instance; default: the cores shared by the instances


def require_pytriton() -> None:
    """Refuse, in one line, when the [serve] extra is not installed."""
    if importlib.util.find_spec("pytriton") is None:
        raise HubertExportError(f"serve needs PyTriton: {SERVE_INSTALL}")


class RequestError(HubertExportError):
    """A request the model cannot answer as sent: its client's mistake (INVALID_ARG, HTTP 400)."""


def _error(code: str, message: str) -> dict[str, np.ndarray]:
    return {ERROR_KEY: np.array([[code.encode(), message.encode("utf-8", "replace")]], dtype=np.object_)}


def output_dims(shape: list[str | int]) -> tuple[int, ...]:
    """A manifest output shape without its batch axis, symbolic axes (frames) as -1."""
    return tuple(d if isinstance(d, int) else -1 for d in shape[1:])


@dataclass
class _Job:
    """One request's audio cut into what the runner takes, and how its outputs become the response."""

    pieces: list[np.ndarray]
    finish: Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]]


class ModelService:
    """One served artifact (one model instance): its runner, front end and the task's outputs.

    `infer` is the PyTriton callable: a list of requests in, one response (or error) per request out.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, verified: bool = False) -> None:
        """`verified`: the artifact's files were hashed against its manifest already (`serve` does
        it once per artifact, not once per instance); otherwise they are hashed here."""
        from hubert_export.artifact import Artifact
        from hubert_export.audio import MIN_SAMPLES, FeatureExtractorConfig
        from hubert_export.backends import load_runner
        from hubert_export.model import load_config

        self.path = Path(path)
        artifact = Artifact.open(self.path)
        if not verified:
            artifact.verify_files()  # check's file verification: a modified artifact is not served
        manifest = artifact.manifest
        self.task = manifest.task
        self.contract = manifest.input_contract
        if self.contract.min.batch > 1 and self.contract.window is None:
            raise HubertExportError(f"artifact {self.path} takes batches of {self.contract.min.batch} or more, and "
                                    "a server answers single requests too: rebuild it with --min-shape 1,...")
        self.config = load_config(self.path)
        self.fe = FeatureExtractorConfig.from_dir(self.path)
        self.outputs = {o.name: o for o in (manifest.io.outputs if manifest.io else [])}
        self.frame_axes = manifest.frame_axes()
        self.min_samples = max(MIN_SAMPLES, self.config.receptive_field)
        self.transcriber = None
        if self.task == "ctc":
            from hubert_export.transcribe import Transcriber

            self.transcriber = Transcriber(self.path, threads=threads, verified=True)
            self.runner = self.transcriber.runner
        else:
            self.runner = load_runner(artifact, threads=threads)
        self.mask = "attention_mask" in self.runner.input_names
        # Rows per runner call: the batch the artifact was optimised for (its contract's opt shape). On CPUs
        # bigger batches ran slower per second of audio (benchmarks/results/serve.md); build with
        # --opt-shape 16,... (a GPU) to have the server's batches run as one call.
        self.max_rows = max(1, min(self.contract.opt.batch, self.contract.max.batch))
        self._lock = threading.Lock()
        self.in_flight = 0
        self.draining = False

    # ------------------------------------------------------------------------------- the signature
    def triton_outputs(self) -> list[tuple[str, type, tuple[int, ...]]]:
        """(name, dtype, dims without the batch axis) of every output, from the manifest."""
        if self.task == "ctc":
            logits = self.outputs["logits"]
            return [("logits", np.float32, output_dims(logits.shape)), ("text", np.bytes_, (1,))]
        served = [(o.name, np.float32, output_dims(o.shape)) for o in self.outputs.values()]
        if self.task == "sequence-classification":
            served.append(("label", np.bytes_, (1,)))
        return served

    # ------------------------------------------------------------------------------- requests
    def infer(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        with self._lock:
            if self.draining:
                return [_error("UNAVAILABLE", "the server is shutting down: retry on another replica")
                        for _ in requests]
            self.in_flight += len(requests)
        try:
            return self._infer(requests)
        finally:
            with self._lock:
                self.in_flight -= len(requests)

    def _infer(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        jobs: list[_Job | dict[str, np.ndarray]] = []
        for request in requests:
            try:
                jobs.append(self._prepare(request))
            except HubertExportError as exc:  # the request's own fault: it alone fails
                jobs.append(_error("INVALID_ARG", str(exc)))
        pieces = [piece for job in jobs if isinstance(job, _Job) for piece in job.pieces]
        try:
            outputs = self._run(pieces) if pieces else []
        except HubertExportError as exc:
            return [job if isinstance(job, dict) else _error("INVALID_ARG", str(exc)) for job in jobs]
        except Exception as exc:  # a bug or a runtime failure: every request of the batch gets one line
            log.exception("inference failed")
            return [job if isinstance(job, dict) else _error("INTERNAL", f"inference failed: {type(exc).__name__}: {exc}")
                    for job in jobs]
        responses, at = [], 0
        for job in jobs:
            if isinstance(job, dict):
                responses.append(job)
                continue
            responses.append(job.finish(outputs[at: at + len(job.pieces)]))
            at += len(job.pieces)
        return responses

    def _waveform(self, request: Any) -> np.ndarray:
        from hubert_export.audio import decode_audio

        data = request.data if hasattr(request, "data") else request
        given = [name for name in INPUTS if name in data]
        if len(given) != 1:
            raise RequestError(f"send exactly one of the inputs audio (FP32 samples at {self.fe.sampling_rate} Hz, "
                               f"shape [1, samples]) or audio_file (BYTES, a WAV/FLAC/OGG file, shape [1, 1]); "
                               f"got {', '.join(given) or 'neither'}")
        name = given[0]
        array = data[name]
        if array.shape[0] != 1:
            raise RequestError(f"{name} has shape {list(array.shape)}: send one recording per request "
                               f"({'[1, samples]' if name == 'audio' else '[1, 1]'})")
        if name == "audio":
            return decode_audio(array[0], self.fe.sampling_rate, source_rate=self.fe.sampling_rate,
                                label="audio", min_samples=self.min_samples)
        encoded = array.reshape(-1)[0]
        if not isinstance(encoded, (bytes, bytearray, np.bytes_)):
            raise RequestError("audio_file must hold the bytes of one WAV, FLAC or OGG file")
        return decode_audio(bytes(encoded), self.fe.sampling_rate, label="audio_file", min_samples=self.min_samples)

    def _prepare(self, request: Any) -> _Job:
        waveform = self._waveform(request)
        if self.transcriber is not None:
            return self._prepare_ctc(waveform)
        return self._prepare_utterance(waveform)

    def _prepare_ctc(self, waveform: np.ndarray) -> _Job:
        from hubert_export.audio import ArrayStream

        stream = ArrayStream(waveform, "audio")
        plan = self.transcriber.plan(stream)  # transcribe's defaults: the same chunks, so the same text
        pieces = [plan.chunk(stream, k) for k in range(len(plan.spans))]
        tokenizer = self.transcriber.tokenizer

        def finish(outputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            logits = np.concatenate([plan.keep(k, out["logits"]) for k, out in enumerate(outputs)])
            text = tokenizer.decode_ids(logits.argmax(axis=-1).astype(np.int32))
            return {"logits": logits[None], "text": np.array([[text.encode("utf-8")]], dtype=np.object_)}

        return _Job(pieces, finish)

    def _prepare_utterance(self, waveform: np.ndarray) -> _Job:
        from hubert_export.audio import prepare_batch

        rate, samples = self.fe.sampling_rate, waveform.shape[0]
        window = self.contract.window
        high = window.samples if window is not None else self.contract.max.samples
        if samples > high:
            raise RequestError(f"audio of {samples} samples ({samples / rate:.2f} s) is longer than this artifact's "
                               f"limit of {high} samples ({high / rate:g} s): split the recording, or rebuild the "
                               "artifact with a larger --max-shape")
        if window is None and samples < self.contract.min.samples:
            raise RequestError(f"audio of {samples} samples is shorter than this artifact's minimum of "
                               f"{self.contract.min.samples} samples: send a longer recording")
        piece = prepare_batch([waveform], self.fe)["input_values"][0]  # Hugging Face's per-utterance normalisation
        labels = self.config.id2label

        def finish(outputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            response = {name: value[None] for name, value in outputs[0].items()}
            if self.task == "sequence-classification":
                label = labels.get(int(outputs[0]["logits"].argmax()), "")
                response["label"] = np.array([[label.encode("utf-8")]], dtype=np.object_)
            return response

        return _Job([piece], finish)

    # ------------------------------------------------------------------------------- the runner
    def _run(self, pieces: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Every piece through the runner, batched, each output cut back to its own frames."""
        order = sorted(range(len(pieces)), key=lambda i: pieces[i].shape[0])
        groups: list[list[int]] = []
        for i in order:
            last = groups[-1] if groups else None
            # Length buckets. Without an attention mask padding changes the output: only equal lengths
            # share a call. With one, padding is masked but still computed: rows within PAD_RATIO of the
            # bucket's shortest (measured: one 10 s row padding fifteen 1-2 s rows cost 2x throughput).
            shortest = pieces[last[0]].shape[0] if last else 0
            limit = shortest * PAD_RATIO if self.mask else shortest
            if last is None or len(last) == self.max_rows or pieces[i].shape[0] > limit:
                groups.append([i])
            else:
                last.append(i)
        results: list[dict[str, np.ndarray]] = [{} for _ in pieces]
        for group in groups:
            lengths = [pieces[i].shape[0] for i in group]
            values = np.full((len(group), max(lengths)), self.fe.padding_value, dtype=np.float32)
            mask = np.zeros(values.shape, dtype=np.int64)
            for row, (i, length) in enumerate(zip(group, lengths)):
                values[row, :length] = pieces[i]
                mask[row, :length] = 1
            inputs = {"input_values": values}
            if self.mask:
                inputs["attention_mask"] = mask
            outputs = self.runner.infer(inputs)
            for row, (i, length) in enumerate(zip(group, lengths)):
                for name, value in outputs.items():
                    out = value[row]
                    axis = self.frame_axes.get(name)
                    if axis is not None:  # the frames of this row's own length (axis - 1: the batch axis is gone)
                        out = np.take(out, np.arange(self.config.num_frames(length)), axis=axis - 1)
                    results[i][name] = out
        return results

    def close(self) -> None:
        self.runner.close()


# ----------------------------------------------------------------------------------- PyTriton
_PATCHED = False
_WRAP_RESPONSE = ("def _wrap_response(response: Response, requested_outputs_names, model_outputs_dict):\n"
                  "    if response.data is not None:")
_WRAP_ERROR = (
    "def _wrap_response(response: Response, requested_outputs_names, model_outputs_dict):\n"
    f"    if response.data is not None and {ERROR_KEY!r} in response.data:  # hubert-export: one request's error\n"
    f"        code, message = (v.decode('utf-8', 'replace') for v in response.data[{ERROR_KEY!r}].reshape(-1)[:2])\n"
    "        return pb_utils.InferenceResponse(error=pb_utils.TritonError(\n"
    "            message, getattr(pb_utils.TritonError, code, pb_utils.TritonError.INTERNAL)))\n"
    "    if response.data is not None:")

_COPY_FRAME = '            shm.buf[offset + total_size : offset + total_size + frame.nbytes] = frame.cast("B")\n'
# (proxy file, text, replacement): per-request errors; an empty tensor (audio of shape [1, 0]), which
# 0.7.0's shared-memory copy cannot cast, passed on so that the request gets "audio is empty".
_PROXY_EDITS = [("model.py", _WRAP_RESPONSE, _WRAP_ERROR),
                ("data.py", _COPY_FRAME, "            if frame.nbytes:\n    " + _COPY_FRAME)]


def _patch_pytriton() -> None:
    """Per-request errors, empty inputs and ragged batches in PyTriton 0.7's proxy (see the module docstring)."""
    global _PATCHED
    if _PATCHED:
        return
    from pytriton.models import model as pytriton_model

    proxy_files, model_config = pytriton_model.Model.get_proxy_model_files, pytriton_model.Model.get_model_config

    def get_proxy_model_files(self: Any) -> dict[str, bytes]:
        files = proxy_files(self)
        for file, before, after in _PROXY_EDITS:
            key = f"file:{self.model_version}/{file}"
            source = files[key].decode()
            if before not in source:
                raise HubertExportError("this PyTriton's proxy differs from 0.7.0's: install nvidia-pytriton==0.7.0 "
                                        "(the [serve] extra pins it)")
            files[key] = source.replace(before, after, 1).encode()
        return files

    def get_model_config(self: Any) -> dict:
        config = model_config(self)
        for entry in config.get("input", []):
            if entry.get("name") == "audio":  # requests of any length share a batch: we batch their chunks ourselves
                entry["allow_ragged_batch"] = True
        return config

    pytriton_model.Model.get_proxy_model_files = get_proxy_model_files
    pytriton_model.Model.get_model_config = get_model_config
    _PATCHED = True


def _use_own_libpython() -> None:
    """Triton's Python-back-end stub loads libpython from the default library path, which may be
    another patch release than this interpreter's (the model then fails to load with
    "'_thread.RLock' object has no attribute '_recursion_count'"): this interpreter's first."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])


def model_names(artifacts: list[Path], names: list[str] | None) -> list[str]:
    """Each artifact's model name: its directory's name, or the --name given for it."""
    import re

    if names and len(names) != len(artifacts):
        raise HubertExportError(f"{len(names)} --name for {len(artifacts)} artifacts: give one --name per artifact, "
                                "in the same order, or none")
    chosen = list(names) if names else [Path(a).resolve().name for a in artifacts]
    for name in chosen:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise HubertExportError(f"model name {name!r} is not usable in a URL: pass --name with letters, digits, "
                                    "'_', '.' and '-' only")
    duplicates = sorted({n for n in chosen if chosen.count(n) > 1})
    if duplicates:
        raise HubertExportError(f"two artifacts would both be model {duplicates[0]!r}: pass --name for each")
    return chosen


def check_batching_options(max_batch: int, max_queue_delay_ms: float, instances: int) -> None:
    """The batching and instance options `serve` and a written model repository share, one line each."""
    if max_batch < 1:
        raise HubertExportError(f"--max-batch {max_batch} must be at least 1 (1: no dynamic batching)")
    if instances < 1:
        raise HubertExportError(f"--instances {instances} must be at least 1")
    if not max_queue_delay_ms >= 0:
        raise HubertExportError(f"--max-queue-delay-ms {max_queue_delay_ms} must be 0 or more")


def _check_options(options: ServeOptions) -> None:
    check_batching_options(options.max_batch, options.max_queue_delay_ms, options.instances)
    ports = [options.http_port, options.grpc_port, options.metrics_port]
    if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
        raise HubertExportError(f"ports {ports} must be three different numbers in 1..65535")
    for flag, port in zip(("--http-port", "--grpc-port", "--metrics-port"), ports):
        # Triton would fail minutes of model loading later, with a log line instead of a message.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((options.address, port))
            except OSError as exc:
                raise HubertExportError(f"{flag} {port}: cannot listen on {options.address}:{port} "
                                        f"({exc.strerror}): pick a free port") from None


def serve(artifacts: list[str | Path], *, names: list[str] | None = None,
          options: ServeOptions = ServeOptions(), stop: threading.Event | None = None) -> None:
    """Serve the artifacts on Triton until SIGTERM or SIGINT (or `stop` is set); then drain and stop.

    Every artifact's files are verified and its runners loaded before Triton starts: a modified
    artifact or one that cannot load stops the command with exit 2 and no server started.
    """
    from hubert_export.artifact import Artifact

    require_pytriton()
    _check_options(options)
    paths = [Path(a) for a in artifacts]
    chosen = model_names(paths, names)
    stop = stop or threading.Event()
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            installed[signum] = signal.signal(signum, lambda *_: stop.set())
    threads = options.threads or max(1, (os.cpu_count() or 1) // options.instances)
    services: dict[str, list[ModelService]] = {}
    try:
        for name, path in zip(chosen, paths):
            log.info(f"verifying the files of {path}")
            Artifact.open(path).verify_files()  # once: every instance below loads these same files
            log.info(f"loading {path} as model {name} ({options.instances} instance(s), {threads} thread(s) each)")
            services[name] = []  # filled one by one, so that the finally below closes what did load
            for _ in range(options.instances):
                services[name].append(ModelService(path, threads=threads, verified=True))
        if not stop.is_set():
            _run_triton(services, options, stop)
    finally:
        for service in (s for group in services.values() for s in group):
            service.close()
        for signum, handler in installed.items():
            signal.signal(signum, handler)


def _run_triton(services: dict[str, list[ModelService]], options: ServeOptions, stop: threading.Event) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    _use_own_libpython()
    _patch_pytriton()
    logging.getLogger("pytriton").setLevel(logging.WARNING)  # per-request lines
    config = TritonConfig(http_address=options.address, grpc_address=options.address,
                          metrics_address=options.address, http_port=options.http_port,
                          grpc_port=options.grpc_port, metrics_port=options.metrics_port,
                          exit_timeout_secs=5, log_verbose=0)
    triton = Triton(config=config)
    try:
        for name, group in services.items():
            inputs = [Tensor(name="audio", dtype=np.float32, shape=(-1,), optional=True),
                      Tensor(name="audio_file", dtype=np.bytes_, shape=(1,), optional=True)]
            outputs = [Tensor(name=n, dtype=d, shape=dims) for n, d, dims in group[0].triton_outputs()]
            batcher = DynamicBatcher(max_queue_delay_microseconds=int(options.max_queue_delay_ms * 1000))
            triton.bind(model_name=name, infer_func=[s.infer for s in group], inputs=inputs, outputs=outputs,
                        config=ModelConfig(max_batch_size=options.max_batch, batcher=batcher), strict=False)
        triton.run()
        print(f"serving {', '.join(services)} on http://{options.address}:{options.http_port} "
              f"(gRPC {options.address}:{options.grpc_port}, metrics "
              f"http://{options.address}:{options.metrics_port}/metrics)", flush=True)
        while not stop.wait(1.0):
            if not triton.is_alive():
                raise HubertExportError("Triton Inference Server stopped unexpectedly: see its log above")
        log.info("stopping: draining the requests in flight")
        _drain([s for group in services.values() for s in group])
    finally:
        triton.stop()  # stops tritonserver and its Python-back-end stubs, removes the workspace
    print("stopped", flush=True)


def _drain(services: list[ModelService]) -> None:
    """Refuse new requests, then wait (at most DRAIN_SECONDS) for those inside a model to finish."""
    for service in services:
        with service._lock:
            service.draining = True
    deadline = time.monotonic() + DRAIN_SECONDS
    while any(s.in_flight for s in services) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Requests Triton has queued but not yet handed over get UNAVAILABLE from the draining services
    # while they arrive; a moment for those answers to leave before the server goes.
    time.sleep(0.2)
