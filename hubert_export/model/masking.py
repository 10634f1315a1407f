"""SpecAugment span masking (training only), as HuBERT and wav2vec 2.0 apply it.

Spans of `mask_length` frames (time) or channels (feature) are chosen at random; a time-masked frame
is replaced by the learned `masked_spec_embed`, a feature-masked channel by zero. The sampling is
the one `transformers._compute_mask_indices` performs, so that a seeded run draws the same spans.
"""

from __future__ import annotations

import numpy as np
import torch


def compute_mask_indices(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    attention_mask: torch.Tensor | None = None,
    min_masks: int = 0,
) -> np.ndarray:
    """A boolean (batch, length) array with random spans of `mask_length` set.

    About `mask_prob * length / mask_length` spans per row (at least `min_masks`); the count is
    rounded with one random epsilon shared by the batch. Rows shorter than the batch (per
    `attention_mask`) draw spans only inside their own length.
    """
    batch_size, sequence_length = shape
    if mask_length < 1:
        raise ValueError("mask_length has to be bigger than 0")
    if mask_length > sequence_length:
        raise ValueError(
            f"mask_length ({mask_length}) has to be smaller than sequence_length ({sequence_length})"
        )
    epsilon = np.random.rand(1).item()

    def num_spans(input_length: int) -> int:
        n = max(int(mask_prob * input_length / mask_length + epsilon), min_masks)
        n = min(n, sequence_length // mask_length)
        return min(n, max(input_length - (mask_length - 1), 0))

    input_lengths = (
        attention_mask.detach().sum(-1).tolist() if attention_mask is not None else [sequence_length] * batch_size
    )
    mask = np.zeros((batch_size, sequence_length), dtype=bool)
    max_spans = num_spans(sequence_length)
    if max_spans == 0:
        return mask

    starts = []
    for input_length in input_lengths:
        n = num_spans(input_length)
        row = np.random.choice(np.arange(input_length - (mask_length - 1)), n, replace=False)
        # Pad every row to max_spans by repeating its first start (or the last frame, which is
        # padding whenever a row has no span at all), so that the rows stack.
        filler = row[0] if len(row) else sequence_length - 1
        starts.append(np.concatenate([row, np.full(max_spans - n, filler, dtype=np.int64)]))
    starts = np.array(starts)

    spans = (starts[:, :, None] + np.arange(mask_length)[None, None, :]).reshape(batch_size, -1)
    spans = np.minimum(spans, sequence_length - 1)
    np.put_along_axis(mask, spans, True, axis=-1)
    return mask
