"""Corpus CER/WER of 10,000 utterances: the pure-Python edit distance against jiwer and rapidfuzz.

hubert_export.metrics scores with rapidfuzz's Levenshtein distance (what jiwer calls underneath)
unless a pure-Python table is faster; this script measures the three on the same synthetic corpus
(LibriSpeech-like lengths: 5-35 words, 10-20% word errors), checks that they agree exactly, and
prints the median of --repeats runs of each.

    python benchmarks/scoring_speed.py [--utterances 10000] [--repeats 3]

Timings on a loaded machine are indicative only; the agreement check is exact either way.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence

import jiwer  # imported here, not in the timed runs: hubert_export's import alone takes seconds (torch)

from hubert_export.metrics import corpus_score

WORDS = ("the of and to a in that he was it his i with as had for you be her on at by which have or "
         "from this him but all she they were my are me one their so an said them we who would been "
         "will no when there if more out up into do any your what has man could other than our some "
         "very time upon about may its only now like little then can should made did us such great "
         "before must two these see know over much down after first mister good men own never").split()


def synthetic_corpus(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    refs, hyps = [], []
    for _ in range(count):
        ref = rng.choices(WORDS, k=rng.randint(5, 35))
        hyp = []
        for word in ref:
            roll = rng.random()
            if roll < 0.05:
                continue  # deletion
            if roll < 0.12:
                word = rng.choice(WORDS)  # substitution
            elif roll < 0.15:
                word = word[:-1] or word  # a dropped letter
            hyp.append(word)
            if rng.random() < 0.02:
                hyp.append(rng.choice(WORDS))  # insertion
        refs.append(" ".join(ref).upper())
        hyps.append(" ".join(hyp).upper())
    return refs, hyps


def python_edit_distance(a: Sequence, b: Sequence) -> int:
    """The O(len(a) * len(b)) table hubert_export.metrics used before rapidfuzz (ours)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, item_a in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, item_b in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (item_a != item_b))
        previous = current
    return previous[-1]


def ours(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    chars = sum(python_edit_distance(h, r) for h, r in zip(hyps, refs)) / sum(len(r) for r in refs)
    words = sum(python_edit_distance(h.split(), r.split()) for h, r in zip(hyps, refs)) / sum(
        len(r.split()) for r in refs)
    return chars, words


def with_jiwer(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    return jiwer.cer(refs, hyps), jiwer.wer(refs, hyps)


def with_metrics(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    total, _ = corpus_score(hyps, refs)  # rapidfuzz, plus the per-utterance scores the report keeps
    return total.cer, total.wer


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    refs, hyps = synthetic_corpus(args.utterances)
    print(f"{args.utterances} utterances, {sum(len(r.split()) for r in refs)} reference words, "
          f"{sum(len(r) for r in refs)} characters; median of {args.repeats} runs")
    results = {}
    for name, scorer in (("hubert_export.metrics (rapidfuzz)", with_metrics), ("jiwer", with_jiwer),
                         ("pure-Python table (ours before)", ours)):
        seconds, (cer, wer) = median_seconds(lambda: scorer(refs, hyps), args.repeats)
        results[name] = (cer, wer)
        print(f"{name:36s} {seconds:8.3f} s   CER {cer:.6f}  WER {wer:.6f}")
    figures = list(results.values())
    # The same integer edit counts over the same lengths: the rates agree to the last bit.
    assert all(abs(f[0] - figures[0][0]) < 1e-12 and abs(f[1] - figures[0][1]) < 1e-12 for f in figures), results
    print("all three agree")


if __name__ == "__main__":
    main()
