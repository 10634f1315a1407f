"""Speech corpora as they come on disk, read into one list of (id, audio, transcript) utterances.

`read_corpus(SOURCE)` accepts what `--data` points at:

  a folder of audio (.wav/.flac/.ogg, searched recursively) with transcripts in
      transcripts.tsv        ID<TAB>TEXT lines (the file stem is the id)
      transcripts.txt        ID TEXT lines (a tab or the first space separates them)
      *.trans.txt            LibriSpeech: ID TEXT lines, in nested speaker/chapter folders
      text (+ wav.scp)       Kaldi: ID TEXT lines; wav.scp maps ids to plain audio paths
      STEM.txt               one transcript per recording, beside it
    or without transcripts (parity only);
  a manifest file
      *.csv / *.tsv          a header row naming the audio and text columns (Common Voice's
                             path/sentence, or --audio-column/--text-column)
      *.jsonl / *.json       JSON Lines (NeMo's audio_filepath/text, optional duration)
  a Hugging Face `datasets` folder (save_to_disk) or parquet files, with the `[datasets]` extra.

Paths in manifests are relative to the manifest's folder. Every problem (a malformed line, an id
twice, a transcript without audio) is one error that names the file and line. `CorpusOptions`
keeps runs on big corpora short: `limit` takes the first N, `sample` N drawn with `seed`
(deterministic), both in corpus order.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubert_export.audio import AUDIO_SUFFIXES, decode_audio, load_audio
from hubert_export.errors import HubertExportError

# Column / key names tried in order when the user names none.
AUDIO_COLUMNS = ("path", "audio_filepath", "audio", "audio_path", "file", "filename", "file_name", "wav")
TEXT_COLUMNS = ("sentence", "text", "transcript", "transcription", "normalized_text")
ID_COLUMNS = ("id", "utt_id", "utterance_id", "key")
DATASETS_EXTRA = "pip install 'hubert-export[datasets]'"


@dataclass(frozen=True)
class CorpusOptions:
    """How to read a corpus: column names for manifests and datasets, and which utterances to keep."""

    audio_column: str | None = None
    text_column: str | None = None
    limit: int | None = None
    sample: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("limit", "sample"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise HubertExportError(f"--{name} {value!r} must be a positive number of utterances")


@dataclass
class Utterance:
    """One recording and its reference transcript (None when the corpus has none)."""

    id: str
    text: str | None
    origin: str  # where it was listed, for messages: "FILE line N", "FILE row N" or the audio file
    path: Path | None = None
    encoded: bytes | None = None  # a datasets row's file bytes
    samples: np.ndarray | None = None  # a datasets row's decoded samples, at `samples_rate`
    samples_rate: int | None = None

    def load(self, sampling_rate: int) -> np.ndarray:
        """Float32 mono at `sampling_rate`, checked like `load_audio`."""
        if self.encoded is not None:
            return decode_audio(self.encoded, sampling_rate, label=f"audio of {self.origin}")
        if self.samples is not None:
            return decode_audio(self.samples, sampling_rate, source_rate=self.samples_rate,
                                label=f"audio of {self.origin}")
        return load_audio(self.path, sampling_rate)


@dataclass
class Corpus:
    source: Path
    format: str  # a short name: "transcripts.tsv", "librispeech", "kaldi", "csv manifest", ...
    utterances: list[Utterance]


def read_corpus(source: str | Path, options: CorpusOptions | None = None) -> Corpus:
    """Read `source` (a folder, a manifest file or a datasets folder) as the module docstring says."""
    options = options or CorpusOptions()
    source = Path(source)
    if not source.exists():
        raise HubertExportError(
            f"data {source} does not exist: point --data at a folder of recordings, a manifest "
            "(.csv/.tsv/.jsonl) or a datasets folder")
    suffix = source.suffix.lower()
    if source.is_file():
        if suffix in (".csv", ".tsv"):
            return _select(_read_table(source, options), options, check_paths=True)
        if suffix in (".jsonl", ".json"):
            return _select(_read_json_lines(source, options), options, check_paths=True)
        if suffix == ".parquet":
            return _read_datasets(source, options, [source])
        raise HubertExportError(
            f"--data {source} is a {suffix or 'suffix-less'} file: pass a folder of recordings, a .csv/.tsv "
            "manifest with a header, a .jsonl manifest or .parquet files")
    if (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
        return _read_datasets(source, options, None)
    parquet = sorted(source.rglob("*.parquet"))
    if parquet and not _scan_audio(source):
        return _read_datasets(source, options, parquet)
    return _select(_read_folder(source), options, check_paths=False)


def read_transcripts(directory: str | Path) -> dict[str, str]:
    """Reference transcripts by id from a folder's transcript files, without matching them to audio."""
    root = Path(directory)
    if not root.is_dir():
        raise HubertExportError(f"data directory {root} does not exist: point --data at a directory of recordings")
    indexes = _index_files(root)
    if indexes:
        return {id_: text for id_, (text, _) in _read_indexes(indexes).items()}
    return {audio.stem: _collapse(_read_text(audio.with_suffix(".txt"))) for audio in _scan_audio(root)
            if audio.with_suffix(".txt").is_file()}


