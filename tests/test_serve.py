"""`hubert-export serve`: a real Triton server (PyTriton) on free loopback ports, asked through
Triton's own clients (tritonclient HTTP and gRPC).

Served here: the shipped CTC model (attention mask: padded batches), a wav2vec2-layout CTC model
(group norm, no mask: equal-length batches only), a HuBERT feature-extraction model with a short
length limit and a sequence classifier. Answers are compared with the artifact's runner through `Transcriber.run` (logits)
and with `transcribe` (text). Every server is a subprocess stopped by its fixture's finalizer
(SIGTERM, then SIGKILL of its whole process group), so none outlives the tests.

These tests need the [serve] extra (PyTriton pins numpy<2, so CI runs them in .venv-serve); in an
environment without it, only the refusal (exit 2 with the install line) is tested.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hubert_export import cli
from hubert_export.audio import ArrayStream, load_audio
from hubert_export.build import DEFAULT_MODEL_DIR, export_artifact
from hubert_export.recipes import default_recipe
from hubert_export.transcribe import Transcriber, transcribe

SPEECH = Path(__file__).parent / "data" / "speech"
HAS_SERVE = importlib.util.find_spec("pytriton") is not None and importlib.util.find_spec("tritonclient") is not None
needs_serve = pytest.mark.skipif(not HAS_SERVE, reason="needs the [serve] extra (.venv-serve, see docs/serve.md)")
FEATURES_MAX_SAMPLES = 48_000  # the feature model's limit: 3 s
TOLERANCE = dict(rtol=1e-4, atol=1e-4)  # padded batches differ from a lone request by float rounding only


@pytest.mark.skipif(HAS_SERVE, reason="PyTriton is installed here")
def test_serve_without_pytriton_exits_2_with_the_install_line(capsys):
    assert cli.main(["serve", str(DEFAULT_MODEL_DIR)]) == 2
    err = capsys.readouterr().err
    assert 'pip install "hubert-export[serve]"' in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ servers
def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Server:
    """`hubert-export serve` in a subprocess (its own process group), ready when every model is."""

    def __init__(self, artifacts: dict[str, Path], log: Path, *extra: str) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.names = list(artifacts)
        argv = [sys.executable, "-m", "hubert_export.cli", "serve", *map(str, artifacts.values())]
        for name in artifacts:
            argv += ["--name", name]
        argv += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                 "--metrics-port", str(self.metrics_port), "--threads", "1", *extra]
        self.log = log
        self.process = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 180) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                if all(urllib.request.urlopen(f"http://{self.http}/v2/models/{n}/ready", timeout=2).status == 200
                       for n in self.names):
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> float:
        """Signal the server, wait for it; returns how long it took (SIGKILL of its group past `timeout`)."""
        start = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return time.monotonic() - start


# Optimised for batch 4: the server's runner calls then take up to 4 rows (padded with the mask for the
# shipped model, equal lengths for wav2vec2), which the concurrency test exercises.
BATCHED = default_recipe("onnx").with_overrides(**{"shapes.opt.batch": 4})


@pytest.fixture(scope="module")
def shipped_artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "shipped"
    assert export_artifact(DEFAULT_MODEL_DIR, out, BATCHED, latency_repeats=0).passed
    return out


@pytest.fixture(scope="module")
def wav2vec2_artifact(tmp_path_factory, wav2vec2_ctc_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("serve") / "w2v"
    assert export_artifact(wav2vec2_ctc_checkpoint, out, BATCHED, latency_repeats=0).passed
    return out


@pytest.fixture(scope="module")
def features_artifact(tmp_path_factory, base_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("serve") / "features"
    recipe = default_recipe("onnx").with_overrides(**{"shapes.opt.samples": 16_000,
                                                      "shapes.max.samples": FEATURES_MAX_SAMPLES})
    assert export_artifact(base_checkpoint, out, recipe, latency_repeats=0).passed
    return out


@pytest.fixture(scope="module")
def classifier_artifact(tmp_path_factory) -> Path:
    from .conftest import TINY_BASE, save_reference_checkpoint

    checkpoint = save_reference_checkpoint(tmp_path_factory.mktemp("classifier-checkpoint"),
                                           "HubertForSequenceClassification", **TINY_BASE,
                                           id2label={0: "no", 1: "yes", 2: "maybe"})
    out = tmp_path_factory.mktemp("serve") / "classifier"
    assert export_artifact(checkpoint, out, default_recipe("onnx"), latency_repeats=0).passed
    return out


@pytest.fixture(scope="module")
def server(shipped_artifact, wav2vec2_artifact, features_artifact, classifier_artifact, tmp_path_factory):
    if not HAS_SERVE:
        pytest.skip("needs the [serve] extra (.venv-serve, see docs/serve.md)")
    running = Server({"shipped": shipped_artifact, "w2v": wav2vec2_artifact, "features": features_artifact,
                      "classifier": classifier_artifact},
                     tmp_path_factory.mktemp("serve-log") / "server.log", "--max-queue-delay-ms", "5")
    try:
        yield running.wait_ready()
    finally:
        running.stop()
        assert running.process.returncode == 0, running.log_tail()


@pytest.fixture(scope="module")
def recordings() -> dict[str, np.ndarray]:
    """Speech of mixed lengths, and one long enough (~45 s) to be cut into chunks."""
    clips = {p.stem: load_audio(p) for p in sorted(SPEECH.glob("*.flac"))[:6]}
    long = np.concatenate(list(clips.values()) * 4)
    clips["long"] = long[: 45 * 16_000]
    return clips


def clients():
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return httpclient, grpcclient


def infer(server: Server, protocol: str, model: str, *, audio: np.ndarray | None = None,
          audio_file: bytes | None = None, client=None):
    """One request through Triton's own client; returns {output: array}."""
    http, grpc = clients()
    module = http if protocol == "http" else grpc
    client = client or module.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    inputs = []
    if audio is not None:
        audio = np.asarray(audio)
        tensor = module.InferInput("audio", list(audio.shape), {np.float32: "FP32", np.float64: "FP64"}[audio.dtype.type])
        tensor.set_data_from_numpy(audio)
        inputs.append(tensor)
    if audio_file is not None:
        tensor = module.InferInput("audio_file", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[audio_file]], dtype=np.object_))
        inputs.append(tensor)
    result = client.infer(model, inputs)
    names = [o["name"] for o in (result.get_response()["outputs"] if protocol == "http"
                                 else result.get_response(as_json=True)["outputs"])]
    return {name: result.as_numpy(name) for name in names}


