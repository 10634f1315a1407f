"""Bad inputs: each gives exit 2 and one line on stderr naming the problem and the fix, and changes nothing.

Every case of CATALOGUE runs the CLI in-process (`cli.main`) in a fresh workspace and checks the
exit code, that stderr ends with one `hubert-export: error: ...` line holding the expected words and
no traceback, and that the workspace is byte-for-byte what it was (no output, no temporary
directory, no lock file, no rewritten manifest). docs/reliability.md is this table. Builds killed by
signals run as subprocesses; fuzzing runs the audio reader and the recipe loader on random input.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from hubert_export import cli
from hubert_export.artifact import MANIFEST_VERSION, Artifact, write_manifest
from hubert_export.audio import load_audio
from hubert_export.build import export_artifact
from hubert_export.errors import HubertExportError
from hubert_export.model import HubertForCTC
from hubert_export.model.weights import checkpoint_weight_files, read_torch_bin
from hubert_export.recipes import default_recipe, load_recipe, recipe_from_dict
from hubert_export.audio import AudioStream

PACKAGE = Path(__file__).parents[1] / "hubert_export"
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H"]  # the tiny model's 12 ids
# A small shape range, so that "too long for the artifact" is cheap to reach.
MAX_SAMPLES = 32_000


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def env(ctc_checkpoint, base_checkpoint, tmp_path_factory) -> SimpleNamespace:
    """A CTC checkpoint with a vocabulary, its ONNX artifact (batch <= 2, <= 2 s), a good clip."""
    root = tmp_path_factory.mktemp("reliability")
    ckpt = root / "ctc"
    shutil.copytree(ctc_checkpoint, ckpt)
    (ckpt / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    recipe = default_recipe("onnx").with_overrides(**{"shapes.opt.samples": 16_000, "shapes.max.batch": 2,
                                                      "shapes.max.samples": MAX_SAMPLES})
    artifact = root / "artifact"
    assert export_artifact(ckpt, artifact, recipe).passed
    clip = root / "clip.wav"
    sf.write(clip, 0.1 * np.sin(np.arange(48_000) * 0.05).astype(np.float32), 16_000)  # 3 s
    return SimpleNamespace(ckpt=ckpt, base=base_checkpoint, artifact=artifact, clip=clip)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` with its kind, size, mtime and content hash."""
    entries = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        # A directory's own mtime changes when a build's scratch directory comes and goes: not compared.
        entries[path.relative_to(root).as_posix()] = (
            (True,) if path.is_dir() else (False, stat.st_size, stat.st_mtime_ns, digest))
    return entries


def _run(capsys, argv: list) -> tuple[int, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors (unknown choice, bad syntax)
        code = exc.code
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- helpers to make bad input
def _copy(path: Path, ws: Path, name: str) -> Path:
    shutil.copytree(path, ws / name)
    return ws / name


def _edit_config(e, ws: Path, **changes) -> Path:
    model = _copy(e.ckpt, ws, "model")
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))
    return model


def _with_file(e, ws: Path, name: str, content: bytes | Callable[[bytes], bytes], source: Path | None = None):
    model = _copy(source or e.ckpt, ws, "model")
    target = model / name
    old = target.read_bytes() if target.is_file() else b""
    target.write_bytes(content(old) if callable(content) else content)
    return model


def _without(e, ws: Path, name: str, source: Path | None = None) -> Path:
    model = _copy(source or e.ckpt, ws, "model")
    (model / name).unlink()
    return model


def _weights_minus_one_key(e, ws: Path) -> Path:
    model = _copy(e.ckpt, ws, "model")
    state = load_file(model / "model.safetensors")
    del state[sorted(k for k in state if "lm_head" not in k)[0]]
    save_file(state, model / "model.safetensors")
    return model


