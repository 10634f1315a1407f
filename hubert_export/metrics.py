"""Corpus-level character and word error rates for checking exported models against references."""

from __future__ import annotations

from collections.abc import Sequence

from hubert_export.errors import HubertExportError


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (unit-cost insert, delete, substitute); O(len(a)*len(b)) time, O(min) memory."""
    # Keep the shorter sequence as the row so memory is O(min(len(a), len(b))).
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, item_a in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, item_b in enumerate(b, start=1):
            current[j] = min(
                previous[j] + 1,  # delete item_a
                current[j - 1] + 1,  # insert item_b
                previous[j - 1] + (item_a != item_b),  # substitute, free when equal
            )
        previous = current
    return previous[-1]


def character_error_rate(hyps: Sequence[str] | str, refs: Sequence[str] | str) -> float:
    """Total character edits over total reference characters; whitespace runs count as one space."""
    pairs = _pairs(hyps, refs)
    return _error_rate([(" ".join(h.split()), " ".join(r.split())) for h, r in pairs])


def word_error_rate(hyps: Sequence[str] | str, refs: Sequence[str] | str) -> float:
    """Total word edits over total reference words, words split on whitespace."""
    pairs = _pairs(hyps, refs)
    return _error_rate([(h.split(), r.split()) for h, r in pairs])


def _pairs(hyps: Sequence[str] | str, refs: Sequence[str] | str) -> list[tuple[str, str]]:
    # A bare string would otherwise be read as a list of one-character transcripts.
    hyps = [hyps] if isinstance(hyps, str) else list(hyps)
    refs = [refs] if isinstance(refs, str) else list(refs)
    if len(hyps) != len(refs):
        raise HubertExportError(
            f"{len(hyps)} hypotheses but {len(refs)} reference transcripts: "
            "give every audio file exactly one reference"
        )
    return list(zip(hyps, refs))


def _error_rate(pairs: list[tuple[Sequence, Sequence]]) -> float:
    edits = sum(edit_distance(h, r) for h, r in pairs)
    reference_length = sum(len(r) for _, r in pairs)
    if reference_length == 0:
        # Nothing to say: every hypothesis unit is an error (0.0 when both sides are empty).
        return float(edits)
    return edits / reference_length
