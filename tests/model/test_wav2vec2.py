"""wav2vec2 checkpoints against transformers' Wav2Vec2 classes: same weights, float32, eval mode.

Both layouts: base (GroupNorm feature encoder, post-LN, no conv bias) and large / large-lv60
(LayerNorm feature encoder, pre-LN `do_stable_layer_norm`, conv bias).
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hubert_export import HubertExportError, Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification, Wav2Vec2Model

from ..conftest import TINY_BASE, TINY_LARGE, save_reference_checkpoint
from .test_hubert import padded_batch  # lengths off the conv stride, a padded second row

ATOL = 1e-5  # as HuBERT's tests: float32 against transformers' eager attention
LAYOUTS = {"base": TINY_BASE, "large": TINY_LARGE}
CLASSES = {"Wav2Vec2Model": Wav2Vec2Model, "Wav2Vec2ForCTC": Wav2Vec2ForCTC,
           "Wav2Vec2ForSequenceClassification": Wav2Vec2ForSequenceClassification}


def reference(path, architecture):
    transformers = pytest.importorskip("transformers")
    return getattr(transformers, architecture).from_pretrained(path, attn_implementation="eager").eval()


def main_output(out):
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("architecture", CLASSES)
def test_every_task_matches_transformers(tmp_path, layout, architecture):
    path = save_reference_checkpoint(tmp_path, architecture, num_labels=3, classifier_proj_size=8, **LAYOUTS[layout])
    ours, ref = CLASSES[architecture].from_pretrained(path), reference(path, architecture)
    x, attention_mask = padded_batch()
    for mask in (None, attention_mask):
        with torch.no_grad():
            a = ref(x, attention_mask=mask, output_hidden_states=True, output_attentions=True)
            b = ours(x, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        assert main_output(b).shape == main_output(a).shape
        assert (main_output(b) - main_output(a)).abs().max() < ATOL
        assert len(b.hidden_states) == len(a.hidden_states) == ours.config.num_hidden_layers + 1
        for mine, theirs in zip(b.hidden_states, a.hidden_states):
            assert (mine - theirs).abs().max() < ATOL
        for mine, theirs in zip(b.attentions, a.attentions, strict=True):
            assert (mine - theirs).abs().max() < ATOL


def test_weighted_layer_sum_classification_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = save_reference_checkpoint(tmp_path, "Wav2Vec2ForSequenceClassification", num_labels=4,
                                     use_weighted_layer_sum=True, classifier_proj_size=8, **TINY_LARGE)
    ref = transformers.Wav2Vec2ForSequenceClassification.from_pretrained(path)
    with torch.no_grad():  # random layer weights, so that the weighted sum is really exercised
        ref.layer_weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
    ref.save_pretrained(path)
    ours, ref = Wav2Vec2ForSequenceClassification.from_pretrained(path), reference(path, "Wav2Vec2ForSequenceClassification")
    x, attention_mask = padded_batch()
    labels = torch.tensor([1, 3])
    for mask in (None, attention_mask):
        with torch.no_grad():
            a, b = ref(x, attention_mask=mask, labels=labels), ours(x, attention_mask=mask, labels=labels)
        assert (a.logits - b.logits).abs().max() < ATOL and abs(a.loss.item() - b.loss.item()) < 1e-5


def test_feature_projection_always_normalises(tmp_path):
    """wav2vec2 has no feat_proj_layer_norm: transformers normalises even when config.json says false."""
    path = save_reference_checkpoint(tmp_path, "Wav2Vec2Model", **TINY_BASE)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, feat_proj_layer_norm=False)))
    ours, ref = Wav2Vec2Model.from_pretrained(path), reference(path, "Wav2Vec2Model")
    assert ours.config.feat_proj_layer_norm and ours.config.extra["feat_proj_layer_norm"] is False
    x = torch.randn(1, 3000)
    with torch.no_grad():
        assert (ours(x).last_hidden_state - ref(x).last_hidden_state).abs().max() < ATOL


def test_masked_spec_embed_and_seeded_training_masks_match_transformers(tmp_path):
    """Explicit mask_time_indices use masked_spec_embed; random spans are drawn inside each row's
    length (wav2vec2 passes its frame mask to the sampler, HuBERT does not), as transformers draws."""
    cfg = dict(TINY_BASE, mask_time_prob=0.5, mask_time_length=2, layerdrop=0.0, hidden_dropout=0.0,
               activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0)
    path = save_reference_checkpoint(tmp_path, "Wav2Vec2Model", **cfg)
    ours, ref = Wav2Vec2Model.from_pretrained(path), reference(path, "Wav2Vec2Model")
    assert ours.masked_spec_embed is not None
    x, attention_mask = padded_batch()
    mask = torch.zeros(2, ours.config.num_frames(x.shape[1]), dtype=torch.bool)
    mask[0, 2:5] = True
    mask[1, 0] = True
    with torch.no_grad():
        a = ref(x, mask_time_indices=mask).last_hidden_state
        b = ours(x, mask_time_indices=mask).last_hidden_state
        assert (a - b).abs().max() < ATOL and (b - ours(x).last_hidden_state).abs().max() > 1e-3
    outs = []
    for model in (ours.train(), ref.train()):
        np.random.seed(3)
        with torch.no_grad():
            outs.append(model(x, attention_mask=attention_mask).last_hidden_state)
    assert (outs[0] - outs[1]).abs().max() < ATOL


def test_saved_checkpoint_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = save_reference_checkpoint(tmp_path / "ref", "Wav2Vec2ForCTC", **TINY_LARGE)
    Wav2Vec2ForCTC.from_pretrained(path).save_pretrained(tmp_path / "ours")
    assert load_file(tmp_path / "ours" / "model.safetensors").keys() == load_file(path / "model.safetensors").keys()
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == "wav2vec2" and config["architectures"] == ["Wav2Vec2ForCTC"]
    assert "feat_proj_layer_norm" not in config and "conv_pos_batch_norm" not in config
    back = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path / "ours").eval()
    original = transformers.Wav2Vec2ForCTC.from_pretrained(path).eval()
    x = torch.randn(1, 3000)
    with torch.no_grad():
        assert torch.equal(back(x).logits, original(x).logits)


def test_pretraining_checkpoint_gives_features_and_its_quantizer_is_ignored(tmp_path, caplog):
    path = save_reference_checkpoint(tmp_path, "Wav2Vec2ForPreTraining", **TINY_BASE)
    ref = reference(path, "Wav2Vec2ForPreTraining")
    with caplog.at_level("WARNING", logger="hubert_export"):
        ours = Wav2Vec2Model.from_pretrained(path)
    assert ("ignoring 7 weights of wav2vec2's pretraining objective (quantizer.*, project_q.*, project_hid.*)"
            in caplog.text)
    x = torch.randn(1, 3000)
    with torch.no_grad():
        assert (ours(x).last_hidden_state - ref.wav2vec2(x).last_hidden_state).abs().max() < ATOL
    # Only the pretraining objective's weights are ignored: any other unknown weight is refused.
    state = load_file(path / "model.safetensors")
    save_file(dict(state, **{"decoder.weight": torch.zeros(2)}), path / "model.safetensors")
    with pytest.raises(HubertExportError, match="unexpected weights: decoder.weight"):
        Wav2Vec2Model.from_pretrained(path)


def test_backbone_and_head_checkpoints_cross_load(tmp_path):
    """The `wav2vec2.` prefix is mapped both ways: a CTC checkpoint's backbone is the bare model's."""
    path = save_reference_checkpoint(tmp_path, "Wav2Vec2ForCTC", **TINY_BASE)
    ctc, backbone = Wav2Vec2ForCTC.from_pretrained(path), Wav2Vec2Model.from_pretrained(path)
    x = torch.randn(1, 2000)
    with torch.no_grad():
        assert torch.equal(ctc.hubert(x).last_hidden_state, backbone(x).last_hidden_state)


@pytest.mark.parametrize("field, value, message", [
    ("add_adapter", True, "add_adapter=True .a convolutional adapter after the encoder. are not supported"),
    ("adapter_attn_dim", 16, "adapter_attn_dim=16 .attention adapters in every layer, as MMS has. are not supported"),
])
def test_adapters_are_refused(tmp_path, field, value, message):
    path = save_reference_checkpoint(tmp_path, "Wav2Vec2ForCTC", **TINY_BASE)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, **{field: value})))
    with pytest.raises(HubertExportError, match=message) as info:
        Wav2Vec2ForCTC.from_pretrained(path)
    assert "\n" not in str(info.value)


def test_hubert_weights_under_a_wav2vec2_config_are_refused_in_the_checkpoints_names(tmp_path):
    path = save_reference_checkpoint(tmp_path, "HubertForCTC", **TINY_BASE)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, model_type="wav2vec2")))
    with pytest.raises(HubertExportError, match=r"does not fit Wav2Vec2ForCTC .*missing weights: wav2vec2\..*"
                                                r"unexpected weights: hubert\.") as info:
        Wav2Vec2ForCTC.from_pretrained(path)
    assert "\n" not in str(info.value)