def runner_answer(artifact: Path, waveform: np.ndarray):
    """The artifact's runner, chunked as transcribe chunks: (logits, text)."""
    with Transcriber(artifact) as transcriber:
        result = transcriber.run(ArrayStream(waveform, "audio"), keep_logits=True)
    return result.logits, result.text


# ------------------------------------------------------------------------------------------ answers
@needs_serve
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["shipped", "w2v"])
def test_logits_match_the_runner_and_text_matches_transcribe(server, shipped_artifact, wav2vec2_artifact,
                                                             recordings, model, protocol):
    artifact = {"shipped": shipped_artifact, "w2v": wav2vec2_artifact}[model]
    for name in ("utt00", "utt01", "long"):
        waveform = recordings[name]
        answer = infer(server, protocol, model, audio=waveform[None])
        logits, text = runner_answer(artifact, waveform)
        assert answer["logits"].shape == (1, *logits.shape)
        np.testing.assert_allclose(answer["logits"][0], logits, **TOLERANCE)
        assert answer["text"][0, 0].decode() == text
    # a file, decoded by the server: the same text as `transcribe` on that file
    path = SPEECH / "utt02.flac"
    answer = infer(server, protocol, model, audio_file=path.read_bytes())
    assert answer["text"][0, 0].decode() == transcribe(artifact, [path])[0].text


@needs_serve
def test_features_match_the_runner(server, features_artifact, recordings):
    from hubert_export.artifact import Artifact
    from hubert_export.audio import FeatureExtractorConfig, prepare_batch
    from hubert_export.backends import get_backend

    waveform = recordings["utt00"][:FEATURES_MAX_SAMPLES]
    answer = infer(server, "grpc", "features", audio=waveform[None])
    artifact = Artifact.open(features_artifact)
    with get_backend("onnx").load(artifact) as runner:
        expected = runner.infer(prepare_batch([waveform], FeatureExtractorConfig.from_dir(features_artifact)))
    np.testing.assert_allclose(answer["last_hidden_state"], expected["last_hidden_state"], **TOLERANCE)


