"""FLOP counts from the config: a hand-computed tiny case, torch's own FLOP counter, and hubert-base."""

from __future__ import annotations

import pytest
import torch

from hubert_export.errors import HubertExportError
from hubert_export.flops import count_flops
from hubert_export.model import HubertConfig
from .conftest import TINY_BASE


def test_tiny_ctc_matches_hand_computation():
    config = HubertConfig(**TINY_BASE, architectures=["HubertForCTC"])
    flops = count_flops(config, 1000)
    # Frames: (1000-10)//5+1 = 199, (199-3)//2+1 = 99, (99-2)//2+1 = 49.
    assert flops["conv_layers"] == [2 * 1 * 16 * 10 * 199, 2 * 16 * 24 * 3 * 99, 2 * 24 * 32 * 2 * 49]
    assert flops["frames"] == 49
    assert flops["feature_projection"] == 2 * 49 * 32 * 32
    assert flops["positional_conv"] == 2 * 50 * 32 * 8 * 16  # even kernel 16: 49 + 1 frames computed
    assert flops["projections"] == 2 * 4 * 2 * 49 * 32 * 32
    assert flops["feed_forward"] == 2 * 2 * 2 * 49 * 32 * 48
    assert flops["attention"] == 2 * 2 * 2 * 49 * 49 * 32
    assert flops["head"] == 2 * 49 * 32 * 12
    assert flops["total"] == 3_009_472
    assert count_flops(config, 1000, batch=3)["total"] == 3 * 3_009_472


@pytest.mark.parametrize("architecture", ["HubertModel", "HubertForCTC", "HubertForSequenceClassification"])
def test_matches_torch_flop_counter_on_transformers(architecture):
    transformers = pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    # Eager attention: torch counts its two batched matmuls exactly (its SDPA formula is an estimate).
    model = getattr(transformers, architecture)(
        transformers.HubertConfig(**TINY_BASE, attn_implementation="eager")).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 1700))
    ours = count_flops(HubertConfig(**TINY_BASE, architectures=[architecture]), 1700, batch=2)
    assert ours["total"] == counter.get_total_flops()


def test_hubert_base_10s_matches_the_published_breakdown():
    flops = count_flops(HubertConfig(architectures=["HubertForCTC"]), 160_000)
    g = {k: v / 1e9 for k, v in flops.items() if isinstance(v, int) and k not in ("frames", "batch", "num_samples")}
    assert flops["frames"] == 499
    assert g["total"] == pytest.approx(148, rel=0.02)
    assert g["feature_encoder"] == pytest.approx(49, rel=0.03)
    assert flops["conv_layers"][1] / 1e9 == pytest.approx(25, rel=0.03)
    assert g["projections"] + g["feed_forward"] == pytest.approx(85, rel=0.03)
    assert g["attention"] == pytest.approx(9, rel=0.05)
    assert g["positional_conv"] == pytest.approx(4.7, rel=0.03)
    assert g["feature_projection"] == pytest.approx(0.4, rel=0.05)


def test_attention_grows_quadratically_the_rest_linearly():
    config = HubertConfig(architectures=["HubertForCTC"])
    short, long = count_flops(config, 160_000), count_flops(config, 320_000)
    frames = long["frames"] / short["frames"]
    assert long["attention"] / short["attention"] == pytest.approx(frames**2, rel=1e-9)
    assert long["feed_forward"] / short["feed_forward"] == pytest.approx(frames, rel=1e-9)


def test_input_shorter_than_the_receptive_field_is_refused():
    with pytest.raises(HubertExportError, match="receptive field"):
        count_flops(HubertConfig(), 399)
