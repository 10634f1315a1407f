"""The FP16 precision policy, measured in torch half precision on the CPU.

References are the float64 eager model; thresholds are the parity harness's FP16 defaults. The
inputs that break everything-half are un-normalised waveforms a `do_normalize: false` checkpoint
(hubert-base) is fed as recorded: speech riding on a DC offset, and near-silence.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hubert_export.model import HubertForCTC
from hubert_export.parity import _speech_like, compare_arrays, compare_ctc
from hubert_export.tasks import DEFAULT_THRESHOLDS
from hubert_export.precision import (
    DEFAULT_POLICY, FP32_RULES, Float32Island, HalfPrecisionRunner, half_with_policy, module_scope,
)
from hubert_export.recipes import DEFAULT_FP32_LAYERS
from hubert_export.runner import EagerRunner
from hubert_export.tasks import HUBERT
from tests.conftest import TINY_BASE, TINY_LARGE, save_reference_checkpoint

FP16 = DEFAULT_THRESHOLDS["fp16"]
CTC = HUBERT.task("ctc")


@pytest.fixture(scope="module", params=["base", "large"])
def layout(request, tmp_path_factory):
    config = TINY_BASE if request.param == "base" else TINY_LARGE
    path = save_reference_checkpoint(tmp_path_factory.mktemp(f"prec-{request.param}"), "HubertForCTC", **config)
    model = HubertForCTC.from_pretrained(path)
    runners = (EagerRunner(model, CTC, dtype=torch.float64).activate(), HalfPrecisionRunner(model, CTC, DEFAULT_POLICY),
               HalfPrecisionRunner(model, CTC, ()))
    return request.param, model, runners


def _inputs(kind: str) -> dict[str, np.ndarray]:
    speech = _speech_like(np.random.default_rng(7), 16_000)
    waveform = {"speech": speech, "dc-offset": 0.5 + 1e-3 * speech, "near-silence": 1e-6 * speech}[kind]
    return {"input_values": waveform[None].astype(np.float32)}


def _errors(reference: EagerRunner, candidate: HalfPrecisionRunner, inputs) -> tuple[float, float, float]:
    ref, out = reference.infer(inputs)["logits"], candidate.infer(inputs)["logits"]
    metrics = compare_arrays(ref[0], out[0])
    agreement = compare_ctc(ref, out, [ref.shape[1]], blank=0)["argmax_agreement"]
    return metrics["relative_l2_error"], metrics["min_cosine_similarity"], agreement


def test_policy_is_the_recipe_default():
    assert DEFAULT_POLICY == DEFAULT_FP32_LAYERS
    assert [r.name for r in FP32_RULES] == ["feature_encoder_conv0", "layer_norm", "softmax"]


def test_module_scope_follows_torchscript_onnx_names():
    assert module_scope("hubert.encoder.layers.3.layer_norm") == "/model/hubert/encoder/layers.3/layer_norm"
    assert module_scope("model.feature_extractor.conv_layers.0", root="") == "/model/feature_extractor/conv_layers.0"


def test_policy_pins_the_named_modules_and_nothing_else(layout):
    name, model, _ = layout
    before = model.hubert.encoder.layers[0].feed_forward.intermediate_dense.weight.dtype
    half, pinned = half_with_policy(model)
    layers = model.config.num_hidden_layers
    assert "/model/hubert/feature_extractor/conv_layers.0" in pinned
    assert sum(p.endswith("attention/Softmax") for p in pinned) == layers
    # every LayerNorm outside the first conv block (which is pinned whole)
    norms = {module_scope(n) for n, m in model.named_modules()
             if isinstance(m, torch.nn.LayerNorm) and ".conv_layers.0." not in n}
    assert {p for p in pinned if p.endswith("layer_norm")} == norms
    assert len(norms) >= 2 * layers + 1 + (len(model.config.conv_dim) - 1 if name == "large" else 0)
    assert len(pinned) == 1 + layers + len(norms)
    backbone = half.hubert
    assert isinstance(backbone.feature_extractor.conv_layers[0], Float32Island)
    assert backbone.feature_extractor.conv_layers[0].inner.conv.weight.dtype == torch.float32
    assert backbone.encoder.layers[0].feed_forward.intermediate_dense.weight.dtype == torch.float16
    assert backbone.feature_extractor.conv_layers[1].conv.weight.dtype == torch.float16
    assert model.hubert.encoder.layers[0].feed_forward.intermediate_dense.weight.dtype == before  # a copy was cast
    _, nothing = half_with_policy(model, ())
    assert nothing == []


@pytest.mark.parametrize("kind", ["speech", "dc-offset", "near-silence"])
def test_half_with_the_policy_stays_within_fp16_thresholds(layout, kind):
    _, _, (reference, policy, _) = layout
    rel, cosine, agreement = _errors(reference, policy, _inputs(kind))
    assert rel <= FP16["relative_l2_error"] / 5, rel  # measured 1e-3..2e-3
    assert cosine >= FP16["min_cosine_similarity"]
    assert agreement >= FP16["min_argmax_agreement"]


def test_everything_half_is_fine_on_ordinary_input(layout):
    _, _, (reference, _, all_half) = layout
    rel, _, _ = _errors(reference, all_half, _inputs("speech"))
    assert rel <= FP16["relative_l2_error"] / 5  # the policy is not needed here; it is for the cases below


def test_everything_half_fails_on_near_silence(layout):
    _, _, (reference, policy, all_half) = layout
    inputs = _inputs("near-silence")
    half_rel, half_cos, _ = _errors(reference, all_half, inputs)
    policy_rel, _, _ = _errors(reference, policy, inputs)
    assert half_rel > FP16["relative_l2_error"] and half_cos < FP16["min_cosine_similarity"]  # measured ~4e-2
    assert half_rel > 10 * policy_rel


def test_everything_half_fails_on_a_dc_offset_before_the_groupnorm(layout):
    name, _, (reference, policy, all_half) = layout
    inputs = _inputs("dc-offset")
    half_rel, half_cos, agreement = _errors(reference, all_half, inputs)
    policy_rel, _, _ = _errors(reference, policy, inputs)
    if name == "large":
        # LayerNorm over channels per frame removes the offset frame by frame: half is fine there.
        assert half_rel <= FP16["relative_l2_error"]
        return
    assert half_rel > 5 * FP16["relative_l2_error"] and agreement < FP16["min_argmax_agreement"]  # measured 0.25, 0.82
    assert half_rel > 50 * policy_rel
