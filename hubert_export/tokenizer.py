"""A CTC character tokenizer that reads and writes Hugging Face `Wav2Vec2CTCTokenizer` files.

Encoding and decoding reproduce `Wav2Vec2CTCTokenizer.encode` / `.decode` with default arguments
(transformers 5), quirks included, so transcripts from an exported artifact can be compared
string for string with the PyTorch pipeline. transformers itself is never imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hubert_export.errors import HubertExportError

# The clean-up Hugging Face applies when a tokenizer_config sets clean_up_tokenization_spaces.
_CLEAN_UP_REPLACEMENTS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "word_delimiter_token")


class CTCTokenizer:
    """Characters <-> ids for a CTC head; the pad token is the CTC blank."""

    def __init__(
        self,
        vocab: dict[str, int],
        *,
        pad_token: str = "<pad>",
        unk_token: str = "<unk>",
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        word_delimiter_token: str = "|",
        replace_word_delimiter_char: str = " ",
        do_lower_case: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        if not vocab or not all(isinstance(k, str) and type(v) is int for k, v in vocab.items()):
            raise HubertExportError(
                "vocab must be a non-empty mapping of token strings to integer ids: "
                "check vocab.json (a nested multilingual vocab needs target_lang in tokenizer_config.json)"
            )
        if pad_token not in vocab:
            raise HubertExportError(
                f"pad token {pad_token!r} (the CTC blank) is not in the vocabulary: "
                "add it to vocab.json or set pad_token in tokenizer_config.json"
            )
        self.vocab = dict(vocab)
        self.pad_token = pad_token
        self.unk_token = unk_token
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.word_delimiter_token = word_delimiter_token
        self.replace_word_delimiter_char = replace_word_delimiter_char
        self.do_lower_case = do_lower_case
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces

        # Hugging Face appends special tokens missing from vocab.json after it, in this order;
        # the ids matter only for decoding ids outside the vocabulary.
        self._added: dict[str, int] = {}
        next_id = len(self.vocab)
        for token in (bos_token, eos_token, unk_token, pad_token, word_delimiter_token):
            if token not in self.vocab and token not in self._added:
                self._added[token] = next_id
                next_id += 1
        self._id_to_token = {i: t for t, i in self._added.items()}
        self._id_to_token.update({i: t for t, i in self.vocab.items()})

        # Multi-character vocabulary entries ("<unk>", "<s>") are matched whole in text and swallow
        # the whitespace around them; special tokens outside the vocabulary are matched but not stripped.
        self._stripping_tokens = {t for t in self.vocab if len(t) > 1}
        self._unsplit_tokens = sorted(
            self._stripping_tokens | set(self._added) | {word_delimiter_token}, key=len, reverse=True
        )

    @classmethod
    def from_vocab(cls, vocab: dict[str, int], **options: Any) -> CTCTokenizer:
        """Build from a token->id mapping; `options` are the keyword arguments of the constructor."""
        return cls(vocab, **options)

    @classmethod
    def from_dir(cls, path: str | Path) -> CTCTokenizer:
        """Load `vocab.json` plus `tokenizer_config.json` / `special_tokens_map.json` when present."""
        directory = Path(path)
        vocab_file = directory / "vocab.json"
        if not vocab_file.is_file():
            raise HubertExportError(
                f"no vocab.json in {directory}: pass a fine-tuned CTC checkpoint "
                "(e.g. hubert-large-ls960-ft), not a pretraining-only one"
            )
        vocab = _read_json(vocab_file)
        config_file = directory / "tokenizer_config.json"
        config = _read_json(config_file) if config_file.is_file() else {}
        if not isinstance(config, dict):
            raise HubertExportError(f"{config_file} must hold a JSON object: fix the file")

        options: dict[str, Any] = {}
        for key in _SPECIAL_TOKEN_KEYS:
            if config.get(key) is not None:
                options[key] = _token_content(config[key])
        # As in Hugging Face, the legacy special_tokens_map.json counts only for configs written
        # before added_tokens_decoder existed, and then it wins over tokenizer_config.json.
        special_map_file = directory / "special_tokens_map.json"
        if "added_tokens_decoder" not in config and special_map_file.is_file():
            special_map = _read_json(special_map_file)
            if isinstance(special_map, dict):
                for key in _SPECIAL_TOKEN_KEYS:
                    if special_map.get(key) is not None:
                        options[key] = _token_content(special_map[key])
        for key in ("do_lower_case", "clean_up_tokenization_spaces"):
            if key in config:
                options[key] = bool(config[key])
        if isinstance(config.get("replace_word_delimiter_char"), str):
            options["replace_word_delimiter_char"] = config["replace_word_delimiter_char"]

        target_lang = config.get("target_lang")
        if target_lang is not None:
            if not isinstance(vocab, dict) or not isinstance(vocab.get(target_lang), dict):
                raise HubertExportError(
                    f"target_lang {target_lang!r} is not a section of {vocab_file}: fix target_lang "
                    "in tokenizer_config.json"
                )
            vocab = vocab[target_lang]
        if not isinstance(vocab, dict):
            raise HubertExportError(f"{vocab_file} must map tokens to ids: fix the file")
        return cls(vocab, **options)

    @property
    def pad_token_id(self) -> int:
        """The CTC blank id."""
        return self.vocab[self.pad_token]

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids in vocab.json (Hugging Face's `vocab_size`)."""
        return len({i for i in self.vocab.values()})

    def encode(self, text: str) -> list[int]:
        """Text to ids like `Wav2Vec2CTCTokenizer.encode(text)`: spaces become the word delimiter."""
        ids = []
        for piece, is_token in self._split_on_tokens(text):
            if is_token:
                ids.append(self._token_to_id(piece))
                continue
            # Hugging Face upper-cases here: do_lower_case means "the vocabulary is upper-case,
            # accept lower-case input and lower-case the decoded output".
            if self.do_lower_case:
                piece = piece.upper()
            ids.extend(self._token_to_id(char) for char in piece.replace(" ", self.word_delimiter_token))
        return ids

    def _split_on_tokens(self, text: str) -> list[tuple[str, bool]]:
        """Split `text` into (piece, is_whole_token) at the leftmost-longest unsplittable token."""
        pieces: list[tuple[str, bool]] = []
        buffer = ""
        position = 0
        while position < len(text):
            match = next((t for t in self._unsplit_tokens if text.startswith(t, position)), None)
            if match is None:
                buffer += text[position]
                position += 1
                continue
            if match in self._stripping_tokens:
                buffer = buffer.rstrip()
            if buffer:
                pieces.append((buffer, False))
            pieces.append((match, True))
            buffer = ""
            position += len(match)
            if match in self._stripping_tokens:
                while position < len(text) and text[position].isspace():
                    position += 1
        if buffer:
            pieces.append((buffer, False))
        return pieces

    def _token_to_id(self, token: str) -> int:
        if token in self._added:
            return self._added[token]
        if token in self.vocab:
            return self.vocab[token]
        if self.unk_token in self.vocab:
            return self.vocab[self.unk_token]
        raise HubertExportError(
            f"character {token!r} is not in the vocabulary and neither is the unk token "
            f"{self.unk_token!r}: remove the character from the text or add it to vocab.json"
        )

    def decode_ids(self, ids: Any) -> str:
        """Greedy CTC post-processing exactly like `Wav2Vec2CTCTokenizer.decode(ids)`."""
        tokens = [self._id_to_token.get(int(i), self.unk_token) for i in np.asarray(ids).reshape(-1)]
        # Collapse repeats first, then drop blanks: "a <pad> a" is two a's, "a a" is one.
        chars = [t for index, t in enumerate(tokens) if index == 0 or t != tokens[index - 1]]
        chars = [
            self.replace_word_delimiter_char if t == self.word_delimiter_token else t
            for t in chars
            if t != self.pad_token
        ]
        # Hugging Face strips the ends but keeps inner runs of spaces (e.g. "|<pad>|" gives two).
        text = "".join(chars).strip()
        if self.do_lower_case:
            text = text.lower()
        if self.clean_up_tokenization_spaces:
            for old, new in _CLEAN_UP_REPLACEMENTS:
                text = text.replace(old, new)
        return text

    def greedy_decode(self, logits: np.ndarray, lengths: Any = None) -> list[str]:
        """Argmax CTC decoding of (batch, frames, vocab) logits; `lengths` gives each item's valid frames."""
        scores = np.asarray(logits)
        if scores.ndim == 2:
            scores = scores[None]
        if scores.ndim != 3 or scores.shape[2] == 0:
            raise HubertExportError(
                f"logits have shape {scores.shape}: pass (batch, frames, vocab) scores from the CTC head"
            )
        batch, frames = scores.shape[:2]
        if lengths is None:
            valid = [frames] * batch
        else:
            valid = [int(n) for n in np.asarray(lengths).reshape(-1)]
            if len(valid) != batch or any(not 0 <= n <= frames for n in valid):
                raise HubertExportError(
                    f"lengths {valid} do not fit logits of shape {scores.shape}: pass one frame count "
                    f"per item, each between 0 and {frames}"
                )
        best = scores.argmax(axis=-1)
        return [self.decode_ids(best[item, :count]) for item, count in enumerate(valid)]

    def save(self, directory: str | Path) -> None:
        """Write vocab.json and tokenizer_config.json that `Wav2Vec2CTCTokenizer.from_pretrained` loads."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
            "word_delimiter_token": self.word_delimiter_token,
            "replace_word_delimiter_char": self.replace_word_delimiter_char,
            "do_lower_case": self.do_lower_case,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        }
        # Same layout as Hugging Face's save_vocabulary, so saved files diff cleanly against theirs.
        (out / "vocab.json").write_text(
            json.dumps(self.vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HubertExportError(
            f"{path} is not valid JSON ({exc}): fix the file or re-download the checkpoint"
        ) from exc


def _token_content(value: Any) -> str:
    # Older configs serialise special tokens as AddedToken dicts rather than plain strings.
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, str):
        return value
    raise HubertExportError(
        f"special token {value!r} is neither a string nor an AddedToken object: fix the tokenizer files"
    )
