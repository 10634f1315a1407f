"""Character and word error rates against references, and the text normalisation applied before them.

Scores are corpus level (total edits / total reference length, as jiwer computes them), with
per-utterance counts kept for the worst cases. The edit distance is rapidfuzz's (what jiwer uses
underneath): benchmarks/scoring_speed.py measures it against the pure-Python table this module
used before and against jiwer itself.

Normalisation (`text_normalizer`) maps references and hypotheses to what the tokenizer can write,
as Hugging Face's wav2vec2/HuBERT evaluation scripts do before computing WER: case folded to the
vocabulary's case, accents stripped where the bare letter is in the vocabulary, every other
character the vocabulary lacks (punctuation, digits, symbols) removed, whitespace collapsed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rapidfuzz.distance import Levenshtein

from hubert_export.errors import HubertExportError


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (unit-cost insert, delete, substitute) of two strings or token sequences."""
    return Levenshtein.distance(a, b)


def character_error_rate(hyps: Sequence[str] | str, refs: Sequence[str] | str) -> float:
    """Total character edits over total reference characters; whitespace runs count as one space."""
    return corpus_score(hyps, refs)[0].cer


def word_error_rate(hyps: Sequence[str] | str, refs: Sequence[str] | str) -> float:
    """Total word edits over total reference words, words split on whitespace."""
    return corpus_score(hyps, refs)[0].wer


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


# ------------------------------------------------------------------------------------------ normalisation
@dataclass(frozen=True)
class TextNormalizer:
    """Text -> the tokenizer's alphabet; `description` says what was done, for reports."""

    alphabet: frozenset[str]
    case: str  # "upper", "lower" or "as is" (a vocabulary with both cases)
    description: str

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        if self.case == "upper":
            text = text.upper()
        elif self.case == "lower":
            text = text.lower()
        kept = []
        for char in text:
            if char.isspace():
                kept.append(" ")
            elif char in self.alphabet:
                kept.append(char)
            else:
                # "É" -> "E" when the vocabulary has E: the decomposition's base letter, marks dropped.
                base = unicodedata.normalize("NFKD", char)[:1]
                if base != char and base in self.alphabet:
                    kept.append(base)
        return " ".join("".join(kept).split())


def text_normalizer(tokenizer: Any) -> TextNormalizer:
    """The normaliser for a `CTCTokenizer`: the characters its decoder can write, in their case."""
    special = {tokenizer.pad_token, tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token,
               tokenizer.word_delimiter_token}
    alphabet = {token for token in tokenizer.vocab if len(token) == 1 and token not in special and not token.isspace()}
    if tokenizer.do_lower_case:  # the decoder lower-cases what it writes
        alphabet = {char.lower() for char in alphabet}
    letters = [c for c in alphabet if c.lower() != c.upper()]
    if letters and all(c.isupper() for c in letters):
        case = "upper"
    elif letters and all(c.islower() for c in letters):
        case = "lower"
    else:
        case = "as is"
    folded = "case kept" if case == "as is" else f"{case}-cased"
    description = (f"{folded}; accents stripped and characters outside the vocabulary's {len(alphabet)} "
                   f"({_ranges(alphabet)}) removed; whitespace collapsed")
    return TextNormalizer(frozenset(alphabet), case, description)


def _ranges(chars: set[str]) -> str:
    """'ABCDEF' -> 'A-F': a short, readable spelling of an alphabet."""
    codes = sorted(ord(c) for c in chars)
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return " ".join(chr(a) if a == b else f"{chr(a)}{chr(b)}" if b == a + 1 else f"{chr(a)}-{chr(b)}"
                    for a, b in runs)


# ------------------------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class Score:
    """Edit counts of one utterance, or of a corpus (their sums)."""

    char_edits: int = 0
    chars: int = 0
    word_edits: int = 0
    words: int = 0

    @property
    def cer(self) -> float:
        return self.char_edits / self.chars if self.chars else float(self.char_edits)

    @property
    def wer(self) -> float:
        return self.word_edits / self.words if self.words else float(self.word_edits)

    def __add__(self, other: Score) -> Score:
        return Score(self.char_edits + other.char_edits, self.chars + other.chars,
                     self.word_edits + other.word_edits, self.words + other.words)


def score(hyp: str, ref: str) -> Score:
    """Character and word edits of one pair; whitespace runs count as one space, ends stripped."""
    hyp_words, ref_words = hyp.split(), ref.split()
    hyp_text, ref_text = " ".join(hyp_words), " ".join(ref_words)
    return Score(Levenshtein.distance(hyp_text, ref_text), len(ref_text),
                 Levenshtein.distance(hyp_words, ref_words), len(ref_words))


def corpus_score(hyps: Sequence[str] | str, refs: Sequence[str] | str) -> tuple[Score, list[Score]]:
    """The corpus total and the per-utterance scores."""
    per_utterance = [score(h, r) for h, r in _pairs(hyps, refs)]
    return sum(per_utterance, Score()), per_utterance


def reference_report(
    ids: Sequence[str], refs: Sequence[str], systems: dict[str, Sequence[str]],
    normalizer: Callable[[str], str] | None = None, worst: int = 5,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Each system's corpus CER/WER against `refs` (normalised and raw), and the worst utterances.

    Returns ({"<system>_cer", "<system>_wer", "raw_<system>_cer", "raw_<system>_wer", "utterances"},
    the `worst` utterances of the first system by CER then WER, with their normalised texts). Without a
    normaliser the headline and raw figures are the same.
    """
    normal = normalizer or (lambda text: text)
    norm_refs = [normal(r) for r in refs]
    norm_hyps = {system: [normal(h) for h in hyps] for system, hyps in systems.items()}
    summary: dict[str, float] = {}
    per_system: dict[str, list[Score]] = {}
    for system, hyps in systems.items():
        total, per_system[system] = corpus_score(norm_hyps[system], norm_refs)
        raw_total, _ = corpus_score(hyps, refs)
        summary.update({f"{system}_cer": total.cer, f"{system}_wer": total.wer,
                        f"raw_{system}_cer": raw_total.cer, f"raw_{system}_wer": raw_total.wer})
    summary["utterances"] = float(len(refs))
    first = next(iter(per_system.values()), [])
    order = sorted(range(len(first)), key=lambda i: (-first[i].cer, -first[i].wer))
    worst_rows = [{"id": ids[i], "cer": first[i].cer, "wer": first[i].wer, "reference": norm_refs[i],
                   **{system: texts[i] for system, texts in norm_hyps.items()}}
                  for i in order[:worst] if first[i].char_edits or first[i].word_edits]
    return summary, worst_rows
