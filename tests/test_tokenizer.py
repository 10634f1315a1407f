"""CTCTokenizer against Hugging Face's Wav2Vec2CTCTokenizer on the same files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubert_export.errors import HubertExportError
from hubert_export.tokenizer import CTCTokenizer

transformers = pytest.importorskip("transformers")

# The layout of facebook/hubert-large-ls960-ft's vocab.json.
LETTERS = "ETAONIHSRDLUMWCFGYPBVK'XJQZ"
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate(LETTERS)}}
ID = VOCAB.__getitem__

DECODE_CASES = [
    [],
    [0, 0, 0],
    # repeats merge; a blank between repeats keeps both ("HELLO")
    [ID("H"), ID("H"), ID("E"), 0, ID("L"), ID("L"), 0, ID("L"), ID("O"), ID("O")],
    # delimiters: leading/trailing stripped, repeated ones merged, blank-separated ones kept as two spaces
    [4, 4, ID("A"), 4, 4, ID("B"), 4, 0, 4, ID("C"), 4, 4],
    # unk, bos, eos and ids outside the vocabulary (decoded as <unk>, merging with a real <unk>)
    [3, 3, ID("A"), 1, 2, 99, 3, ID("B")],
    [ID("'"), 0, ID("S"), 4, 0, 0, ID("Z")],
]

ENCODE_CASES = [
    "HELLO WORLD",
    "  LEADING AND TRAILING  ",
    "DOUBLE  SPACE",
    "DON'T",
    "MIXED Case",
    "UNKNOWN 7 CHARS!",
    "HE <unk> LO",
    "A<s>B</s>C",
    "A|B",
    "",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Our tokenizer saved to disk and Hugging Face's loaded from those files, for both case modes."""
    pairs = {}
    for lower in (False, True):
        directory = tmp_path_factory.mktemp(f"tok_lower_{lower}")
        ours = CTCTokenizer.from_vocab(VOCAB, do_lower_case=lower)
        ours.save(directory)
        pairs[lower] = (ours, transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(directory)), directory)
    return pairs


@pytest.mark.parametrize("lower", [False, True])
@pytest.mark.parametrize("ids", DECODE_CASES)
def test_decode_matches_hugging_face(saved, lower, ids):
    ours, theirs, _ = saved[lower]
    assert ours.decode_ids(ids) == theirs.decode(ids)


def test_decode_known_strings(saved):
    ours = saved[False][0]
    assert ours.decode_ids(DECODE_CASES[2]) == "HELLO"
    assert ours.decode_ids(DECODE_CASES[3]) == "A B  C"
    assert ours.decode_ids(np.array(DECODE_CASES[4])) == "<unk>A<s></s><unk>B"


@pytest.mark.parametrize("lower", [False, True])
@pytest.mark.parametrize("text", ENCODE_CASES)
def test_encode_matches_hugging_face(saved, lower, text):
    ours, theirs, _ = saved[lower]
    assert ours.encode(text) == theirs.encode(text)


def test_encode_known_ids(saved):
    assert saved[False][0].encode("A B") == [ID("A"), 4, ID("B")]
    assert saved[False][0].encode("ab") == [3, 3]  # case-sensitive vocabulary
    assert saved[True][0].encode("ab") == [ID("A"), ID("B")]  # do_lower_case accepts lower case input


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 4, 5, 6, 7, 31, 40]), max_size=40))
def test_decode_random_sequences_match_hugging_face(saved, ids):
    ours, theirs, _ = saved[False]
    assert ours.decode_ids(ids) == theirs.decode(ids)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=list("ABZ' |<>unks/x\t"), max_size=30))
def test_encode_random_text_matches_hugging_face(saved, text):
    ours, theirs, _ = saved[False]
    assert ours.encode(text) == theirs.encode(text)


def test_saved_files_round_trip_through_hugging_face(saved, tmp_path):
    ours, theirs, directory = saved[True]
    assert theirs.get_vocab() == VOCAB
    assert theirs.pad_token_id == ours.pad_token_id == 0
    assert theirs.vocab_size == ours.vocab_size == 32
    assert theirs.do_lower_case is True
    # And what Hugging Face saves, we load.
    theirs.save_pretrained(str(tmp_path))
    reloaded = CTCTokenizer.from_dir(tmp_path)
    assert reloaded.vocab == VOCAB and reloaded.do_lower_case is True
    assert reloaded.decode_ids(DECODE_CASES[2]) == "hello"


