"""Model ids resolve to snapshots of a hub cache laid out like huggingface_hub's, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hubert_export.build import DEFAULT_MODEL_DIR
from hubert_export.errors import HubertExportError
from hubert_export.hub import looks_like_model_id, resolve_model


def _cache_model(hub: Path, model_id: str, files: Path | None, revision: str = "0123abcd" * 5) -> Path:
    repo = hub / f"models--{model_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    if files is not None:
        for file in files.iterdir():
            shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.mark.parametrize("variable, layout", [("HF_HUB_CACHE", ""), ("HF_HOME", "hub")])
def test_model_id_resolves_to_the_cached_snapshot(tmp_path, monkeypatch, variable, layout):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(tmp_path))
    snapshot = _cache_model(tmp_path / layout, "facebook/hubert-tiny-ft", DEFAULT_MODEL_DIR)
    assert resolve_model("facebook/hubert-tiny-ft") == snapshot
    assert resolve_model(Path("facebook/hubert-tiny-ft")) == snapshot  # argparse hands over a Path


def test_uncached_id_says_where_it_looked_and_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubertExportError) as error:
        resolve_model("facebook/hubert-large-ls960-ft")
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "models--facebook--hubert-large-ls960-ft") in message
    assert "hf download facebook/hubert-large-ls960-ft" in message
    # A snapshot without config.json is a partial download.
    _cache_model(tmp_path, "org/partial", None)
    with pytest.raises(HubertExportError, match="has no config.json"):
        resolve_model("org/partial")


def test_paths_stay_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert resolve_model("org/name") == Path("org/name")  # an existing path wins over an id
    assert resolve_model(DEFAULT_MODEL_DIR) == DEFAULT_MODEL_DIR
    assert resolve_model("./missing/dir") == Path("./missing/dir")  # not an id: the caller reports it
    assert [looks_like_model_id(s) for s in ("a/b", "facebook/hubert-large-ls960-ft", "a/b/c", "/a/b", "./a",
                                             "../a", "a", "a/..")] == [True, True] + [False] * 6


def test_build_and_transcribe_take_a_cached_id(tmp_path, monkeypatch):
    from hubert_export.build import export_artifact
    from hubert_export.recipes import default_recipe
    from hubert_export.transcribe import transcribe

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _cache_model(tmp_path / "hub", "acme/tiny-ctc", DEFAULT_MODEL_DIR)
    clip = Path(__file__).parent / "data" / "speech" / "utt00.flac"
    by_id = transcribe("acme/tiny-ctc", [clip])[0].text
    assert by_id == transcribe(DEFAULT_MODEL_DIR, [clip])[0].text and by_id
    result = export_artifact("acme/tiny-ctc", tmp_path / "art", default_recipe("onnx"),
                             latency_repeats=0)
    import json

    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert result.passed and manifest["source"]["checkpoint"] == str(snapshot.resolve())