class _WritesMarker:
    """A pickle that, if ever unpickled by plain pickle, creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bin_only(e, ws: Path, content: bytes) -> Path:
    model = _without(e, ws, "model.safetensors")
    (model / "pytorch_model.bin").write_bytes(content)
    return model


def _malicious_bin(e, ws: Path, keep_safetensors: bool = False) -> Path:
    model = _copy(e.ckpt, ws, "model")
    if not keep_safetensors:
        (model / "model.safetensors").unlink()
    # torch.save's zip format, as a real pytorch_model.bin; the payload runs os.system on unpickling.
    torch.save({"weight": _WritesMarker(ws / "PWNED")}, model / "pytorch_model.bin")
    return model


def _build(e, ws: Path, model: Path | None = None, *extra) -> list:
    return ["--target", "onnx", "--model", model or e.ckpt, "--output", ws / "out", "--quiet", *extra]


def _recipe(ws: Path, text: str | bytes) -> Path:
    path = ws / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _data_dir(ws: Path, name: str, write: Callable[[Path], None]) -> Path:
    directory = ws / "data"
    directory.mkdir()
    write(directory / name)
    return directory


def _wav(samples) -> Callable[[Path], None]:
    return lambda path: sf.write(path, np.asarray(samples, dtype=np.float32), 16_000, subtype="FLOAT")


def _check_data(e, ws: Path, name: str, write: Callable[[Path], None]) -> list:
    return ["check", _copy(e.artifact, ws, "artifact"), "--data", _data_dir(ws, name, write), "--quiet"]


def _tampered_artifact(e, ws: Path, name: str, content: Callable[[bytes], bytes] | None,
                       rehash: bool = False) -> Path:
    artifact = _copy(e.artifact, ws, "artifact")
    target = artifact / name
    if content is None:
        target.unlink()
    else:
        target.write_bytes(content(target.read_bytes()))
    if rehash:  # as if the manifest had been regenerated over the damaged file
        write_manifest(artifact, json.loads((artifact / "manifest.json").read_text()))
    return artifact


def _edit_manifest(e, ws: Path, edit: Callable[[str], str]) -> Path:
    artifact = _copy(e.artifact, ws, "artifact")
    manifest = artifact / "manifest.json"
    manifest.write_text(edit(manifest.read_text()))
    return artifact


def _not_empty_output(ws: Path, with_manifest: bool = False) -> Path:
    out = ws / "out"
    out.mkdir()
    (out / ("manifest.json" if with_manifest else "notes.txt")).write_text("{}" if with_manifest else "mine")
    return out


# ----------------------------------------------------------------------------------------- catalogue
@dataclass
class Case:
    name: str  # the bad input, as docs/reliability.md lists it
    argv: Callable[[SimpleNamespace, Path], list]  # (env, empty workspace) -> command line
    expect: str  # words the error line must hold
    code: int = 2


HALF = lambda data: data[: len(data) // 2]  # noqa: E731
NOT_AUDIO = lambda path: path.write_text("this is a text file, not a recording\n")  # noqa: E731

CATALOGUE = [
    # The checkpoint
    Case("--model directory does not exist", lambda e, ws: _build(e, ws, ws / "nowhere"), "does not exist"),
    Case("config.json missing", lambda e, ws: _build(e, ws, _without(e, ws, "config.json")), "no config.json"),
    Case("config.json is not JSON", lambda e, ws: _build(e, ws, _with_file(e, ws, "config.json", b"{hidden_size: 3")),
         "is not valid JSON"),
    Case("config.json holds a list", lambda e, ws: _build(e, ws, _with_file(e, ws, "config.json", b"[1, 2]")),
         "must hold a JSON object"),
    Case("hidden_size not divisible by num_attention_heads",
         lambda e, ws: _build(e, ws, _edit_config(e, ws, num_attention_heads=5)), "divisible by num_attention_heads"),
    Case("negative num_hidden_layers", lambda e, ws: _build(e, ws, _edit_config(e, ws, num_hidden_layers=-2)),
         "num_hidden_layers must be a positive integer"),
    Case("hidden_size is a string", lambda e, ws: _build(e, ws, _edit_config(e, ws, hidden_size="32")),
         "hidden_size must be a positive integer"),
    Case("conv_dim, conv_stride, conv_kernel of unequal length",
         lambda e, ws: _build(e, ws, _edit_config(e, ws, conv_dim=[16, 24])), "same non-zero length"),
    Case("model_type is not supported", lambda e, ws: _build(e, ws, _edit_config(e, ws, model_type="wavlm")),
         "model_type 'wavlm' is not supported"),
    Case("model_type wav2vec2 over HuBERT weights",
         lambda e, ws: _build(e, ws, _edit_config(e, ws, model_type="wav2vec2")),
         "unexpected weights: hubert.encoder."),
    Case("no weight file", lambda e, ws: _build(e, ws, _without(e, ws, "model.safetensors")), "no weights in"),
    Case("model.safetensors truncated", lambda e, ws: _build(e, ws, _with_file(e, ws, "model.safetensors", HALF)),
         "truncated or corrupt"),
    Case("model.safetensors is random bytes",
         lambda e, ws: _build(e, ws, _with_file(e, ws, "model.safetensors", os.urandom(4096))),
         "not a readable safetensors file"),
    Case("weights of other shapes than config.json says",
         lambda e, ws: _build(e, ws, _edit_config(e, ws, intermediate_size=64)), "has shape"),
    Case("a weight missing", lambda e, ws: _build(e, ws, _weights_minus_one_key(e, ws)), "missing weights"),
    Case("pytorch_model.bin pickle that runs code", lambda e, ws: _build(e, ws, _malicious_bin(e, ws)),
         "holds pickled code, not just weights, and was not loaded (it calls posix.system)"),
    Case("pytorch_model.bin truncated",
         lambda e, ws: _build(e, ws, _bin_only(e, ws, b"PK\x03\x04" + b"\0" * 60)),
         "not a readable PyTorch checkpoint"),
    Case("--task ctc on a checkpoint without a CTC head",
         lambda e, ws: _build(e, ws, e.base, "--task", "ctc"), "has no lm_head weights"),
    Case("--task sequence-classification on a CTC checkpoint",
         lambda e, ws: _build(e, ws, e.ckpt, "--task", "sequence-classification"), "has no classifier weights"),
    # Flags and recipes
    Case("--target unknown", lambda e, ws: _build(e, ws)[2:] + ["--target", "tpu"], "invalid choice: 'tpu'"),
    Case("no --target and no --recipe", lambda e, ws: _build(e, ws)[2:], "no target"),
    Case("--min-shape not BATCH,SAMPLES", lambda e, ws: _build(e, ws, None, "--min-shape", "1x400"),
         "is not BATCH,SAMPLES"),
    Case("--min-shape batch 0", lambda e, ws: _build(e, ws, None, "--min-shape", "0,400"), "shapes.min.batch"),
    Case("--max-shape below --min-shape", lambda e, ws: _build(e, ws, None, "--max-shape", "1,300"),
         "shapes.max"),
    Case("--opset outside 18..21", lambda e, ws: _build(e, ws, None, "--opset", "7"), "export.opset"),
    Case("--precision fp16 for onnx on a machine without CUDA",
         lambda e, ws: _build(e, ws, None, "--precision", "fp16"), "CUDA execution provider"),
    Case("recipe file missing", lambda e, ws: _build(e, ws)[2:] + ["--recipe", ws / "none.yaml"], "does not exist"),
    Case("recipe is a binary file", lambda e, ws: _build(e, ws)[2:] + ["--recipe", _recipe(ws, b"\x00\x01ONNX")],
         "binary file"),
    Case("recipe with an unknown field",
         lambda e, ws: _build(e, ws)[2:] + ["--recipe", _recipe(ws, "target: onnx\nprecison: fp32\n")], "precison"),
    Case("recipe with a bad value",
         lambda e, ws: _build(e, ws)[2:] + ["--recipe", _recipe(ws, "target: onnx\nprecision: fp8\n")], "fp8"),
    Case("recipe that is not a mapping",
         lambda e, ws: _build(e, ws)[2:] + ["--recipe", _recipe(ws, "- onnx\n- fp32\n")], "recipe"),
    Case("recipe YAML syntax error",
         lambda e, ws: _build(e, ws)[2:] + ["--recipe", _recipe(ws, "target: [onnx\n")], "recipe"),
    # Output directory
    Case("--output holds other files", lambda e, ws: (_not_empty_output(ws), _build(e, ws))[1],
         "already exists and is not empty"),
    Case("--output holds an artifact, no --overwrite",
         lambda e, ws: (_copy(e.artifact, ws, "out"), _build(e, ws))[1], "pass --overwrite"),
    Case("--overwrite on a directory that is not an artifact",
         lambda e, ws: (_not_empty_output(ws), _build(e, ws, None, "--overwrite"))[1], "will not delete it"),
    Case("--output is a file", lambda e, ws: ((ws / "out").write_text("x"), _build(e, ws))[1], "is a file"),
    # Audio for calibration and --data
    Case("empty --calibration-data directory",
         lambda e, ws: _build(e, ws, None, "--precision", "int8", "--calibration-data", _data_dir(ws, "x.txt", NOT_AUDIO)),
         "no audio files"),
    Case("--calibration-data with a text file named .wav",
         lambda e, ws: _build(e, ws, None, "--precision", "int8", "--calibration-data", _data_dir(ws, "a.wav", NOT_AUDIO)),
         "cannot read audio file"),
    Case("check --data: empty WAV (0 samples)", lambda e, ws: _check_data(e, ws, "a.wav", _wav([])), "is empty"),
    Case("check --data: 399 samples", lambda e, ws: _check_data(e, ws, "a.wav", _wav(np.zeros(399))), "too short"),
    Case("check --data: NaN samples", lambda e, ws: _check_data(e, ws, "a.wav", _wav([0.1] * 800 + [np.nan])),
         "NaN or Inf"),
    Case("check --data: Inf samples", lambda e, ws: _check_data(e, ws, "a.wav", _wav([np.inf] + [0.1] * 800)),
         "NaN or Inf"),
    Case("check --data: text file named .wav", lambda e, ws: _check_data(e, ws, "a.wav", NOT_AUDIO),
         "cannot read audio file"),
    Case("check --data: WAV cut inside its header",
         lambda e, ws: _check_data(e, ws, "a.wav", lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")),
         "cannot read audio file"),
    Case("check --data: transcripts.tsv without tabs",
         lambda e, ws: _check_data(e, ws, "transcripts.tsv", lambda p: (_wav(np.zeros(800))(p.with_name("a.wav")),
                                                                      p.write_text("a HELLO\n"))),
         "file_stem<TAB>text"),
    # Artifacts
    Case("check: artifact directory does not exist", lambda e, ws: ["check", ws / "nowhere", "--quiet"], "not a hubert-export artifact"),
    Case("check: manifest.json missing", lambda e, ws: ["check", _tampered_artifact(e, ws, "manifest.json", None), "--quiet"],
         "no manifest.json"),
    Case("check: manifest.json is not JSON", lambda e, ws: ["check", _edit_manifest(e, ws, lambda t: t[: len(t) // 2]), "--quiet"],
         "not readable JSON"),
    Case("check: manifest from a newer hubert-export",
         lambda e, ws: ["check", _edit_manifest(e, ws, lambda t: t.replace(f'"manifest_version": {MANIFEST_VERSION}', '"manifest_version": 9')), "--quiet"],
         "upgrade hubert-export"),
    Case("check: model.onnx truncated", lambda e, ws: ["check", _tampered_artifact(e, ws, "model.onnx", HALF), "--quiet"],
         "does not match the hash"),
    Case("check: model.onnx missing", lambda e, ws: ["check", _tampered_artifact(e, ws, "model.onnx", None), "--quiet"],
         "model.onnx is missing"),
    Case("check: config.json edited after the build",
         lambda e, ws: ["check", _tampered_artifact(e, ws, "config.json", lambda b: b.replace(b"gelu", b"relu")), "--quiet"],
         "does not match the hash"),
    Case("check: model.onnx corrupt and manifest re-hashed over it",
         lambda e, ws: ["check", _tampered_artifact(e, ws, "model.onnx", HALF, rehash=True), "--quiet"],
         "ONNX Runtime cannot load model.onnx"),
    Case("check --reference: another checkpoint",
         lambda e, ws: ["check", _copy(e.artifact, ws, "artifact"), "--reference", _edit_config(e, ws, layerdrop=0.0), "--quiet"],
         "is not the one this artifact was built from"),
    # Transcribe
    Case("transcribe: audio needs chunks longer than the artifact accepts",
         lambda e, ws: ["transcribe", e.artifact, e.clip, "--chunk-seconds", "5"], "pass --chunk-seconds 1.975 or less"),
    Case("transcribe: --batch-size above the artifact's batch range",
         lambda e, ws: ["transcribe", e.artifact, e.clip, "--chunk-seconds", "1", "--batch-size", "3"], "outside the artifact's batch range"),
    Case("transcribe: headerless PCM named .wav",
         lambda e, ws: ["transcribe", e.ckpt, (ws / "raw.wav", (ws / "raw.wav").write_bytes(os.urandom(3200)))[0]],
         "cannot read audio file"),
    Case("transcribe: artifact files edited after the build",
         lambda e, ws: ["transcribe", _tampered_artifact(e, ws, "vocab.json", lambda b: b.replace(b"<s>", b"<S>")),
                        e.clip], "does not match the hash"),
    Case("transcribe: a checkpoint without a CTC head", lambda e, ws: ["transcribe", e.base, e.clip],
         "not a HubertForCTC"),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_bad_input_is_refused_cleanly(case, env, tmp_path, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = case.argv(env, ws)
    if argv[0] == "transcribe":
        argv.append("--quiet")
    before, artifact_before = _snapshot(tmp_path), _snapshot(env.artifact)
    code, err = _run(capsys, argv)
    lines = err.strip().splitlines()
    assert code == case.code, (code, err)
    assert lines and lines[-1].startswith("hubert-export") and "error:" in lines[-1], err
    assert case.expect in lines[-1], err
    assert "Traceback" not in err and "internal error" not in err
    if not lines[-1].startswith("hubert-export: error: argument") and "usage:" not in err:
        assert len(lines) == 1, err  # our own errors: exactly one line (argparse adds its usage line)
    assert _snapshot(tmp_path) == before, "the failed command changed its workspace"
    assert _snapshot(env.artifact) == artifact_before
    assert not (tmp_path / "PWNED").exists() and not (ws / "PWNED").exists()


def test_catalogue_is_complete():
    assert len(CATALOGUE) >= 30 and len({c.name for c in CATALOGUE}) == len(CATALOGUE)


def test_debug_shows_the_traceback(env, tmp_path):
    with pytest.raises(HubertExportError, match="no config.json"):
        cli.main(["--target", "onnx", "--model", str(tmp_path), "--output", str(tmp_path / "o"), "--debug", "--quiet"])


def test_runner_refuses_inputs_outside_the_shape_range(env):
    from hubert_export.backends import get_backend

    artifact = Artifact.open(env.artifact)
    with get_backend("onnx").load(artifact) as runner:
        assert runner.infer({"input_values": np.zeros((2, MAX_SAMPLES), np.float32)})["logits"].shape[0] == 2
        for shape in [(3, 16_000), (1, MAX_SAMPLES + 1), (1, 399)]:
            with pytest.raises(HubertExportError, match="outside this artifact's shape range"):
                runner.infer({"input_values": np.zeros(shape, np.float32)})
        with pytest.raises(HubertExportError, match="NaN or Inf"):
            runner.infer({"input_values": np.full((1, 16_000), np.nan, np.float32)})


# ------------------------------------------------------------------------------------ safe loading
def test_pickled_code_never_runs_and_safetensors_wins(env, tmp_path):
    marker = tmp_path / "PWNED"
    model = _malicious_bin(env, tmp_path)
    with pytest.raises(HubertExportError, match="holds pickled code"):
        read_torch_bin(model / "pytorch_model.bin")
    assert not marker.exists()
    # The same pickle beside a good model.safetensors is never opened.
    (tmp_path / "both").mkdir()
    both = _malicious_bin(env, tmp_path / "both", keep_safetensors=True)
    assert checkpoint_weight_files(both) == [both / "model.safetensors"]
    HubertForCTC.from_pretrained(both)
    assert not marker.exists() and not (tmp_path / "both" / "PWNED").exists()
    # Plain pickle would have run it: the marker mechanism works.
    pickle.loads(pickle.dumps(_WritesMarker(marker)))
    assert marker.exists()


def test_no_code_path_unpickles_without_weights_only():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text and "pickle.load(" not in text and "pickle.loads(" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line and not line.lstrip().startswith("#"):
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


# ----------------------------------------------------------------------------- atomic artifacts, signals
HELD = "holding at step parity"
REPO = Path(__file__).resolve().parents[1]


def _start_build(model: Path, out: Path, release: Path | None = None) -> subprocess.Popen:
    """A CLI build; with `release`, held before its parity check (tests/hooks.py) until that file exists."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = ["--target", "onnx", "--model", str(model), "--output", str(out)]
    entry = ["-m", "hubert_export.cli"] if release is None else ["-m", "tests.hooks", "hold-before-parity",
                                                                  str(release), "--"]
    # SIGINT back to its default in the child: a shell that runs the tests as a background job
    # starts them with SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
    return subprocess.Popen([sys.executable, *entry, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env, cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(process: subprocess.Popen, words: str, timeout: float = 120) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in process.stderr:
        lines.append(line)
        if words in line or time.monotonic() > deadline:
            return lines
    return lines


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_killed_build_leaves_no_half_artifact_and_the_next_build_cleans_up(env, tmp_path):
    out = tmp_path / "out"
    process = _start_build(env.ckpt, out, release=tmp_path / "never")
    assert any(HELD in line for line in _wait_for(process, HELD))  # provably mid-build
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert not out.exists()
    assert any(".tmp-" in n for n in _leftovers(tmp_path, "out"))  # the killed build's scratch directory
    assert export_artifact(env.ckpt, out, default_recipe("onnx")).passed
    assert _leftovers(tmp_path, "out") == []  # stale scratch removed, lock released
    Artifact.open(out).verify_files()


def test_interrupted_build_exits_130_and_cleans_up(env, tmp_path):
    out = tmp_path / "out"
    process = _start_build(env.ckpt, out, release=tmp_path / "never")
    assert any(HELD in line for line in _wait_for(process, HELD))  # provably mid-build: no race with its end
    assert any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())  # with a half-built artifact
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(60) == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert not out.exists() and _leftovers(tmp_path, "out") == []


def test_concurrent_builds_into_one_output(env, tmp_path):
    out = tmp_path / "out"
    first = _start_build(env.ckpt, out, release=tmp_path / "release")
    assert any(HELD in line for line in _wait_for(first, HELD))  # the first holds the lock and is mid-build
    second = subprocess.run([sys.executable, "-m", "hubert_export.cli", "--target", "onnx", "--model", str(env.ckpt),
                             "--output", str(out), "--quiet"], capture_output=True, text=True, timeout=120)
    (tmp_path / "release").touch()
    first.stderr.read()
    assert first.wait(120) == 0
    assert second.returncode == 2 and "another hubert-export build is writing" in second.stderr
    assert second.stderr.count("\n") == 1
    Artifact.open(out).verify_files()
    assert _leftovers(tmp_path, "out") == []


# ------------------------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_or_refused(read: Callable[[], np.ndarray]) -> None:
    try:
        waveform = read()
    except HubertExportError as exc:
        assert "\n" not in str(exc)
        return
    assert waveform.dtype == np.float32 and waveform.ndim == 1 and len(waveform) >= 400
    assert np.isfinite(waveform).all()


def _stream_all(path: Path) -> np.ndarray:
    with AudioStream(path) as stream:
        stream.check_length()
        return stream.read(0, stream.num_samples)


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".wav", ".flac", ".ogg"]),
       header=st.sampled_from([b"", b"RIFF\xff\xff\xff\xffWAVEfmt ", b"fLaC", b"OggS"]))
