"""Session fixtures: small random checkpoints written by transformers, built once per session.

transformers is the test-only reference: checkpoints are written with its `save_pretrained`, and
parity tests compare against its implementation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Small but complete: 3 convolutions (odd and even kernels), 2 layers, grouped positional conv.
TINY_BASE = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
    conv_dim=(16, 24, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=12,
)
TINY_LARGE = dict(TINY_BASE, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                  num_conv_pos_embeddings=15)  # odd kernel: no trimmed frame
# The released models' conv stack (stride 320, receptive field 400) at toy width.
REAL_FRAMING = dict(conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2))
CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")


def _transformers():
    return pytest.importorskip("transformers", reason="transformers is the test-only reference (pip install -e .[dev])")


def save_reference_checkpoint(path: Path, architecture: str, seed: int = 0, **config_kwargs) -> Path:
    """A random-init checkpoint of a transformers class (HubertForCTC, Wav2Vec2Model, ...), its family's config."""
    transformers = _transformers()
    torch.manual_seed(seed)
    config_class = transformers.Wav2Vec2Config if architecture.startswith("Wav2Vec2") else transformers.HubertConfig
    config = config_class(**config_kwargs)
    model = getattr(transformers, architecture)(config).eval()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def base_checkpoint(tmp_path_factory) -> Path:
    return save_reference_checkpoint(tmp_path_factory.mktemp("tiny-base"), "HubertModel", **TINY_BASE)


@pytest.fixture(scope="session")
def large_checkpoint(tmp_path_factory) -> Path:
    return save_reference_checkpoint(tmp_path_factory.mktemp("tiny-large"), "HubertModel", **TINY_LARGE)


@pytest.fixture(scope="session")
def ctc_checkpoint(tmp_path_factory) -> Path:
    return save_reference_checkpoint(tmp_path_factory.mktemp("tiny-ctc"), "HubertForCTC", **TINY_BASE)


@pytest.fixture(scope="session")
def wav2vec2_ctc_checkpoint(tmp_path_factory) -> Path:
    """A wav2vec2 CTC checkpoint (base layout) with the real 320-sample framing and a vocabulary, to transcribe."""
    path = save_reference_checkpoint(tmp_path_factory.mktemp("tiny-wav2vec2-ctc"), "Wav2Vec2ForCTC",
                                     **dict(TINY_BASE, vocab_size=len(CTC_VOCAB), **REAL_FRAMING))
    (path / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(CTC_VOCAB)}))
    return path


@pytest.fixture(scope="session")
def onnx_artifact(tmp_path_factory, ctc_checkpoint) -> Path:
    """An ONNX Runtime FP32 artifact of the tiny CTC checkpoint, built once."""
    from hubert_export.build import export_artifact
    from hubert_export.recipes import default_recipe

    out = tmp_path_factory.mktemp("artifacts") / "tiny-onnx"
    result = export_artifact(ctc_checkpoint, out, default_recipe("onnx"))
    assert result.passed, result.report.failures
    return out


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory) -> Path:
    """Eight short speech-like FLAC recordings (harmonics, modulation, noise) to calibrate INT8 on."""
    import numpy as np
    import soundfile as sf

    from hubert_export.parity import _speech_like

    directory = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(0)
    for i in range(8):
        waveform = 0.1 * _speech_like(rng, int(rng.integers(8_000, 24_000)))
        sf.write(directory / f"clip{i}.flac", waveform, 16_000)
    return directory


# ------------------------------------------------------------------------------------------ without torch
def run_without_torch(python: str, *argv: str):
    """Run `python` (a virtual environment without torch) on this checkout's package."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([python, *argv], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="session")
def torchless_python() -> str:
    """A Python without torch: $HUBERT_EXPORT_NOTORCH_PYTHON, or the .venv-notorch that .ci/run makes
    (numpy and the runtimes only: onnxruntime, openvino, ai-edge-litert)."""
    repo = Path(__file__).resolve().parent.parent
    candidates = [os.environ.get("HUBERT_EXPORT_NOTORCH_PYTHON"), str(repo / ".venv-notorch" / "bin" / "python")]
    python = next((c for c in candidates if c and Path(c).is_file()), None)
    if python is None:
        pytest.skip("no Python without torch: .ci/run makes .venv-notorch (or set HUBERT_EXPORT_NOTORCH_PYTHON)")
    probe = run_without_torch(python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)")
    assert probe.returncode == 0, f"{python} has torch installed: it cannot stand for a machine without it"
    return python
