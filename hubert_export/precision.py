"""The FP16 precision policy: which parts of HuBERT stay in FP32 when the rest runs in half.

The policy is data: named rules, each a regular expression matched with `re.search` against
*scope names* of the form `/model/<module path>/<op>` -- the names the TorchScript exporter gives
ONNX nodes (`/model/hubert/encoder/layers.3/layer_norm/LayerNormalization`), which
`hubert_export.backends.tensorrt.name_nodes_by_scope` also gives the nodes of dynamo exports and
the nodes graph passes created. TensorRT's ONNX parser names each layer after its node, so the same
patterns select TensorRT layers (`layer.precision = float32` plus `set_output_type`, under
OBEY_PRECISION_CONSTRAINTS), and `half_with_policy` selects torch modules by the same names
(`/model/hubert/encoder/layers.3/layer_norm/LayerNorm`, an attention's softmax as
`/model/.../attention/Softmax`). A recipe's `tensorrt.fp32_layers` is a list of such patterns;
the default is `DEFAULT_FP32_LAYERS` in recipes.py, the union of the rules below.

    feature_encoder_conv0  r"feature_extractor/conv_layers\\.0/"   first conv block (conv, norm, GELU)
    layer_norm             r"layer_norm|LayerNorm"                 every LayerNorm (and the base GroupNorm)
    softmax                r"[Ss]oftmax"                           attention softmax

Evidence, measured (tests/test_precision.py repeats it): seeded tiny checkpoints of both layouts
(tests/conftest.py TINY_BASE / TINY_LARGE, CTC head), torch 2.13 float16 on CPU against the
float64 eager model, 1 s inputs; relative L2 error of the logits / frame-argmax agreement:

    input (un-normalised, as do_normalize: false      base (GroupNorm conv0)    large (LayerNorm conv0)
    checkpoints like hubert-base feed it)             policy     all-half       policy     all-half
    speech-like, unit variance                        1.1e-3     1.3e-3         1.0e-3     1.2e-3
    DC offset 0.5 + speech at 1e-3                    1.0e-3     2.5e-1 / 0.82  1.8e-3     2.0e-3
    DC offset 0.1 + speech at 1e-3                    1.1e-3     4.3e-2 / 0.97  1.9e-3     2.0e-3
    near-silence, speech at 1e-6                      1.1e-3     3.7e-2 / 0.97  1.0e-3     4.4e-2 / 0.97

  (FP16 gate: relative_l2_error <= 0.02, argmax agreement >= 0.97.) Both failures come from the
  first convolution block: half has 11 significant bits, so a waveform riding on a DC offset keeps
  ~2 bits of its speech once rounded (and the per-channel GroupNorm over time then rescales that
  rounding noise to unit variance), and amplitudes around 1e-6 fall into half's subnormal range
  (below 6.1e-5). Keeping that block in FP32 -- TensorRT reads the FP32 input directly -- removes
  both. fairseq, where HuBERT was trained in FP16, does the same: its conv feature extractor uses
  Fp32GroupNorm / Fp32LayerNorm.
* Ordinary input gains nothing measurable (1.1e-3 vs 1.3e-3), and the pins are cheap: one
  single-channel convolution, the norms and the softmaxes.
* torch's CPU kernels accumulate half norms and softmax in float32, so torch cannot show the
  overflow TensorRT warns about ("Running layernorm after self-attention in FP16 may cause
  overflow ... forcing layernorm layers to run in FP32 precision can help"): `layer_norm` and
  `softmax` are pinned on TensorRT's guidance, not on a torch measurement (measured effect: none).
"""

from __future__ import annotations

import copy
import re
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hubert_export.recipes import DEFAULT_FP32_LAYERS


@dataclass(frozen=True)
class Fp32Rule:
    name: str
    pattern: str  # re.search over scope names
    why: str


FP32_RULES: tuple[Fp32Rule, ...] = (
    Fp32Rule("feature_encoder_conv0", r"feature_extractor/conv_layers\.0/",
             "raw-waveform conv output: DC offset and level exceed half's precision ahead of the GroupNorm"),
    Fp32Rule("layer_norm", r"layer_norm|LayerNorm",
             "variance of large residual activations overflows / loses precision in half"),
    Fp32Rule("softmax", r"[Ss]oftmax", "exp of long-sequence attention scores saturates in half"),
)
DEFAULT_POLICY: tuple[str, ...] = tuple(rule.pattern for rule in FP32_RULES)
# The recipe schema is torch-free and declares the same patterns as its default; one list, checked here.
assert DEFAULT_POLICY == DEFAULT_FP32_LAYERS, "recipes.DEFAULT_FP32_LAYERS must list FP32_RULES' patterns"


