"""Artifacts: atomic builds, the build lock, crash recovery and manifest verification."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hubert_export.artifact import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    Artifact,
    building,
    copy_checkpoint_metadata,
    file_table,
    hash_checkpoint,
    library_versions,
    new_manifest,
    sha256_file,
    write_manifest,
)
from hubert_export.errors import HubertExportError

REPO = Path(__file__).resolve().parents[1]


def leftovers(parent: Path, name: str) -> list[str]:
    """Temporary, aside and lock entries a build into parent/name may leave behind."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def small_manifest(**sections) -> dict:
    """The sections every manifest must have, for an artifact of one model file."""
    shape = {"batch": 1, "samples": 16_000}
    return new_manifest(**{
        "source": {"checkpoint": "/models/tiny"}, "task": "ctc", "target": "onnx", "precision": "fp32", "recipe": {},
        "input_contract": {"min": shape, "opt": shape, "max": shape, "attention_mask": False},
        "backend": {"files": ["model.onnx"]}, **sections})


def build_artifact(out: Path, overwrite: bool = False, content: bytes = b"onnx bytes") -> None:
    with building(out, overwrite=overwrite) as tmp:
        (tmp / "model.onnx").write_bytes(content)
        (tmp / "config.json").write_text('{"model_type": "hubert"}')
        write_manifest(tmp, small_manifest())


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- hashing


def test_sha256_file_streams_large_files(tmp_path: Path):
    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_hash_checkpoint_covers_configs_and_weights_only(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    first = hash_checkpoint(tmp_path)
    (tmp_path / "README.md").write_text("docs")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert hash_checkpoint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    second = hash_checkpoint(tmp_path)
    assert second != first
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    assert hash_checkpoint(tmp_path) != second
    with pytest.raises(HubertExportError, match="not a directory"):
        hash_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubertExportError, match="no config.json"):
        hash_checkpoint(tmp_path / "empty")


def test_library_versions_is_cheap_and_plain():
    before = set(sys.modules)
    versions = library_versions()
    assert versions["python"].count(".") == 2
    assert "numpy" in versions and "onnx" in versions
    assert all(isinstance(v, str) for v in versions.values())
    assert not ({"torch", "openvino", "tensorrt", "onnxruntime"} & (set(sys.modules) - before))


# ---- atomic builds


def test_successful_build_appears_atomically(tmp_path: Path):
    out = tmp_path / "art"
    with building(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".art.tmp-")
        assert not out.exists()
        (tmp / "model.onnx").write_bytes(b"x")
        write_manifest(tmp, small_manifest())
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert leftovers(tmp_path, "art") == []
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_exception_inside_building_leaves_nothing(tmp_path: Path, exc_type):
    out = tmp_path / "art"
    with pytest.raises(exc_type):
        with building(out) as tmp:
            (tmp / "model.onnx").write_bytes(b"half")
            raise exc_type("boom")
    assert not out.exists()
    assert leftovers(tmp_path, "art") == []


def test_existing_output_refused_before_any_work(tmp_path: Path):
    out = tmp_path / "art"
    build_artifact(out, content=b"old")
    entered = False
    with pytest.raises(HubertExportError, match="already exists and is not empty.*--overwrite") as info:
        with building(out):
            entered = True
    assert not entered
    assert "\n" not in str(info.value)
    assert (out / "model.onnx").read_bytes() == b"old"


def test_overwrite_replaces_the_old_artifact(tmp_path: Path):
    out = tmp_path / "art"
    build_artifact(out, content=b"old")
    (out / "stale-extra.txt").write_text("from the old build")
    build_artifact(out, overwrite=True, content=b"new")
    assert (out / "model.onnx").read_bytes() == b"new"
    assert not (out / "stale-extra.txt").exists()
    assert leftovers(tmp_path, "art") == []


def test_failed_overwrite_keeps_the_old_artifact(tmp_path: Path):
    out = tmp_path / "art"
    build_artifact(out, content=b"old")
    with pytest.raises(RuntimeError):
        with building(out, overwrite=True):
            raise RuntimeError("export failed")
    assert (out / "model.onnx").read_bytes() == b"old"


