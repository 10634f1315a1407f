"""Checkpoint formats, key mapping, strictness and round trips."""

import json
import os
import pickle
import resource
import shutil

import pytest
import torch

from hubert_export import HubertExportError, HubertForCTC, HubertForSequenceClassification, HubertModel
from hubert_export.model import weights

from ..conftest import TINY_BASE


def max_diff(a, b, x):
    with torch.no_grad():
        return (a(x).last_hidden_state - b(x).last_hidden_state).abs().max().item()


def test_round_trip_through_transformers(ctc_checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = HubertForCTC.from_pretrained(ctc_checkpoint)
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.HubertForCTC.from_pretrained(tmp_path / "ours").eval()
    original = transformers.HubertForCTC.from_pretrained(ctc_checkpoint).eval()
    x = torch.randn(1, 3000)
    with torch.no_grad():
        assert torch.equal(back(x).logits, original(x).logits)
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architectures"] == ["HubertForCTC"]


def test_old_weight_norm_names_and_torch_bin(base_checkpoint, tmp_path):
    """A pytorch_model.bin with weight_g / weight_v names (pre-4.35 checkpoints) loads the same."""
    state = weights.load_checkpoint_state(base_checkpoint)
    assert "encoder.pos_conv_embed.conv.weight_g" in state
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(base_checkpoint / "config.json", old)
    torch.save({k: v.clone() for k, v in state.items()}, old / "pytorch_model.bin")
    a, b = HubertModel.from_pretrained(base_checkpoint), HubertModel.from_pretrained(old)
    assert max_diff(a, b, torch.randn(1, 2000)) == 0.0
    saved = torch.load(old / "pytorch_model.bin", weights_only=True)
    assert "encoder.pos_conv_embed.conv.weight_v" in saved


def test_sharded_safetensors_with_prefix(ctc_checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    ref = transformers.HubertForCTC.from_pretrained(ctc_checkpoint)
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    a, b = HubertForCTC.from_pretrained(ctc_checkpoint), HubertForCTC.from_pretrained(tmp_path)
    x = torch.randn(1, 2000)
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)


def test_backbone_into_head_initialises_only_the_head(base_checkpoint):
    backbone = HubertModel.from_pretrained(base_checkpoint)
    ctc = HubertForCTC.from_pretrained(base_checkpoint)
    classifier = HubertForSequenceClassification.from_pretrained(base_checkpoint)
    x = torch.randn(1, 2000)
    assert max_diff(backbone, ctc.hubert, x) == 0.0
    assert max_diff(backbone, classifier.hubert, x) == 0.0
    assert ctc.lm_head.weight.abs().sum() > 0  # initialised, not left empty


def test_head_checkpoint_into_backbone(ctc_checkpoint):
    ctc = HubertForCTC.from_pretrained(ctc_checkpoint)
    backbone = HubertModel.from_pretrained(ctc_checkpoint)
    assert max_diff(ctc.hubert, backbone, torch.randn(1, 2000)) == 0.0


def test_missing_weights_are_listed(base_checkpoint, tmp_path):
    state = weights.load_checkpoint_state(base_checkpoint)
    del state["encoder.layers.1.attention.q_proj.weight"]
    shutil.copy(base_checkpoint / "config.json", tmp_path)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in weights.to_checkpoint_state(state).items()}, tmp_path / "model.safetensors")
    with pytest.raises(HubertExportError, match=r"missing weights: encoder.layers.1.attention.q_proj.weight"):
        HubertModel.from_pretrained(tmp_path)


def test_unexpected_weights_strict_and_relaxed(base_checkpoint, tmp_path):
    state = weights.to_checkpoint_state(weights.load_checkpoint_state(base_checkpoint))
    state["encoder.extra_thing.weight"] = torch.zeros(3)
    shutil.copy(base_checkpoint / "config.json", tmp_path)
    from safetensors.torch import save_file
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(HubertExportError, match="unexpected weights: encoder.extra_thing.weight"):
        HubertModel.from_pretrained(tmp_path)
    HubertModel.from_pretrained(tmp_path, strict=False)


def test_config_that_does_not_fit_the_weights(base_checkpoint, tmp_path):
    shutil.copy(base_checkpoint / "model.safetensors", tmp_path)
    config = json.loads((base_checkpoint / "config.json").read_text())
    config["intermediate_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(HubertExportError, match="has shape"):
        HubertModel.from_pretrained(tmp_path)


def test_truncated_safetensors(base_checkpoint, tmp_path):
    shutil.copy(base_checkpoint / "config.json", tmp_path)
    data = (base_checkpoint / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HubertExportError, match="truncated or corrupt"):
        HubertModel.from_pretrained(tmp_path)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/hubert_export_pwned",))


def test_pickle_carrying_code_is_refused(base_checkpoint, tmp_path):
    shutil.copy(base_checkpoint / "config.json", tmp_path)
    marker = "/tmp/hubert_export_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Boom()}, f)
    with pytest.raises(HubertExportError, match="pickled code"):
        HubertModel.from_pretrained(tmp_path)
    assert not os.path.exists(marker)


def test_no_weights(base_checkpoint, tmp_path):
    shutil.copy(base_checkpoint / "config.json", tmp_path)
    with pytest.raises(HubertExportError, match="no weights"):
        HubertModel.from_pretrained(tmp_path)


def test_fp16_checkpoint_loads_as_float32(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = transformers.HubertModel(transformers.HubertConfig(**TINY_BASE)).half()
    model.save_pretrained(tmp_path)
    ours = HubertModel.from_pretrained(tmp_path)
    assert all(p.dtype == torch.float32 for p in ours.parameters())