# ------------------------------------------------------------------------------------------ selection
def _select(corpus: Corpus, options: CorpusOptions, *, check_paths: bool) -> Corpus:
    kept = _chosen_indices(len(corpus.utterances), options)
    corpus.utterances = [corpus.utterances[i] for i in kept]
    if check_paths:  # only the chosen ones: a 1M-row manifest with --limit 10 stats 10 files
        for utterance in corpus.utterances:
            if not utterance.path.is_file():
                raise HubertExportError(
                    f"{utterance.origin}: audio file {utterance.path} does not exist: fix the path (relative "
                    "paths are read from the manifest's folder)")
    if not corpus.utterances:
        raise HubertExportError(f"{corpus.source} lists no utterances: point --data at a corpus with recordings")
    return corpus


def _chosen_indices(count: int, options: CorpusOptions) -> list[int]:
    indices = list(range(count))
    if options.sample is not None and options.sample < count:
        # sorted: the sample keeps corpus order, so --limit after --sample is a prefix of it
        indices = sorted(random.Random(options.seed).sample(indices, options.sample))
    return indices[: options.limit] if options.limit is not None else indices


# ------------------------------------------------------------------------------------------ folders
def _read_folder(root: Path) -> Corpus:
    audio_by_id = _audio_by_stem(_scan_audio(root))
    indexes = _index_files(root)
    if not indexes:
        if not audio_by_id:
            raise HubertExportError(f"no audio files (.wav/.flac/.ogg) in {root}: point --data at a "
                                    "directory of recordings or a manifest")
        utterances = []
        for stem, found in audio_by_id.items():
            path = _unique(stem, found)
            text_file = path.with_suffix(".txt")
            text = _collapse(_read_text(text_file)) if text_file.is_file() else None
            utterances.append(Utterance(stem, text, str(path), path=path))
        per_file = any(u.text is not None for u in utterances)
        return Corpus(root, "per-file STEM.txt" if per_file else "audio only", utterances)

    transcripts = _read_indexes(indexes)
    scp = _read_wav_scp(indexes)
    utterances = []
    for id_, (text, origin) in transcripts.items():
        if id_ in scp:
            path = scp[id_]
        elif id_ in audio_by_id:
            path = _unique(id_, audio_by_id[id_])
        else:
            raise HubertExportError(
                f"{origin}: no audio for id {id_!r} (looked for {id_}.wav/.flac/.ogg under {root}"
                f"{' and in wav.scp' if scp else ''}): add the recording or remove the line")
        if not path.is_file():
            raise HubertExportError(f"{origin}: audio file {path} for id {id_!r} does not exist: fix wav.scp")
        utterances.append(Utterance(id_, text, origin, path=path))
    listed = set(transcripts)
    for stem, path in audio_by_id.items():
        if stem not in listed and not scp:
            where = ", ".join(str(f) for f, _ in indexes)
            raise HubertExportError(f"audio file {_unique(stem, path)} has no transcript in {where}: add a line "
                                    f"for {stem!r} or move the file out of {root}")
    # Corpus order is id order, whatever order the index files list them in (files are stems: path order).
    utterances.sort(key=lambda u: u.id)
    kinds = sorted({kind for _, kind in indexes})
    return Corpus(root, "+".join(kinds), utterances)