def test_overwrite_never_deletes_a_directory_that_is_not_an_artifact(tmp_path: Path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(HubertExportError, match="not a hubert-export artifact"):
        with building(out, overwrite=True):
            pass
    assert (out / "thesis.tex").exists()


def test_empty_existing_directory_is_used(tmp_path: Path):
    out = tmp_path / "art"
    out.mkdir()
    build_artifact(out)
    assert (out / MANIFEST_NAME).is_file()


def test_output_that_is_a_file_is_refused(tmp_path: Path):
    (tmp_path / "art").write_text("x")
    with pytest.raises(HubertExportError, match="not a directory"):
        with building(tmp_path / "art", overwrite=True):
            pass


# ---- concurrency and crashes

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hubert_export.artifact import building
    with building(Path(sys.argv[1])) as tmp:
        (tmp / "model.onnx").write_bytes(b"half written")
        print("ready", flush=True)
        time.sleep(60)
    """
)


def test_lock_and_sigkill_mid_build(tmp_path: Path):
    out = tmp_path / "art"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = holder.stdout.readline()
        assert line.strip() == "ready", holder.stderr.read()

        # a second build into the same output fails at once, naming the holder
        with pytest.raises(HubertExportError) as info:
            with building(out):
                pytest.fail("entered a build while another one holds the lock")
        msg = str(info.value)
        assert "another hubert-export build is writing" in msg and f"pid {holder.pid}" in msg
        assert "\n" not in msg

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

    # the killed build left its temporary directory, but nothing at the output path
    assert not out.exists()
    assert any(name.startswith(f".art.tmp-{holder.pid}-") for name in leftovers(tmp_path, "art"))

    # the next build succeeds and removes the dead build's leftovers and its own lock file
    build_artifact(out, content=b"complete")
    assert (out / "model.onnx").read_bytes() == b"complete"
    assert leftovers(tmp_path, "art") == []


def test_stale_temp_dirs_of_dead_processes_are_removed(tmp_path: Path):
    pid = dead_pid()
    stale = tmp_path / f".art.tmp-{pid}-0badc0de"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    alive = tmp_path / f".art.tmp-{os.getpid()}-0000abcd"  # a live process's: not ours to delete
    alive.mkdir()
    other = tmp_path / f".other.tmp-{pid}-0badc0de"  # another output's: left alone
    other.mkdir()
    build_artifact(tmp_path / "art")
    assert not stale.exists() and alive.exists() and other.exists()


def test_artifact_moved_aside_by_a_killed_overwrite_is_restored(tmp_path: Path):
    out = tmp_path / "art"
    build_artifact(out, content=b"old")
    os.rename(out, tmp_path / f".art.old-{dead_pid()}-12345678")
    with pytest.raises(HubertExportError, match="already exists"):
        build_artifact(out)
    assert (out / "model.onnx").read_bytes() == b"old"
    assert leftovers(tmp_path, "art") == []


# ---- manifest and verification


def test_manifest_records_every_file(tmp_path: Path):
    out = tmp_path / "art"
    build_artifact(out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["manifest_version"] == MANIFEST_VERSION
    assert manifest["tool"]["name"] == "hubert-export" and manifest["created_utc"].endswith("Z")
    assert set(manifest["files"]) == {"model.onnx", "config.json"}
    assert manifest["files"]["model.onnx"] == {"sha256": sha256_file(out / "model.onnx"), "bytes": 10}
    assert (out / MANIFEST_NAME).read_text() == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert file_table(out) == manifest["files"]


def test_open_and_properties(tmp_path: Path):
    out = tmp_path / "art"
    build_artifact(out)
    art = Artifact.open(out)
    assert (art.path, art.target, art.precision, art.task) == (out, "onnx", "fp32", "ctc")
    assert art.model_files == [out / "model.onnx"]
    art.verify_files()
    with pytest.raises(ValueError):  # frozen: only a build writes a manifest
        art.manifest.target = "changed"
    art.manifest.backend["files"].append("changed")
    assert art.target == "onnx" and art.model_files == [out / "model.onnx"]


def test_verify_catches_modified_and_missing_files(tmp_path: Path):
    out = tmp_path / "art"
    build_artifact(out)
    (out / "model.onnx").write_bytes(b"onnx bytez")  # same size, different content
    with pytest.raises(HubertExportError, match="model.onnx does not match the hash in manifest.json"):
        Artifact.open(out).verify_files()
    (out / "model.onnx").unlink()
    (out / "config.json").write_text("{}")
    with pytest.raises(HubertExportError) as info:
        Artifact.open(out).verify_files()
    assert "model.onnx is missing" in str(info.value) and "config.json does not match" in str(info.value)
    assert "rebuild the artifact" in str(info.value)


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda d: None, "no manifest.json"),
        (lambda d: (d / MANIFEST_NAME).write_text("{not json"), "not readable JSON"),
        (lambda d: (d / MANIFEST_NAME).write_text("[]"), "not a JSON object"),
        (lambda d: (d / MANIFEST_NAME).write_text('{"manifest_version": 0}'), "manifest_version"),
        (lambda d: (d / MANIFEST_NAME).write_text('{"manifest_version": 99}'), "upgrade hubert-export"),
        (lambda d: (d / MANIFEST_NAME).write_text('{"manifest_version": 1, "target": "onnx"}'), "'precision'"),
        (lambda d: (d / MANIFEST_NAME).write_text('{"manifest_version": true}'), "manifest_version"),
    ],
)
def test_open_rejects_non_artifacts(tmp_path: Path, setup, words):
    d = tmp_path / "d"
    d.mkdir()
    setup(d)
    with pytest.raises(HubertExportError, match=words):
        Artifact.open(d)


def test_open_missing_directory(tmp_path: Path):
    with pytest.raises(HubertExportError, match="is not a hubert-export artifact"):
        Artifact.open(tmp_path / "nope")


def test_copy_checkpoint_metadata(tmp_path: Path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    ckpt.mkdir()
    out.mkdir()
    for name in ("config.json", "vocab.json", "model.safetensors", "README.md"):
        (ckpt / name).write_text("x")
    assert copy_checkpoint_metadata(ckpt, out) == ["config.json", "vocab.json"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "vocab.json"]
