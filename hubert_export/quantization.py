"""INT8 policy shared by the back ends: which layer groups stay in float by default, and why.

A layer group is a regular expression over layer names, which are the ONNX node names that the
OpenVINO converter keeps as friendly names ("/model/hubert/feature_extractor/conv_layers.3/conv/Conv").
`benchmarks/int8_sensitivity.py` quantises one group at a time with the same names; its table
(docs/int8.md) is the evidence behind `DEFAULT_FLOAT_GROUPS`.

This module is torch-free: recipes (and a torch-free `check --golden`) import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from hubert_export.errors import InternalError

LAYER_GROUPS: dict[str, str] = {
    **{f"conv{i}": rf"/feature_extractor/conv_layers\.{i}/" for i in range(7)},
    "feature_encoder": r"/feature_extractor/conv_layers\.\d+/",
    "feature_projection": r"/feature_projection/",
    "pos_conv": r"/pos_conv_embed/",
    "attention": r"/attention/(?:[qkv]|out)_proj/",
    # The two activation-by-activation products (query x key, softmax x value): no weights.
    "attention_scores": r"/attention/MatMul",
    "feed_forward": r"/feed_forward/",
    # OpenVINO names the op that produces a graph output after the output: a head whose zero bias
    # (random init) was folded away leaves its MatMul called "logits".
    "head": r"/(?:lm_head|classifier|projector)/|^logits$",
}

# Measured on random-init hubert-base (OpenVINO 2026.4 / NNCF 3.4 and ONNX Runtime 1.32 static QDQ,
# 20 held-out clips against the FP32 model): quantising any ONE feature-encoder convolution alone
# drops frame argmax agreement to 0.62-0.85 and raises the logits' relative L2 error to 0.21-0.52,
# while every transformer group alone keeps agreement >= 0.95 and the whole model with the seven
# convolutions in float keeps 0.96 (OpenVINO). A float-simulated per-tensor INT8 input of a single
# conv in PyTorch reproduces the same error, so it is the model's sensitivity, not a kernel bug.
# ONNX Runtime static QDQ of the attention-score products, calibrated on clips of seconds, broke 1-3
# frame inputs of random-init hubert-base (b1-400: agreement 0, relative L2 1.04; b1-1234: 0.33 / 0.61);
# with those two MatMuls in float, 1.00 / 0.13 and 1.00 / 0.08. Keeping q/k/v or out_proj float did not help.
FLOAT_GROUP_REASONS: dict[str, str] = {
    "feature_encoder": "quantising any one feature-encoder conv alone cost 15-38 points of frame argmax "
                       "agreement on hubert-base (benchmarks/int8_sensitivity.py); the transformer groups "
                       "cost at most 5",
    "feature_projection": "its input is the feature encoder's layer-normed float output, whose range one "
                          "INT8 scale covers badly: in INT8 it left the shipped tiny model's default OpenVINO "
                          "artifact at a transcript CER of 0.14 against eager on the gate's cases (gate 0.10); "
                          "in float, 0.045. One 512x768 product per frame: about 0.3% of hubert-base's work",
    "attention_scores": "INT8 query-key and softmax-value products calibrated on clips of seconds broke "
                        "inputs of 1-3 frames (ONNX Runtime static QDQ, hubert-base: frame argmax agreement 0)",
}
DEFAULT_FLOAT_GROUPS: tuple[str, ...] = ("feature_encoder", "feature_projection", "attention_scores")

# Accuracy control reverts groups to float in this order, most sensitive first: the argmax agreement
# with FP32 when the group alone is INT8 (OpenVINO, random-init hubert-base, 20 clips): conv6 0.68,
# conv4 0.72, conv3 0.73, conv5 0.73, conv2 0.75, conv1 0.75, conv0 0.85 (attention_scores: broke
# short inputs on ONNX Runtime, see above), feed_forward 0.97, feature_projection 0.97-0.98,
# attention 0.985, head 0.987, pos_conv 0.996. (head and pos_conv re-measured after the naming fix in
# passes.fold_constants: the first ranking had head at 1.00 because OpenVINO names a zero-bias head's
# MatMul "logits", which the head pattern did not find.)
REVERT_ORDER: tuple[str, ...] = ("conv6", "conv4", "conv3", "conv5", "conv2", "conv1", "conv0", "attention_scores",
                                 "feed_forward", "feature_projection", "attention", "head", "pos_conv")

# The groups that carry the work (hubert-base, 10 s: feature-encoder convolutions ~49 GFLOP, attention
# projections and feed-forward ~85 of ~148): an "INT8" model with none of their layers in INT8 runs at
# FP32 speed, and accuracy control refuses to hand one over as INT8.
COMPUTE_GROUPS: tuple[str, ...] = ("feature_encoder", "attention", "feed_forward")


def compute_layers(names: Iterable[str]) -> list[str]:
    """Those of `names` (Conv/MatMul layers) in a compute group: where INT8 speeds a model up."""
    return matching(names, group_patterns(COMPUTE_GROUPS))


def group_patterns(groups: Iterable[str]) -> list[str]:
    """The name patterns of layer groups (unknown names are the recipe schema's job to refuse)."""
    return [LAYER_GROUPS[g] for g in groups]


def matching(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The names that any pattern finds (re.search, as every pattern in a recipe is used)."""
    compiled = [re.compile(p) for p in patterns]
    return [n for n in names if any(p.search(n) for p in compiled)]


def covered_by(group: str, groups: Iterable[str]) -> bool:
    """Whether `group` is one of `groups` or inside one of them (conv3 is inside feature_encoder)."""
    groups = set(groups)
    return group in groups or (group.startswith("conv") and "feature_encoder" in groups)


def group_of(name: str, groups: Iterable[str]) -> str | None:
    """The first of `groups` whose pattern finds `name`."""
    return next((g for g in groups if re.search(LAYER_GROUPS[g], name)), None)


def check_grouped(names: Iterable[str]) -> None:
    """Refuse to quantise a graph with a Conv/MatMul (`names`) that no fine layer group finds: its
    float-or-INT8 choice would be made by accident. A graph pass once renamed every feature-encoder
    conv of hubert-large (`node_Conv_0`), the float feature encoder matched nothing and was quantised."""
    names = list(names)
    grouped = set(matching(names, group_patterns(g for g in LAYER_GROUPS if g != "feature_encoder")))
    lost = [n for n in names if n not in grouped]
    if lost:
        shown = ", ".join(repr(n) for n in lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
        raise InternalError(f"layers {shown} belong to no INT8 layer group (hubert_export/quantization.py "
                            "LAYER_GROUPS): a pass or converter renamed them, so which stay float cannot be told")
