"""The transformer encoder: convolutional relative position embedding, then N transformer layers.

Two layouts, as in the paper's base and large models:
  post-LN (`do_stable_layer_norm=False`, base):  x = LN(x + pos); each layer  x = LN(x + Attn(x));
                                                 x = LN(x + FFN(x))
  pre-LN  (`do_stable_layer_norm=True`, large):  x = x + pos;     each layer  x = x + Attn(LN(x));
                                                 x = x + FFN(LN(x)); a final LN after the last layer
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hubert_export.model.config import HubertConfig
from hubert_export.model.feature_encoder import activation


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is `g * v / ||v||`, the norm taken per kernel tap (weight_norm dim=2).

    Written out rather than through `torch.nn.utils.parametrizations` so that the two parameter
    names stored in checkpoints (`weight_g`, `weight_v`) are plain attributes, and so that export
    can fold it into an ordinary convolution (`folded()`).
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))

    @property
    def weight(self) -> torch.Tensor:
        norm = self.weight_v.norm(dim=(0, 1), keepdim=True)
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)

    def folded(self) -> nn.Conv1d:
        channels, _, kernel_size = self.weight_v.shape
        conv = nn.Conv1d(channels, channels, kernel_size, padding=self.padding, groups=self.groups)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            conv.bias.copy_(self.bias)
        return conv.to(self.weight_v.dtype)


class HubertPositionalConvEmbedding(nn.Module):
    """A wide grouped convolution over time gives each frame its relative position."""

    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        k, groups, d = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups, config.hidden_size
        self.batch_norm = nn.BatchNorm1d(d) if config.conv_pos_batch_norm else None
        if self.batch_norm is None:
            self.conv: nn.Module = WeightNormConv1d(d, k, groups)
        else:
            self.conv = nn.Conv1d(d, d, kernel_size=k, padding=k // 2, groups=groups)
        # Padding k//2 on both sides yields one frame too many when k is even: drop the last one.
        self.num_pad_remove = 1 if k % 2 == 0 else 0
        self.activation = activation(config.feat_extract_activation)

    def fold_weight_norm(self) -> None:
        if isinstance(self.conv, WeightNormConv1d):
            self.conv = self.conv.folded()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = x.transpose(1, 2)
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        x = self.conv(x)
        if self.num_pad_remove:
            x = x[:, :, : -self.num_pad_remove]
        return self.activation(x).transpose(1, 2)


class HubertAttention(nn.Module):
    """Multi-head self-attention. Padded frames are masked out as keys (never as queries)."""

    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = d // self.num_heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = config.attention_dropout
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, D = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, T), True = attend
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:
            # SDPA does not return the probabilities; compute them explicitly when they are asked for.
            scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=-1)
            out = torch.matmul(F.dropout(weights, p=dropout, training=self.training), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scaling)
        out = out.transpose(1, 2).reshape(B, T, D)
        return self.out_proj(out), weights


class HubertFeedForward(nn.Module):
    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class HubertEncoderLayer(nn.Module):
    """One transformer layer, post-LN (base) or pre-LN (large, `pre_layer_norm=True`)."""

    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        self.pre_layer_norm = config.do_stable_layer_norm
        self.attention = HubertAttention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = HubertFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_layer_norm:
            attn, weights = self.attention(self.layer_norm(x), key_mask, output_attentions)
            x = x + self.dropout(attn)
            x = x + self.feed_forward(self.final_layer_norm(x))
        else:
            attn, weights = self.attention(x, key_mask, output_attentions)
            x = self.layer_norm(x + self.dropout(attn))
            x = self.final_layer_norm(x + self.feed_forward(x))
        return x, weights


class HubertEncoder(nn.Module):
    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        self.pre_layer_norm = config.do_stable_layer_norm
        self.layerdrop = config.layerdrop
        self.pos_conv_embed = HubertPositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(HubertEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        x: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """x: (B, T, D); frame_mask: (B, T) bool, True on real frames.

        Returns (last_hidden_state, hidden_states, attentions). As in transformers 5, hidden_states
        holds the input of the first layer and the output of every layer (for pre-LN, before the
        final LayerNorm that produces last_hidden_state).
        """
        if frame_mask is not None:
            x = x * frame_mask[..., None].to(x.dtype)  # padded frames must not leak through the conv
        x = x + self.pos_conv_embed(x)
        if not self.pre_layer_norm:
            x = self.layer_norm(x)
        x = self.dropout(x)

        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layers:
            # LayerDrop (training only): skip whole layers at random.
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue
            x, weights = layer(x, frame_mask, output_attentions)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(weights)
        if self.pre_layer_norm:
            x = self.layer_norm(x)
        return (
            x,
            tuple(hidden_states) if hidden_states is not None else None,
            tuple(attentions) if attentions is not None else None,
        )