def compile_patterns(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in patterns]


def matches(name: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    return any(p.search(name) for p in patterns)


def module_scope(qualified_name: str, root: str = "model") -> str:
    """`hubert.encoder.layers.3.attention` -> `/model/hubert/encoder/layers.3/attention`.

    ModuleList indices stay attached to their list (`layers.3`), as in TorchScript's ONNX names.
    """
    parts: list[str] = [root] if root else []
    for part in qualified_name.split(".") if qualified_name else []:
        if part.isdigit() and parts:
            parts[-1] += f".{part}"
        else:
            parts.append(part)
    return "/" + "/".join(parts)


# ------------------------------------------------------------------------------ torch implementation
class Float32Island(nn.Module):
    """Runs `module` in float32 inside a half-precision model: floating inputs cast up, outputs down."""

    def __init__(self, module: nn.Module, outer_dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = module.float()
        self.outer_dtype = outer_dtype

    def forward(self, *args, **kwargs):
        up = lambda v: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa: E731
        out = self.inner(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})
        return _cast_floating(out, self.outer_dtype)


def _cast_floating(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_cast_floating(v, dtype) for v in value)
    return value


def _attention_with_fp32_softmax(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                                 output_attentions: bool = False):
    """HubertAttention.forward with only the softmax in float32, as a pinned TensorRT softmax layer:
    scores from a half matmul, cast up, softmax, cast down, half matmul with V."""
    B, T, D = x.shape
    q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
    k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
    v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(2, 3)).float() * self.scaling
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(torch.float32).min)
    weights = scores.softmax(dim=-1)
    out = torch.matmul(weights.to(x.dtype), v).transpose(1, 2).reshape(B, T, D)
    return self.out_proj(out), (weights if output_attentions else None)


def half_with_policy(model: nn.Module, patterns: Iterable[str] = DEFAULT_POLICY,
                     dtype: torch.dtype = torch.float16) -> tuple[nn.Module, list[str]]:
    """A half-precision copy of `model` whose modules matching `patterns` run in float32.

    A module is pinned when a pattern matches `<scope>/<ClassName>` (its descendants go with it);
    an attention module's softmax alone when a pattern matches `<scope>/Softmax`. Returns the copy
    (eval mode; `model` is left untouched) and the scopes pinned. With no patterns every op runs in
    half, the baseline the policy is measured against.
    """
    from hubert_export.model.encoder import HubertAttention

    compiled = compile_patterns(patterns)
    half = copy.deepcopy(model).eval().to(dtype)
    pinned: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            qualified = f"{prefix}.{child_name}" if prefix else child_name
            scope = module_scope(qualified)
            if matches(f"{scope}/{type(child).__name__}", compiled):
                setattr(parent, child_name, Float32Island(child, dtype))  # ModuleList accepts "3" too
                pinned.append(scope)
                continue
            if isinstance(child, HubertAttention) and matches(f"{scope}/Softmax", compiled):
                child.forward = types.MethodType(_attention_with_fp32_softmax, child)
                pinned.append(f"{scope}/Softmax")
            visit(child, qualified)

    visit(half, "")
    return half, pinned


class HalfPrecisionRunner:
    """EagerRunner-like: numpy float32 in, float32 out, the model in half under a policy.

    The input stays float32 when the first convolution block is pinned (TensorRT's FP32 input
    feeds an FP32 layer directly) and is rounded to half otherwise.
    """

    def __init__(self, model: nn.Module, task, patterns: Iterable[str] = DEFAULT_POLICY, *,
                 with_attention_mask: bool = False, dtype: torch.dtype = torch.float16) -> None:
        from hubert_export.tasks import ExportModule, output_axes

        half, self.pinned = half_with_policy(model, patterns, dtype)
        self.module = ExportModule(half).eval()
        self.dtype = dtype
        self.name = f"eager-{str(dtype).removeprefix('torch.')}-policy"
        self.input_names = ["input_values"] + (["attention_mask"] if with_attention_mask else [])
        self.output_names = list(output_axes(task, False))
        first = half._backbone().feature_extractor.conv_layers[0]
        self.input_dtype = torch.float32 if isinstance(first, Float32Island) else dtype

    def infer(self, inputs):
        import numpy as np

        values = torch.from_numpy(np.ascontiguousarray(inputs["input_values"])).to(self.input_dtype)
        mask = None
        if "attention_mask" in self.input_names and "attention_mask" in inputs:
            mask = torch.from_numpy(np.ascontiguousarray(inputs["attention_mask"]))
        with torch.inference_mode():
            outputs = self.module(values, mask)
        return {name: out.float().numpy() for name, out in zip(self.output_names, outputs)}
