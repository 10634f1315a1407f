"""The arithmetic a HuBERT forward pass costs, computed from its config.

Counted: every multiply-accumulate of a convolution or matrix product, as 2 FLOPs. Not counted:
normalisations, activations, softmax, residual additions and biases, which are elementwise and
together well under 1% of the total for every released HuBERT. For hubert-base on 10 s of audio
this gives about 148 GFLOP: feature encoder ~49 (its second convolution alone ~25), projections and
feed-forward ~85, attention scores and mixing ~9, positional convolution ~5, feature projection ~0.4.
"""

from __future__ import annotations

from typing import Any

from hubert_export.errors import HubertExportError
from hubert_export.model import HubertConfig
from hubert_export.tasks import infer_task


def count_flops(config: HubertConfig, num_samples: int, batch: int = 1, task: str = "auto") -> dict[str, Any]:
    """FLOPs of one forward pass over `batch` clips of `num_samples` samples each.

    Returns the total and its parts (all in FLOPs, for the whole batch): `conv_layers` (one entry per
    feature-encoder convolution), `feature_encoder`, `feature_projection`, `positional_conv`,
    `projections` (query, key, value, output), `feed_forward`, `attention` (scores and mixing, the
    part that grows with the square of the frame count), `head` (the task's output layers), `total`,
    and `frames`, the frame count T.
    """
    if task == "auto":
        task = infer_task(config)
    frames_in, conv_layers = num_samples, []
    in_dim = 1
    for out_dim, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        frames_out = (frames_in - kernel) // stride + 1
        if frames_out <= 0:
            raise HubertExportError(
                f"{num_samples} samples are shorter than the feature encoder's receptive field "
                f"({config.receptive_field} samples): benchmark at least {config.receptive_field} samples")
        conv_layers.append(2 * in_dim * out_dim * kernel * frames_out)
        in_dim, frames_in = out_dim, frames_out
    t, d = frames_in, config.hidden_size
    k, groups = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups
    # Padding k//2 each side: an even kernel computes one frame more than it keeps; it is still computed.
    pos_frames = t + 2 * (k // 2) - k + 1
    layers = config.num_hidden_layers
    if task == "ctc":
        head = 2 * t * d * config.vocab_size
    elif task == "sequence-classification":
        head = 2 * t * d * config.classifier_proj_size + 2 * config.classifier_proj_size * config.num_labels
    else:
        head = 0
    parts = {
        "feature_encoder": sum(conv_layers),
        "feature_projection": 2 * t * config.conv_dim[-1] * d,
        "positional_conv": 2 * pos_frames * d * (d // groups) * k,
        "projections": layers * 4 * 2 * t * d * d,
        "feed_forward": layers * 2 * 2 * t * d * config.intermediate_size,
        # Q K^T and softmax(.) V: each T x T x head_dim per head, i.e. T^2 * d over all heads.
        "attention": layers * 2 * 2 * t * t * d,
        "head": head,
    }
    result: dict[str, Any] = {name: batch * value for name, value in parts.items()}
    result["conv_layers"] = [batch * value for value in conv_layers]
    result["total"] = sum(result[name] for name in parts)
    result.update(frames=t, batch=batch, num_samples=num_samples, task=task)
    return result
