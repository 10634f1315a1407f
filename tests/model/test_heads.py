"""CTC and sequence-classification heads against transformers: logits and losses."""

import pytest
import torch
import torch.nn.functional as F

from hubert_export import HubertForCTC, HubertForSequenceClassification

from ..conftest import TINY_BASE, TINY_LARGE, save_reference_checkpoint

ATOL = 1e-5


def batch():
    torch.manual_seed(5)
    x = torch.randn(2, 6007)
    attention_mask = torch.ones(2, 6007, dtype=torch.long)
    attention_mask[1, 4100:] = 0
    return x, attention_mask


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ctc_logits_and_loss_match_transformers(tmp_path, reduction):
    transformers = pytest.importorskip("transformers")
    path = save_reference_checkpoint(tmp_path, "HubertForCTC", ctc_loss_reduction=reduction, **TINY_LARGE)
    ours = HubertForCTC.from_pretrained(path)
    ref = transformers.HubertForCTC.from_pretrained(path).eval()
    x, attention_mask = batch()
    labels = torch.tensor([[3, 4, 4, 5, 6, 7], [8, 9, 10, -100, -100, -100]])
    with torch.no_grad():
        a = ref(x, attention_mask=attention_mask, labels=labels)
        b = ours(x, attention_mask=attention_mask, labels=labels)
    assert (a.logits - b.logits).abs().max() < ATOL
    assert torch.isfinite(b.loss) and abs(a.loss.item() - b.loss.item()) < 1e-4 * max(1.0, abs(a.loss.item()))


def test_ctc_zero_infinity_and_unpadded(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = save_reference_checkpoint(tmp_path, "HubertForCTC", ctc_zero_infinity=True, **TINY_BASE)
    ours = HubertForCTC.from_pretrained(path)
    ref = transformers.HubertForCTC.from_pretrained(path).eval()
    x = torch.randn(1, 200)  # 9 frames cannot align 12 labels: infinite loss, zeroed
    labels = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2, 3]])
    with torch.no_grad():
        a, b = ref(x, labels=labels).loss, ours(x, labels=labels).loss
    assert b.item() == a.item() == 0.0


def test_ctc_loss_gradient_flows(ctc_checkpoint):
    model = HubertForCTC.from_pretrained(ctc_checkpoint).train()
    x = torch.randn(1, 4000)
    loss = model(x, labels=torch.tensor([[3, 4, 5]])).loss
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("num_labels", [4, 1])
@pytest.mark.parametrize("weighted", [False, True])
def test_classification_matches_transformers(tmp_path, num_labels, weighted):
    transformers = pytest.importorskip("transformers")
    path = save_reference_checkpoint(tmp_path, "HubertForSequenceClassification", num_labels=num_labels,
                                     use_weighted_layer_sum=weighted, classifier_proj_size=8, **TINY_BASE)
    if weighted:  # random layer weights, so that the weighted sum is really exercised
        ref = transformers.HubertForSequenceClassification.from_pretrained(path)
        with torch.no_grad():
            ref.layer_weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
        ref.save_pretrained(path)
    ours = HubertForSequenceClassification.from_pretrained(path)
    ref = transformers.HubertForSequenceClassification.from_pretrained(path).eval()
    x, attention_mask = batch()
    for mask in (None, attention_mask):
        with torch.no_grad():
            if num_labels > 1:
                labels = torch.tensor([1, 3])
                a = ref(x, attention_mask=mask, labels=labels)
                b = ours(x, attention_mask=mask, labels=labels)
                assert abs(a.loss.item() - b.loss.item()) < 1e-5
            else:
                # transformers applies cross-entropy to one logit (always 0); we follow the Hugging Face
                # convention for num_labels == 1, regression, checked against MSE on the reference logits.
                labels = torch.tensor([0.5, -1.25])
                a = ref(x, attention_mask=mask)
                b = ours(x, attention_mask=mask, labels=labels)
                assert abs(F.mse_loss(a.logits.squeeze(-1), labels).item() - b.loss.item()) < 1e-5
        assert (a.logits - b.logits).abs().max() < ATOL