@needs_serve
def test_classification_logits_and_label(server, classifier_artifact, recordings):
    from hubert_export.artifact import Artifact
    from hubert_export.audio import FeatureExtractorConfig, prepare_batch
    from hubert_export.backends import get_backend

    waveform = recordings["utt01"]
    answer = infer(server, "http", "classifier", audio=waveform[None])
    with get_backend("onnx").load(Artifact.open(classifier_artifact)) as runner:
        expected = runner.infer(prepare_batch([waveform], FeatureExtractorConfig.from_dir(classifier_artifact)))
    np.testing.assert_allclose(answer["logits"], expected["logits"], **TOLERANCE)
    assert answer["label"][0, 0].decode() == ["no", "yes", "maybe"][int(expected["logits"].argmax())]


@needs_serve
def test_metadata_health_and_metrics(server):
    http, _ = clients()
    client = http.InferenceServerClient(server.http)
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_model_metadata("shipped")
    assert {i["name"]: i["datatype"] for i in metadata["inputs"]} == {"audio": "FP32", "audio_file": "BYTES"}
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert outputs == {"logits": ("FP32", [-1, -1, 32]), "text": ("BYTES", [-1, 1])}  # vocabulary of 32: the manifest's
    features = {o["name"]: o["shape"] for o in client.get_model_metadata("features")["outputs"]}
    assert features == {"last_hidden_state": [-1, -1, 32]}
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert "nv_inference_request_success" in metrics


