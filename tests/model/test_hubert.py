"""HubertModel against transformers' implementation: same weights, float32, eval mode."""

import pytest
import torch

from hubert_export import HubertModel

from ..conftest import TINY_BASE, save_reference_checkpoint

ATOL = 1e-5  # float32, the bound on every hidden state and attention


def reference_model(path):
    transformers = pytest.importorskip("transformers")
    return transformers.HubertModel.from_pretrained(path, attn_implementation="eager").eval()


def padded_batch():
    # Lengths that are not multiples of the conv stride, and a padded second row.
    torch.manual_seed(1)
    x = torch.randn(2, 5123)
    attention_mask = torch.ones(2, 5123, dtype=torch.long)
    attention_mask[1, 3333:] = 0
    x[1, 3333:] = 0.0
    return x, attention_mask


@pytest.mark.parametrize("layout", ["base_checkpoint", "large_checkpoint"])
def test_every_output_matches_transformers(layout, request):
    path = request.getfixturevalue(layout)
    ours, ref = HubertModel.from_pretrained(path), reference_model(path)
    x, attention_mask = padded_batch()
    with torch.no_grad():
        a = ref(x, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
        b = ours(x, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
    assert b.last_hidden_state.shape == a.last_hidden_state.shape
    assert (b.last_hidden_state - a.last_hidden_state).abs().max() < ATOL
    assert len(b.hidden_states) == len(a.hidden_states) == ours.config.num_hidden_layers + 1
    for mine, theirs in zip(b.hidden_states, a.hidden_states):
        assert (mine - theirs).abs().max() < ATOL
    assert len(b.attentions) == len(a.attentions) == ours.config.num_hidden_layers
    for mine, theirs in zip(b.attentions, a.attentions):
        assert (mine - theirs).abs().max() < ATOL


@pytest.mark.parametrize("num_samples", [400, 401, 1999, 3200])
def test_unpadded_lengths_match_transformers_with_sdpa(base_checkpoint, num_samples):
    transformers = pytest.importorskip("transformers")
    ref = transformers.HubertModel.from_pretrained(base_checkpoint, attn_implementation="sdpa").eval()
    ours = HubertModel.from_pretrained(base_checkpoint)
    x = torch.randn(1, num_samples)
    with torch.no_grad():
        assert (ours(x).last_hidden_state - ref(x).last_hidden_state).abs().max() < ATOL


def test_padding_does_not_change_real_frames(large_checkpoint):
    """A padded row computes what the same audio computes alone (the mask really masks).

    Only for the layer-norm layout: the base layout's GroupNorm normalises over the padded length,
    which is why base checkpoints' feature extractors return no attention mask.
    """
    ours = HubertModel.from_pretrained(large_checkpoint)
    x, attention_mask = padded_batch()
    with torch.no_grad():
        batched = ours(x, attention_mask=attention_mask).last_hidden_state
        alone = ours(x[1:, :3333]).last_hidden_state
    frames = alone.shape[1]
    assert (batched[1, :frames] - alone[0]).abs().max() < ATOL


def test_explicit_mask_time_indices(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = save_reference_checkpoint(tmp_path, "HubertModel", mask_time_prob=0.3, **TINY_BASE)
    ours, ref = HubertModel.from_pretrained(path), reference_model(path)
    x = torch.randn(2, 4000)
    frames = ours.config.num_frames(4000)
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[0, 2:5] = True
    mask[1, 0] = True
    with torch.no_grad():
        a = ref(x, mask_time_indices=mask).last_hidden_state
        b = ours(x, mask_time_indices=mask).last_hidden_state
        unmasked = ours(x).last_hidden_state
    assert (a - b).abs().max() < ATOL
    assert (b - unmasked).abs().max() > 1e-3  # masking really changed something


def test_return_dict_false_gives_tuple(base_checkpoint):
    ours = HubertModel.from_pretrained(base_checkpoint)
    with torch.no_grad():
        out = ours(torch.randn(1, 1000), output_hidden_states=True, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 2 and len(out[1]) == ours.config.num_hidden_layers + 1


def test_training_behaviour_is_stochastic_and_seeded(tmp_path):
    """Dropout, LayerDrop and SpecAugment act in train mode, draw like transformers with one seed."""
    transformers = pytest.importorskip("transformers")
    cfg = dict(TINY_BASE, mask_time_prob=0.5, mask_time_length=2, mask_feature_prob=0.3, mask_feature_length=4,
               layerdrop=0.0, hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0)
    path = save_reference_checkpoint(tmp_path, "HubertModel", **cfg)
    ours, ref = HubertModel.from_pretrained(path).train(), reference_model(path).train()
    x = torch.randn(2, 6000)
    outs = []
    for model in (ours, ref):
        torch.manual_seed(3)
        import numpy as np
        np.random.seed(3)
        with torch.no_grad():
            outs.append(model(x).last_hidden_state)
    assert (outs[0] - outs[1]).abs().max() < ATOL
    with torch.no_grad():
        assert (ours(x).last_hidden_state - ours.eval()(x).last_hidden_state).abs().max() > 1e-3


def test_freeze_feature_encoder(base_checkpoint):
    from hubert_export import HubertForCTC
    model = HubertForCTC.from_pretrained(base_checkpoint)
    model.freeze_feature_encoder()
    assert not any(p.requires_grad for p in model.hubert.feature_extractor.parameters())
    assert all(p.requires_grad for p in model.hubert.encoder.parameters())


def test_folded_weight_norm_computes_the_same(base_checkpoint):
    ours = HubertModel.from_pretrained(base_checkpoint)
    x = torch.randn(1, 3000)
    with torch.no_grad():
        before = ours(x).last_hidden_state
        ours.encoder.pos_conv_embed.fold_weight_norm()  # what the export does
        after = ours(x).last_hidden_state
    assert isinstance(ours.encoder.pos_conv_embed.conv, torch.nn.Conv1d)
    assert (before - after).abs().max() < 1e-6


def test_conv_pos_batch_norm_variant(tmp_path):
    pytest.importorskip("transformers")
    path = save_reference_checkpoint(tmp_path, "HubertModel", conv_pos_batch_norm=True, **TINY_BASE)
    ours, ref = HubertModel.from_pretrained(path), reference_model(path)
    x = torch.randn(1, 3000)
    with torch.no_grad():
        assert (ours(x).last_hidden_state - ref(x).last_hidden_state).abs().max() < ATOL