def test_fuzz_audio_bytes(tmp_path, data, suffix, header):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(header + data)
    _valid_or_refused(lambda: load_audio(path))
    _valid_or_refused(lambda: _stream_all(path))


@FUZZ
@given(samples=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=2000),
       rate=st.sampled_from([8_000, 16_000, 22_050, 44_100]), channels=st.integers(1, 3),
       fmt=st.sampled_from([("wav", "FLOAT"), ("wav", "PCM_16"), ("flac", "PCM_16")]))
def test_fuzz_audio_arrays(tmp_path, samples, rate, channels, fmt):
    data = np.asarray(samples, dtype=np.float32)
    data = np.repeat(data[:, None], channels, axis=1)
    path = tmp_path / f"fuzz.{fmt[0]}"
    if fmt[1] == "PCM_16":
        data = np.nan_to_num(np.clip(data, -1, 1))  # integer formats cannot carry NaN/Inf
    sf.write(path, data, rate, subtype=fmt[1])
    _valid_or_refused(lambda: load_audio(path))
    _valid_or_refused(lambda: _stream_all(path))


@FUZZ
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_fuzz_recipe_text(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_recipe(path)
    except HubertExportError as exc:
        assert "\n" not in str(exc)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["onnx", "openvino", "tensorrt", "fp32", "int8", "fp16",
                                                            "static", "dynamic", "auto", "ctc"]))
_KEYS = st.sampled_from(["target", "precision", "task", "export", "shapes", "calibration", "onnxruntime",
                         "openvino", "tensorrt", "thresholds", "opset", "min", "max", "opt", "batch", "samples",
                         "profiles", "data", "subset_size", "method", "max_abs_error", "name", "x"])
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=12)


@FUZZ
@given(data=st.one_of(st.dictionaries(_KEYS, _VALUES, max_size=6), _VALUES))
def test_fuzz_recipe_dicts(data):
    try:
        recipe_from_dict(data)
    except HubertExportError as exc:
        assert "\n" not in str(exc)