def _scan_audio(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _audio_by_stem(files: list[Path]) -> dict[str, Path | list[Path]]:
    found: dict[str, Any] = {}
    for path in files:
        if path.stem in found:
            previous = found[path.stem]
            found[path.stem] = (previous if isinstance(previous, list) else [previous]) + [path]
        else:
            found[path.stem] = path
    return found


def _unique(stem: str, found: Path | list[Path]) -> Path:
    if isinstance(found, list):
        raise HubertExportError(f"{len(found)} audio files share the id {stem!r} ({found[0]} and {found[1]}): "
                                "rename one so every recording has its own file stem")
    return found


def _index_files(root: Path) -> list[tuple[Path, str]]:
    """Transcript index files under `root` with their kind, in path order."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.name
        if name == "transcripts.tsv":
            found.append((path, "transcripts.tsv"))
        elif name == "transcripts.txt":
            found.append((path, "transcripts.txt"))
        elif name.endswith(".trans.txt"):
            found.append((path, "librispeech"))
        elif name == "text":
            found.append((path, "kaldi"))
    return found


def _read_indexes(indexes: list[tuple[Path, str]]) -> dict[str, tuple[str, str]]:
    """id -> (transcript, "FILE line N") over every index file; an id listed twice is an error."""
    transcripts: dict[str, tuple[str, str]] = {}
    for path, kind in indexes:
        for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            origin = f"{path} line {line_number}"
            if kind == "transcripts.tsv":
                id_, tab, text = line.partition("\t")
                if not tab or not id_.strip():
                    raise HubertExportError(f"{path} line {line_number} is not 'file_stem<TAB>text': "
                                            "separate the file stem and the transcript with one tab")
            else:
                parts = line.strip().split(None, 1)
                if len(parts) < 2:
                    raise HubertExportError(f"{path} line {line_number} is not 'ID TRANSCRIPT' (it has no "
                                            "transcript after the id): add the text or remove the line")
                id_, text = parts
            id_ = id_.strip()
            if id_ in transcripts:
                raise HubertExportError(f"{origin}: id {id_!r} is already listed at {transcripts[id_][1]}: "
                                        "list every utterance once")
            transcripts[id_] = (_collapse(text), origin)
    return transcripts


def _read_wav_scp(indexes: list[tuple[Path, str]]) -> dict[str, Path]:
    """Kaldi wav.scp entries (id -> audio path) beside the `text` files; pipes and segments are refused."""
    paths: dict[str, Path] = {}
    for text_file, kind in indexes:
        if kind != "kaldi":
            continue
        folder = text_file.parent
        if (folder / "segments").is_file():
            raise HubertExportError(f"{folder / 'segments'}: Kaldi segments (utterances cut from longer "
                                    "recordings) are not supported: write one audio file per utterance")
        scp = folder / "wav.scp"
        if not scp.is_file():
            continue
        for line_number, line in enumerate(_read_text(scp).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().split(None, 1)
            if len(parts) < 2:
                raise HubertExportError(f"{scp} line {line_number} is not 'ID PATH': add the audio path")
            id_, location = parts
            if location.rstrip().endswith("|"):
                raise HubertExportError(
                    f"{scp} line {line_number}: {id_!r} is a piped command, and hubert-export reads plain audio "
                    "paths only: write the audio to files (e.g. with sox) and list their paths")
            if id_ in paths:
                raise HubertExportError(f"{scp} line {line_number}: id {id_!r} is listed twice: list it once")
            path = Path(location.strip())
            paths[id_] = path if path.is_absolute() else folder / path
    return paths


# ------------------------------------------------------------------------------------------ manifests
def _read_table(manifest: Path, options: CorpusOptions) -> Corpus:
    tab = manifest.suffix.lower() == ".tsv"
    text = _read_text(manifest)
    # Common Voice's .tsv files hold quote characters inside sentences: read tabs literally.
    reader = csv.reader(text.splitlines(), delimiter="\t" if tab else ",",
                        quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL)
    header: list[str] | None = None
    utterances: list[Utterance] = []
    seen: dict[str, str] = {}
    audio_col = text_col = id_col = None
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                audio_col = _pick_column(manifest, header, options.audio_column, AUDIO_COLUMNS, "audio")
                text_col = _pick_column(manifest, header, options.text_column, TEXT_COLUMNS, "text", required=False)
                id_col = next((header.index(c) for c in ID_COLUMNS if c in header), None)
                continue
            if len(row) != len(header):
                raise HubertExportError(f"{manifest} line {line} has {len(row)} fields, the header has "
                                        f"{len(header)}: fix the line (quote fields that hold the separator)")
            utterances.append(_manifest_utterance(
                manifest, line, row[audio_col], row[text_col] if text_col is not None else None,
                row[id_col] if id_col is not None else None, seen))
    except csv.Error as exc:
        raise HubertExportError(f"{manifest} line {reader.line_num} is not valid CSV ({exc}): fix the line") from exc
    if header is None:
        raise HubertExportError(f"{manifest} is empty: write a header row and one row per utterance")
    return Corpus(manifest, "tsv manifest" if tab else "csv manifest", utterances)


def _pick_column(manifest: Path, header: list[str], named: str | None, defaults: tuple[str, ...], kind: str,
                 *, required: bool = True) -> int | None:
    if named is not None:
        if named not in header:
            raise HubertExportError(f"{manifest} has no column {named!r} (header: {', '.join(header)}): "
                                    f"pass --{kind}-column with one of those")
        return header.index(named)
    for name in defaults:
        if name in header:
            return header.index(name)
    if required:
        raise HubertExportError(f"{manifest} has no {kind} column (header: {', '.join(header)}; tried "
                                f"{', '.join(defaults)}): name it with --{kind}-column")
    return None


def _read_json_lines(manifest: Path, options: CorpusOptions) -> Corpus:
    utterances: list[Utterance] = []
    seen: dict[str, str] = {}
    audio_keys = (options.audio_column,) if options.audio_column else AUDIO_COLUMNS
    text_keys = (options.text_column,) if options.text_column else TEXT_COLUMNS
    for line_number, line in enumerate(_read_text(manifest).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            entry, reason = None, exc.msg
        else:
            reason = f"a JSON {type(entry).__name__}"
        if not isinstance(entry, dict):
            raise HubertExportError(f"{manifest} line {line_number} is not a JSON object ({reason}): write one "
                                    "object per line (JSON Lines), e.g. {\"audio_filepath\": ..., \"text\": ...}")
        audio_key = next((k for k in audio_keys if k in entry), None)
        if audio_key is None or not isinstance(entry[audio_key], str):
            raise HubertExportError(f"{manifest} line {line_number} has no audio path (tried "
                                    f"{', '.join(audio_keys)}): add it, or name the key with --audio-column")
        text_key = next((k for k in text_keys if k in entry), None)
        if options.text_column and text_key is None:
            raise HubertExportError(f"{manifest} line {line_number} has no {options.text_column!r}: add it "
                                    "or pass the right --text-column")
        text = entry[text_key] if text_key is not None else None
        if text is not None and not isinstance(text, str):
            raise HubertExportError(f"{manifest} line {line_number}: {text_key} is not a string: fix the line")
        duration = entry.get("duration")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                     or duration < 0):
            raise HubertExportError(f"{manifest} line {line_number}: duration {duration!r} is not a number of "
                                    "seconds: fix or remove it")
        id_value = next((entry[k] for k in ID_COLUMNS if isinstance(entry.get(k), (str, int))), None)
        utterances.append(_manifest_utterance(manifest, line_number, entry[audio_key], text,
                                              None if id_value is None else str(id_value), seen))
    return Corpus(manifest, "jsonl manifest", utterances)


def _manifest_utterance(manifest: Path, line: int, audio: str, text: str | None, id_: str | None,
                        seen: dict[str, str]) -> Utterance:
    origin = f"{manifest} line {line}"
    audio = audio.strip()
    if not audio:
        raise HubertExportError(f"{origin} has an empty audio path: fill it in or remove the line")
    path = Path(audio)
    if not path.is_absolute():
        path = manifest.parent / path
        clips = manifest.parent / "clips" / audio  # Common Voice keeps clips/ beside its .tsv files
        if not path.exists() and clips.exists():
            path = clips
    # The id is the path as written, without its suffix: unique where stems of different folders are not.
    id_ = (id_ or "").strip() or str(Path(audio).with_suffix("")).replace("\\", "/")
    if id_ in seen:
        raise HubertExportError(f"{origin}: utterance {id_!r} is already listed at {seen[id_]}: list it once")
    seen[id_] = origin
    return Utterance(id_, None if text is None else _collapse(text), origin, path=path)


# ------------------------------------------------------------------------------------------ datasets
def _read_datasets(source: Path, options: CorpusOptions, parquet: list[Path] | None) -> Corpus:
    try:
        import datasets
    except ImportError:
        raise HubertExportError(f"{source} is a Hugging Face datasets corpus, and reading it needs the datasets "
                                f"library: {DATASETS_EXTRA}") from None
    if parquet is not None:
        import pyarrow
        import pyarrow.parquet

        # Read directly, not through Dataset.from_parquet, which writes a copy to the datasets cache;
        # the features (Audio) come back from the schema metadata datasets stores in the files.
        try:
            table = pyarrow.concat_tables([pyarrow.parquet.read_table(p) for p in parquet])
        except (pyarrow.ArrowInvalid, OSError) as exc:
            raise HubertExportError(f"cannot read the parquet files of {source} ({exc}): pass parquet files "
                                    "with the same columns") from exc
        dataset = datasets.Dataset(table)
    else:
        dataset = datasets.load_from_disk(str(source), keep_in_memory=True)
        if isinstance(dataset, datasets.DatasetDict):
            splits = list(dataset)
            if len(splits) != 1:
                raise HubertExportError(f"{source} holds the splits {', '.join(splits)}: pass one of them, e.g. "
                                        f"--data {source / splits[0]}")
            dataset = dataset[splits[0]]
    columns = list(dataset.column_names)
    audio_features = [c for c in columns if isinstance(dataset.features[c], datasets.Audio)]
    audio_col = _dataset_column(source, columns, options.audio_column, audio_features + list(AUDIO_COLUMNS), "audio")
    text_col = _dataset_column(source, columns, options.text_column, TEXT_COLUMNS, "text", required=False)
    id_col = next((c for c in ID_COLUMNS if c in columns), None)
    if isinstance(dataset.features[audio_col], datasets.Audio):
        # Undecoded: the file bytes are read here with soundfile, so no audio decoding back end is needed.
        dataset = dataset.cast_column(audio_col, datasets.Audio(decode=False))
    rows = _chosen_indices(len(dataset), options)
    dataset = dataset.select(rows)
    utterances, seen = [], {}
    for row_index, row in zip(rows, dataset):
        origin = f"{source} row {row_index}"
        utterance = _dataset_utterance(source, origin, row[audio_col])
        if text_col is not None:
            if not isinstance(row[text_col], str):
                raise HubertExportError(f"{origin}: {text_col} is not a string: pick the text with --text-column")
            utterance.text = _collapse(row[text_col])
        if id_col is not None and row[id_col] is not None:
            utterance.id = str(row[id_col])
        if utterance.id in seen:
            raise HubertExportError(f"{origin}: id {utterance.id!r} is already used by {seen[utterance.id]}: "
                                    "every utterance needs its own id")
        seen[utterance.id] = origin
        utterances.append(utterance)
    if not utterances:
        raise HubertExportError(f"{source} holds no rows: point --data at a dataset with recordings")
    return Corpus(source, "datasets", utterances)


def _dataset_column(source: Path, columns: list[str], named: str | None, defaults: list[str] | tuple[str, ...],
                    kind: str, *, required: bool = True) -> str | None:
    if named is not None:
        if named not in columns:
            raise HubertExportError(f"{source} has no column {named!r} (columns: {', '.join(columns)}): pass "
                                    f"--{kind}-column with one of those")
        return named
    found = next((c for c in defaults if c in columns), None)
    if found is None and required:
        raise HubertExportError(f"{source} has no {kind} column (columns: {', '.join(columns)}): name it with "
                                f"--{kind}-column")
    return found


def _dataset_utterance(source: Path, origin: str, value: Any) -> Utterance:
    row_id = origin.rsplit(" ", 1)[-1]
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else source / value
        if not path.is_file():
            raise HubertExportError(f"{origin}: audio file {path} does not exist: fix the path")
        return Utterance(path.stem, None, origin, path=path)
    if isinstance(value, dict):
        name = value.get("path")
        id_ = Path(name).stem if isinstance(name, str) and name else f"row{row_id}"
        if value.get("bytes"):
            return Utterance(id_, None, origin, encoded=bytes(value["bytes"]))
        if value.get("array") is not None:
            return Utterance(id_, None, origin, samples=np.asarray(value["array"]),
                             samples_rate=value.get("sampling_rate"))
        if isinstance(name, str) and name:
            path = Path(name) if Path(name).is_absolute() else source / name
            if path.is_file():
                return Utterance(id_, None, origin, path=path)
            raise HubertExportError(f"{origin}: the audio has no bytes and its file {path} does not exist: "
                                    "save the dataset with the audio embedded")
    raise HubertExportError(f"{origin}: the audio column holds {type(value).__name__}, not audio: pick the audio "
                            "column with --audio-column")


# ------------------------------------------------------------------------------------------ text
def _collapse(text: str) -> str:
    return " ".join(text.split())


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig drops the byte-order mark that Windows editors put at the start.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HubertExportError(f"transcript file {path} is not UTF-8 text: re-save it as UTF-8") from exc