# ------------------------------------------------------------------------------------------ load
def _counts(server: Server, model: str) -> tuple[float, float]:
    """(inferences, executions) of `model` from Triton's Prometheus metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        for metric in ("nv_inference_count", "nv_inference_exec_count"):
            if line.startswith(metric + "{") and f'model="{model}"' in line:
                values[metric] = values.get(metric, 0.0) + float(line.rsplit(" ", 1)[1])
    return values.get("nv_inference_count", 0.0), values.get("nv_inference_exec_count", 0.0)


@needs_serve
def test_64_concurrent_clients_get_their_own_answers(server, recordings):
    rng = np.random.default_rng(0)
    # mixed lengths: whole clips and cuts of them (0.5 s to 45 s), on both models and both protocols
    requests = []
    for i in range(64):
        source = recordings[list(recordings)[i % len(recordings)]]
        length = source.shape[0] if i % 3 else int(rng.integers(8_000, source.shape[0]))
        requests.append(("shipped" if i % 2 else "w2v", "http" if i % 4 < 2 else "grpc", source[:length]))
    alone = [infer(server, "http", model, audio=audio[None]) for model, _, audio in requests]
    before = _counts(server, "shipped")
    barrier = threading.Barrier(64)

    def one(request):
        model, protocol, audio = request
        barrier.wait()
        return infer(server, protocol, model, audio=audio[None])

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, requests))
    assert len(answers) == 64
    for answer, expected in zip(answers, alone):
        np.testing.assert_allclose(answer["logits"], expected["logits"], **TOLERANCE)
        assert answer["text"][0, 0] == expected["text"][0, 0]
    inferences, executions = (a - b for a, b in zip(_counts(server, "shipped"), before))
    assert inferences == 32 and executions < inferences  # the dynamic batcher formed batches


# ------------------------------------------------------------------------------------------ bad requests
@needs_serve
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_a_4xx_with_a_clear_message(server, recordings, protocol):
    from tritonclient.utils import InferenceServerException

    speech = recordings["utt00"]
    cases = [
        ("shipped", dict(audio=speech[None].astype(np.float64)), "FP64"),  # wrong dtype
        ("shipped", dict(audio=speech[None, None]), "shape"),  # wrong rank
        ("shipped", dict(audio=np.zeros((1, 0), np.float32)), "empty"),
        ("shipped", dict(audio=np.full((1, 16_000), np.nan, np.float32)), "NaN"),
        ("shipped", dict(audio=speech[None, :200]), "too short"),
        ("features", dict(audio=np.tile(speech, 2)[None, :FEATURES_MAX_SAMPLES + 320]), f"limit of {FEATURES_MAX_SAMPLES}"),
        ("shipped", dict(audio_file=b"RIFF not really a wave file"), "cannot read audio_file"),
        ("shipped", dict(audio=speech[None], audio_file=(SPEECH / "utt00.flac").read_bytes()), "exactly one"),
        ("no-such-model", dict(audio=speech[None]), "unknown model"),
    ]
    for model, inputs, words in cases:
        with pytest.raises(InferenceServerException) as caught:
            infer(server, protocol, model, **inputs)
        status, message = str(caught.value.status()), caught.value.message()
        assert status in ("400", "404", "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND",
                          "StatusCode.UNAVAILABLE"), (model, words, status, message)
        assert words.lower() in message.lower() and "Traceback" not in message, (words, message)
    # and it keeps serving
    assert infer(server, protocol, "shipped", audio=speech[None])["text"][0, 0]


@needs_serve
def test_a_bad_request_in_a_batch_fails_alone(server, recordings):
    good = [recordings[n][None] for n in ("utt00", "utt01", "utt03")]
    bad = np.full((1, 8_000), np.inf, np.float32)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(infer, server, "grpc", "shipped", audio=a) for a in [*good, bad, *good]]
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result()["text"][0, 0])
        except Exception as exc:  # noqa: BLE001 - the bad one
            outcomes.append(type(exc).__name__)
    assert outcomes[3] == "InferenceServerException"
    assert all(isinstance(o, bytes) for i, o in enumerate(outcomes) if i != 3)


def test_refuses_an_artifact_whose_files_changed(shipped_artifact, tmp_path, capsys):
    tampered = tmp_path / "tampered"
    shutil.copytree(shipped_artifact, tampered)
    with (tampered / "model.onnx").open("r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\0" * 8)
    http, grpc, metrics = free_ports(3)
    code = cli.main(["serve", str(tampered), "--http-port", str(http), "--grpc-port", str(grpc),
                     "--metrics-port", str(metrics)])
    assert code == 2
    err = capsys.readouterr().err
    if HAS_SERVE:
        assert "model.onnx does not match the hash" in err


@needs_serve
def test_refuses_a_port_in_use(shipped_artifact, capsys):
    http, grpc, metrics = free_ports(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", grpc))
        taken.listen()
        code = cli.main(["serve", str(shipped_artifact), "--http-port", str(http), "--grpc-port", str(grpc),
                         "--metrics-port", str(metrics)])
    assert code == 2 and f"--grpc-port {grpc}: cannot listen" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ stopping
def _stop_under_load(artifact: Path, log: Path, signum: int, speech: np.ndarray) -> None:
    server = Server({"w2v": artifact}, log).wait_ready()
    try:
        workers = descendants(server.process.pid)
        assert workers, "the server started no Triton process"
        results: list[str] = []
        stop = threading.Event()

        def client_loop(i: int) -> None:
            expected = None
            while not stop.is_set():
                try:
                    text = infer(server, "http" if i % 2 else "grpc", "w2v", audio=speech[None])["text"][0, 0]
                    expected = expected or text
                    results.append("ok" if text == expected else "WRONG")
                except Exception as exc:  # noqa: BLE001 - a clean failure: an error, not a hang or a wrong answer
                    results.append(type(exc).__name__)
                    time.sleep(0.05)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        assert results.count("ok") > 0
        took = server.stop(signum, timeout=30)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert took < 30 and server.process.returncode == 0, server.log_tail()
        assert "WRONG" not in results
        print(f"{results.count('ok')} answered, failures: {sorted(set(results) - {'ok'})}")
        time.sleep(0.5)
        assert not [pid for pid in workers if alive(pid)], "the server left processes behind"
    finally:
        server.stop(signal.SIGKILL)


@needs_serve
def test_sigterm_under_load_drains_and_stops_everything(wav2vec2_artifact, recordings, tmp_path):
    _stop_under_load(wav2vec2_artifact, tmp_path / "server.log", signal.SIGTERM, recordings["utt01"])


@needs_serve
@pytest.mark.slow
def test_sigint_under_load_drains_and_stops_everything(wav2vec2_artifact, recordings, tmp_path):
    _stop_under_load(wav2vec2_artifact, tmp_path / "server.log", signal.SIGINT, recordings["utt01"])
