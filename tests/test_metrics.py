"""Edit distance and corpus-level error rates on known pairs and against a full-matrix reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubert_export.errors import HubertExportError
from hubert_export.metrics import character_error_rate, edit_distance, word_error_rate


def _full_matrix_levenshtein(a, b) -> int:
    # Textbook Wagner-Fischer with the whole table: an independent reference for the O(min) version.
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        table[i][0] = i
    for j in range(len(b) + 1):
        table[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + cost)
    return table[len(a)][len(b)]


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("kitten", "sitting", 3),
        ("sitting", "kitten", 3),
        ("flaw", "lawn", 2),
        ("intention", "execution", 5),
        ("", "", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("same", "same", 0),
        ("ab", "ba", 2),  # no transpositions in Levenshtein
        (["the", "cat", "sat"], ["the", "bat", "sat", "down"], 2),
        ((1, 2, 3), (1, 3), 1),
    ],
)
def test_edit_distance_known_pairs(a, b, expected):
    assert edit_distance(a, b) == expected


@settings(max_examples=300, deadline=None)
@given(a=st.text(alphabet="abc ", max_size=12), b=st.text(alphabet="abc ", max_size=12))
def test_edit_distance_matches_full_matrix(a, b):
    assert edit_distance(a, b) == _full_matrix_levenshtein(a, b) == edit_distance(b, a)


def test_character_error_rate_known_pairs():
    assert character_error_rate(["kitten"], ["sitting"]) == pytest.approx(3 / 7)
    assert character_error_rate("kitten", "sitting") == pytest.approx(3 / 7)  # bare strings are one pair
    assert character_error_rate(["HELLO WORLD"], ["HELLO WORLD"]) == 0.0
    # Corpus level: (3 + 1) edits over (7 + 4) reference characters, not the mean of 3/7 and 1/4.
    assert character_error_rate(["kitten", "abd"], ["sitting", "abcd"]) == pytest.approx(4 / 11)
    # Whitespace runs count as one space (Hugging Face's decoder can emit double spaces).
    assert character_error_rate(["A  B "], ["A B"]) == 0.0


def test_word_error_rate_known_pairs():
    assert word_error_rate(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(3 / 6)
    assert word_error_rate(["THE QUICK BROWN FOX"], ["THE QUICK BROWN FOX"]) == 0.0
    assert word_error_rate(["a b c", "x"], ["a c", "y z"]) == pytest.approx((1 + 2) / (2 + 2))
    assert word_error_rate(["HELLO  WORLD"], ["HELLO WORLD"]) == 0.0


def test_empty_references():
    assert character_error_rate([""], [""]) == 0.0
    assert word_error_rate([], []) == 0.0
    # Empty reference, non-empty hypothesis: every hypothesis unit counts as an error.
    assert word_error_rate(["extra words here"], [""]) == 3.0
    assert character_error_rate(["ab"], [""]) == 2.0
    # Mixed: the empty reference adds its hypothesis' length to the edits, nothing to the length.
    assert word_error_rate(["a b", "noise"], ["a b", ""]) == pytest.approx(1 / 2)


def test_mismatched_counts_rejected():
    with pytest.raises(HubertExportError, match="2 hypotheses but 1 reference"):
        word_error_rate(["a", "b"], ["a"])


# --- normalisation and the corpus report --------------------------------------------------------


def _tokenizer(**options):
    from hubert_export.tokenizer import CTCTokenizer

    letters = {c: i + 5 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")}
    return CTCTokenizer({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **letters}, **options)


def test_normaliser_maps_text_to_the_vocabulary():
    from hubert_export.metrics import text_normalizer

    normal = text_normalizer(_tokenizer())
    assert normal.case == "upper" and normal.alphabet == frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
    assert normal("  It's a café,  \"naïve\" test-case #3!\n") == "IT'S A CAFE NAIVE TESTCASE"
    assert normal("<unk> | pad") == "UNK PAD"  # special tokens and the word delimiter are not text
    assert "upper-cased" in normal.description and "(' A-Z)" in normal.description
    # A vocabulary the decoder lower-cases (do_lower_case) is scored in lower case.
    assert text_normalizer(_tokenizer(do_lower_case=True))("Hello, World") == "hello world"


def test_corpus_error_rates_match_jiwer():
    jiwer = pytest.importorskip("jiwer")
    import random

    rng = random.Random(0)
    words = ["a", "bb", "ccc", "the", "it's", "x"]
    refs = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(200)]
    hyps = [" ".join(w for w in r.split() if rng.random() > 0.2) + rng.choice(["", " x", " zz"]) for r in refs]
    hyps = [h.strip() for h in hyps]
    assert word_error_rate(hyps, refs) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert character_error_rate(hyps, refs) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)


def test_reference_report_normalised_raw_and_worst():
    from hubert_export.metrics import reference_report, text_normalizer

    refs = ["hello world.", "It's fine", "good day"]
    artifact = ["HELLO WORLD", "ITS FINE", "GOOD DAY"]
    eager = ["HELLO WORLD", "IT'S FINE", "GOOD DAY"]
    summary, worst = reference_report(["u1", "u2", "u3"], refs, {"artifact": artifact, "eager": eager},
                                      text_normalizer(_tokenizer()))
    assert summary["artifact_cer"] == pytest.approx(1 / 28)  # the one missing apostrophe, over 11 + 9 + 8 characters
    assert summary["eager_cer"] == 0.0 and summary["eager_wer"] == 0.0
    assert summary["artifact_wer"] == pytest.approx(1 / 6)
    assert summary["raw_eager_cer"] == pytest.approx(character_error_rate(eager, refs)) and summary["raw_eager_cer"] > 0.5
    assert summary["utterances"] == 3.0
    assert worst == [{"id": "u2", "cer": pytest.approx(1 / 9), "wer": 0.5, "reference": "IT'S FINE",
                      "artifact": "ITS FINE", "eager": "IT'S FINE"}]
    plain, _ = reference_report(["u1"], ["a b"], {"artifact": ["A B"]})
    assert plain["artifact_cer"] == plain["raw_artifact_cer"] == pytest.approx(2 / 3)
