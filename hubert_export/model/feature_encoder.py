"""The convolutional feature encoder: raw 16 kHz samples -> one 512-d frame every 20 ms.

Seven strided 1-D convolutions (kernel 10/3/3/3/3/2/2, stride 5/2/2/2/2/2/2 in the released
models). The base layout normalises only the first convolution, with a GroupNorm of one group per
channel (`feat_extract_norm="group"`); the large layout puts a LayerNorm over channels after every
convolution (`"layer"`). Then the feature projection maps frames to the transformer's width.
"""

from __future__ import annotations


import torch
from torch import nn

from hubert_export.model.config import HubertConfig


def activation(name: str) -> nn.Module:
    """The activations `transformers.activations.ACT2FN` names, as modules."""
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        # The three tanh approximations of GELU are the same formula written three ways.
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    table = {"relu": nn.ReLU, "selu": nn.SELU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh,
             "sigmoid": nn.Sigmoid, "mish": nn.Mish, "linear": nn.Identity}
    return table[name]()


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ConvLayer(nn.Module):
    """One feature-encoder convolution with its optional norm: 'group', 'layer' or None."""

    def __init__(self, config: HubertConfig, layer_id: int, norm: str | None) -> None:
        super().__init__()
        in_dim = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_dim = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size=config.conv_kernel[layer_id],
                              stride=config.conv_stride[layer_id], bias=config.conv_bias)
        self.norm = norm
        if norm == "group":
            # One group per channel: each channel normalised over time (fairseq's base layout).
            self.layer_norm = nn.GroupNorm(num_groups=out_dim, num_channels=out_dim, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        self.activation = activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T_in) -> (B, C_out, T_out)
        x = self.conv(x)
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(x)


class HubertFeatureEncoder(nn.Module):
    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        if config.feat_extract_norm == "group":
            norms = ["group"] + [None] * (config.num_feat_extract_layers - 1)
        else:
            norms = ["layer"] * config.num_feat_extract_layers
        self.conv_layers = nn.ModuleList(ConvLayer(config, i, norm) for i, norm in enumerate(norms))

    def freeze(self) -> None:
        for param in self.parameters():
            param.requires_grad = False

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, C, T)
        x = input_values[:, None]
        for conv_layer in self.conv_layers:
            x = conv_layer(x)
        return x


class HubertFeatureProjection(nn.Module):
    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        self.feat_proj_layer_norm = config.feat_proj_layer_norm
        if self.feat_proj_layer_norm:
            self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, D)
        if self.feat_proj_layer_norm:
            features = self.layer_norm(features)
        return self.dropout(self.projection(features))


def frame_lengths(config: HubertConfig, sample_lengths: torch.Tensor) -> torch.Tensor:
    """Frames produced for each input length; tensor arithmetic so that it traces into the graph."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        sample_lengths = torch.div(sample_lengths - kernel, stride, rounding_mode="floor") + 1
    return sample_lengths