def test_from_dir_custom_special_tokens_and_clean_up(tmp_path):
    vocab = {"[PAD]": 0, "[UNK]": 1, "_": 2, "A": 3, "B": 4, ".": 5, ",": 6}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "pad_token": "[PAD]",
                "unk_token": {"content": "[UNK]", "lstrip": False, "__type": "AddedToken"},
                "word_delimiter_token": "_",
                "clean_up_tokenization_spaces": True,
            }
        )
    )
    ours = CTCTokenizer.from_dir(tmp_path)
    # transformers 5.24's from_pretrained drops a custom word_delimiter_token from the config (it
    # files it under model-specific special tokens and keeps "|"), so the reference is built directly.
    theirs = transformers.Wav2Vec2CTCTokenizer(
        str(tmp_path / "vocab.json"),
        pad_token="[PAD]",
        unk_token="[UNK]",
        word_delimiter_token="_",
        clean_up_tokenization_spaces=True,
    )
    assert ours.word_delimiter_token == theirs.word_delimiter_token == "_"
    assert ours.pad_token_id == theirs.pad_token_id == 0
    for ids in ([3, 2, 5, 2, 4, 2, 6, 0, 6, 2], [7, 8, 1, 1, 3], [2, 0, 3, 3, 0, 3]):
        assert ours.decode_ids(ids) == theirs.decode(ids)
    for text in ("A B. A,B", "A [UNK] B", "Q"):
        assert ours.encode(text) == theirs.encode(text)
    assert ours.decode_ids([3, 2, 5]) == "A."  # " ." cleaned up


def test_from_dir_legacy_special_tokens_map(tmp_path):
    vocab = {"<blank>": 0, "<unk>": 1, "|": 2, "A": 3}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<unk>"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<blank>"}}))
    ours = CTCTokenizer.from_dir(tmp_path)
    theirs = transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(tmp_path))
    assert ours.pad_token == "<blank>" and ours.pad_token_id == theirs.pad_token_id == 0
    assert ours.decode_ids([3, 0, 3, 2, 1]) == theirs.decode([3, 0, 3, 2, 1])


def test_vocab_without_special_tokens_matches_hugging_face(tmp_path):
    # bos/eos/unk/| missing from vocab.json: Hugging Face appends them after the vocabulary.
    (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "a": 1, "b": 2}))
    ours = CTCTokenizer.from_dir(tmp_path)
    theirs = transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(tmp_path))
    for ids in ([1, 3, 4, 5, 6, 7, 2], [6, 1, 6, 6, 0, 2]):
        assert ours.decode_ids(ids) == theirs.decode(ids)
    assert ours.encode("a b<s> a <unk> |b") == theirs.encode("a b<s> a <unk> |b")
    with pytest.raises(HubertExportError, match="not in the vocabulary"):
        ours.encode("c")  # Hugging Face silently yields None here


def _one_hot_logits(sequences: list[list[int]], frames: int, vocab: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, size=(len(sequences), frames, vocab)).astype(np.float32)
    for item, ids in enumerate(sequences):
        for frame, token in enumerate(ids):
            logits[item, frame, token] += 10
    return logits


def test_greedy_decode_hand_made_logits(saved):
    ours, theirs, _ = saved[False]
    hello = [0, ID("H"), ID("E"), ID("E"), ID("L"), 0, ID("L"), ID("O"), 4, 0]
    cab = [ID("C"), ID("A"), ID("A"), ID("B"), 0, 0, 0, 0, 0, 0]
    logits = _one_hot_logits([hello, cab], frames=12)
    # Frames 10 and 11 are noise: full length picks something up, the valid lengths cut it off.
    assert ours.greedy_decode(logits, lengths=[10, 4]) == ["HELLO", "CAB"]
    assert ours.greedy_decode(logits, lengths=np.array([5, 0])) == ["HEL", ""]
    full = ours.greedy_decode(logits)
    assert full == [theirs.decode(row) for row in logits.argmax(-1)]
    assert ours.greedy_decode(logits[0]) == [full[0]]


@pytest.mark.parametrize(
    "shape, lengths",
    [
        ((2, 5, 0), None),
        ((5,), None),
        ((1, 2, 5, 32), None),
        ((2, 5, 32), [5]),
        ((2, 5, 32), [6, 1]),
        ((2, 5, 32), [-1, 1]),
    ],
)
def test_greedy_decode_rejects_bad_shapes(saved, shape, lengths):
    with pytest.raises(HubertExportError, match="logits|lengths"):
        saved[False][0].greedy_decode(np.zeros(shape, np.float32), lengths)


def test_from_dir_errors(tmp_path):
    with pytest.raises(HubertExportError, match="no vocab.json"):
        CTCTokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text("{broken")
    with pytest.raises(HubertExportError, match="not valid JSON"):
        CTCTokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"A": 0, "|": 1}))
    with pytest.raises(HubertExportError, match="pad token '<pad>'.*CTC blank"):
        CTCTokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"en": {"<pad>": 0}}))
    with pytest.raises(HubertExportError, match="target_lang"):
        CTCTokenizer.from_dir(tmp_path)


def test_nested_vocab_with_target_lang(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"en": {"<pad>": 0, "a": 1}, "fr": {"<pad>": 0, "b": 1}}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"target_lang": "fr"}))
    ours = CTCTokenizer.from_dir(tmp_path)
    theirs = transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(tmp_path))
    assert ours.decode_ids([1, 0, 1]) == theirs.decode([1, 0, 1]) == "bb"
