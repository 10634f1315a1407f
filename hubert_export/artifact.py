"""The artifact directory and its manifest.

An artifact is a directory holding the model file(s) of one back end, the checkpoint's
`config.json` (and `preprocessor_config.json`, `vocab.json` and tokenizer files when present) and
`manifest.json`, which every command reads and writes. Artifacts are built in a temporary
directory beside the output and renamed into place only when complete (`building`), so a failed
or killed build never leaves a half artifact where a finished one is expected.

manifest.json is typed and versioned in hubert_export/manifest.py (`Manifest`, its sections and
version history): `new_manifest` starts one, `write_manifest` validates and writes it, and
`Artifact.open` reads any version this tool has written. `check` writes nothing into an artifact.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import filelock

from hubert_export.errors import HubertExportError
from hubert_export.manifest import MANIFEST_NAME, MANIFEST_VERSION, Manifest, read_manifest
from hubert_export.targets import model_suffixes

TOOL_NAME = "hubert-export"

_BLOCK = 1 << 20

# What identifies a checkpoint's content: its configs and weights (and the index files of sharded
# weights). READMEs, .gitattributes and the like change without changing the model.
_CHECKPOINT_NAMES = ("config.json", "preprocessor_config.json")
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin")
_CHECKPOINT_INDEX_SUFFIX = ".index.json"

# Copied from the checkpoint into the artifact so that it can be served without the checkpoint.
METADATA_FILES = (
    "config.json",
    "preprocessor_config.json",
    "vocab.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
)

# distribution-name candidates for each reported library, first installed one wins
_LIBRARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    # key: (import name, distributions)
    "torch": ("torch", ("torch",)),
    "onnx": ("onnx", ("onnx",)),
    "onnxruntime": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino",
                                    "onnxruntime-directml", "ort-nightly")),
    "openvino": ("openvino", ("openvino",)),
    "nncf": ("nncf", ("nncf",)),
    "numpy": ("numpy", ("numpy",)),
    "tensorrt": ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-cu13",
                              "tensorrt_lean", "tensorrt-lean")),
}


# --------------------------------------------------------------------------------------------
# Hashing and versions


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (model files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_checkpoint(checkpoint_dir: str | Path) -> str:
    """One sha256 over the (name, sha256) pairs of a checkpoint's configs and weight files."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise HubertExportError(f"checkpoint {checkpoint_dir} is not a directory: pass a Hugging Face "
                                f"checkpoint directory (with config.json and model.safetensors)")
    names = sorted(
        p.name for p in checkpoint_dir.iterdir()
        if p.is_file() and (
            p.name in _CHECKPOINT_NAMES
            or p.name.endswith(_CHECKPOINT_SUFFIXES)
            or p.name.endswith(_CHECKPOINT_INDEX_SUFFIX)
        )
    )
    if not names:
        raise HubertExportError(f"checkpoint {checkpoint_dir} has no config.json and no weight files: "
                                f"pass a Hugging Face checkpoint directory")
    digest = hashlib.sha256()
    for name in names:
        # NUL and newline cannot occur in file names, so the pairs cannot run into each other.
        digest.update(f"{name}\0{sha256_file(checkpoint_dir / name)}\n".encode())
    return digest.hexdigest()


def _distribution_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - broken metadata must not break a build
            continue
    return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact, without importing any heavy module.

    A library is listed only when both its distribution metadata and its import package are
    present (a half-uninstalled package has one without the other).
    """
    versions = {"python": platform.python_version()}
    own = _distribution_version(("hubert-export", "hubert_export"))
    if own is None:
        # running from a source checkout without `pip install -e .`
        own = getattr(sys.modules.get("hubert_export"), "__version__", None)
    if own is not None:
        versions["hubert_export"] = str(own)
    for key, (module, distributions) in _LIBRARIES.items():
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except (ImportError, ValueError):
            continue
        version = _distribution_version(distributions)
        if version is not None:
            versions[key] = version
    return versions


def new_manifest(**sections: Any) -> dict[str, Any]:
    """A manifest with the keys every build records (version, tool, library versions, time)."""
    versions = library_versions()
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "tool": {"name": TOOL_NAME, "version": versions.get("hubert_export", "unknown")},
        "versions": versions,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    manifest.update(sections)
    return manifest


def copy_checkpoint_metadata(checkpoint_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy the checkpoint's config, preprocessor and tokenizer files present; returns their names."""
    copied = []
    for name in METADATA_FILES:
        src = Path(checkpoint_dir) / name
        if src.is_file():
            shutil.copyfile(src, Path(out_dir) / name)
            copied.append(name)
    return copied


# --------------------------------------------------------------------------------------------
# Atomic builds


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OverflowError:
        return False
    return True


def _fsync_dir(path: Path) -> None:
    # Makes the renames durable; best effort, not every file system supports it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _BuildLock:
    """An exclusive, non-blocking lock on `.{name}.lock` beside the output directory (filelock:
    flock on POSIX, msvcrt on Windows, where a module-level `import fcntl` would fail)."""

    def __init__(self, lock_path: Path, out_dir: Path) -> None:
        self.lock_path = lock_path
        self.out_dir = out_dir
        self.lock = filelock.FileLock(lock_path, timeout=0)

    def acquire(self) -> None:
        try:
            self.lock.acquire()
        except filelock.Timeout:
            raise HubertExportError(
                f"another hubert-export build is writing {self.out_dir} (lock held by pid "
                f"{self._holder() or 'unknown'}): wait for it to finish or choose another --output"
            ) from None
        except OSError as exc:
            raise HubertExportError(f"cannot lock {self.lock_path} ({exc.strerror}): check that "
                                    f"{self.lock_path.parent} is writable and on a local file system") from None

    def _holder(self) -> str | None:
        """The pid of the build holding the lock, read from its temporary directory's name (a build
        makes one right after taking the lock), so the lock file needs no content."""
        pattern = re.compile(rf"^\.{re.escape(self.out_dir.name)}\.tmp-(\d+)-[0-9a-f]+$")
        try:
            pids = [m.group(1) for e in self.out_dir.parent.iterdir() if (m := pattern.match(e.name))]
        except OSError:
            return None
        return next((pid for pid in pids if _pid_alive(int(pid))), None)

    def release(self) -> None:
        if not self.lock.is_locked:
            return
        # Unlinked while still held, so that no lock file is left beside the artifact; filelock (>= 4.3)
        # refuses a lock on an inode unlinked meanwhile, so two builds cannot both hold it.
        try:
            os.unlink(self.lock_path)
        except OSError:  # already gone, or Windows, which keeps a locked file until it is closed
            pass
        self.lock.release()


def _clean_stale(parent: Path, name: str, out_dir: Path) -> None:
    """Remove temporary directories of builds into `out_dir` whose process died.

    Runs under the build lock. A build killed between moving the old artifact aside and moving the
    new one in leaves no `out_dir` but a complete old one; that is put back instead of deleted.
    """
    pattern = re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+)-[0-9a-f]+$")
    stale = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(match.group(2))):
            stale.append((match.group(1), entry))
    for kind, entry in sorted(stale, key=lambda item: item[0] != "old"):
        if kind == "old" and not os.path.lexists(out_dir):
            try:
                os.rename(entry, out_dir)
                continue
            except OSError:
                pass
        shutil.rmtree(entry, ignore_errors=True)


def _check_output(out_dir: Path, overwrite: bool) -> None:
    if not os.path.lexists(out_dir):
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise HubertExportError(f"output {out_dir} exists and is a file or a symlink, not a directory: "
                                f"choose another --output")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise HubertExportError(f"output directory {out_dir} already exists and is not empty: "
                                f"choose another --output or pass --overwrite")
    # --overwrite deletes the old directory; never do that to something that is not an artifact
    # (`--output . --overwrite` must not delete the current directory).
    if not (out_dir / MANIFEST_NAME).is_file():
        raise HubertExportError(f"output directory {out_dir} is not empty and is not a hubert-export "
                                f"artifact (no {MANIFEST_NAME}), so --overwrite will not delete it: "
                                f"choose another --output or empty it yourself")
    cwd = Path.cwd().resolve()
    if out_dir.resolve() == cwd or out_dir.resolve() in cwd.parents:
        raise HubertExportError(f"output directory {out_dir} contains the current directory, so "
                                f"--overwrite will not replace it: choose another --output")


def _make_temp_dir(parent: Path, name: str) -> Path:
    # os.mkdir rather than tempfile.mkdtemp: mkdtemp's mode 0700 would carry over to the finished
    # artifact, which is often served by another user.
    for _ in range(100):
        temp = parent / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(temp)
            return temp
        except FileExistsError:
            continue
        except OSError as exc:
            raise HubertExportError(f"cannot create a build directory in {parent} ({exc.strerror}): "
                                    f"check that it is writable and has free space") from None
    raise HubertExportError(f"cannot create a build directory in {parent}: too many name collisions")


def _move_into_place(temp: Path, out_dir: Path, overwrite: bool) -> None:
    parent, name = out_dir.parent, out_dir.name
    if out_dir.is_dir() and not out_dir.is_symlink() and any(out_dir.iterdir()):
        if not overwrite:
            raise HubertExportError(f"output directory {out_dir} was created by something else during "
                                    f"the build: choose another --output or pass --overwrite")
        aside = parent / f".{name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(out_dir, aside)
        except OSError as exc:
            raise HubertExportError(f"cannot replace {out_dir} ({exc.strerror}): check its permissions "
                                    f"or choose another --output") from None
        try:
            os.rename(temp, out_dir)
        except BaseException as exc:
            os.rename(aside, out_dir)
            if isinstance(exc, OSError):
                raise HubertExportError(f"cannot move the finished build to {out_dir} ({exc.strerror}): "
                                        f"the old artifact was kept; choose another --output") from None
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        # Replaces an empty directory, fails on a non-empty one that appeared meanwhile.
        try:
            os.rename(temp, out_dir)
        except OSError as exc:
            raise HubertExportError(f"cannot move the finished build to {out_dir} ({exc.strerror}): "
                                    f"choose another --output") from None
    _fsync_dir(parent)


@contextmanager
def building(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build an artifact in a temporary directory that becomes `out_dir` only on success.

    Yields the temporary directory (beside `out_dir`, so the final rename is atomic). On success it
    replaces `out_dir` (when `overwrite`); on any exception, KeyboardInterrupt included, it is
    deleted and `out_dir` is left as it was. A non-empty `out_dir` without `overwrite`, or a
    concurrent build into the same `out_dir`, is refused before any work starts. Temporary
    directories of killed builds into the same `out_dir` are removed.
    """
    out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))
    parent, name = out_dir.parent, out_dir.name
    if not name or name in (".", ".."):
        raise HubertExportError(f"output {out_dir} is not a usable directory name: choose another --output")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HubertExportError(f"cannot create {parent} ({exc.strerror}): choose another --output") from None
    _check_output(out_dir, overwrite)  # before the lock, so the usual mistake fails without side effects
    lock = _BuildLock(parent / f".{name}.lock", out_dir)
    lock.acquire()
    try:
        _clean_stale(parent, name, out_dir)
        _check_output(out_dir, overwrite)  # again: it may have been restored or built meanwhile
        temp = _make_temp_dir(parent, name)
        try:
            yield temp
            _move_into_place(temp, out_dir, overwrite)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------
# The manifest


def file_table(directory: str | Path, known_sha256: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """{relative posix name: {sha256, bytes}} of every file under `directory` but the manifest.

    known_sha256: digests the writer computed from the bytes it wrote (no second read of a model
    file); any other file is hashed from disk.
    """
    directory = Path(directory)
    known_sha256 = known_sha256 or {}
    table = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(directory).as_posix()
        if rel == MANIFEST_NAME or rel.startswith(f".{MANIFEST_NAME}."):
            continue
        table[rel] = {"sha256": known_sha256.get(rel) or sha256_file(path), "bytes": path.stat().st_size}
    return table


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars in parity results
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_text_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def write_manifest(directory: str | Path, manifest: dict[str, Any],
                   known_sha256: Mapping[str, str] | None = None) -> Manifest:
    """Write `manifest` (plus the `files` table of everything in `directory`) as manifest.json,
    after checking that it is a valid `Manifest`: what is written is what every reader reads.

    Call it last, after every other file is written. Returns the manifest as written.
    """
    directory = Path(directory)
    written = dict(manifest)
    written.setdefault("manifest_version", MANIFEST_VERSION)
    written["files"] = file_table(directory, known_sha256)
    text = json.dumps(written, indent=2, sort_keys=True, default=_json_default) + "\n"
    typed = read_manifest(json.loads(text), f"the manifest being written to {directory}")
    _write_text_atomic(directory / MANIFEST_NAME, text)
    return typed


class Artifact:
    """A built artifact directory, opened through its manifest."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self._path = path
        self._manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> Artifact:
        path = Path(path)
        not_artifact = (f"{path} is not a hubert-export artifact (no {MANIFEST_NAME}): pass a "
                        f"directory written by `hubert-export --output`")
        if not path.is_dir() or not (path / MANIFEST_NAME).is_file():
            raise HubertExportError(not_artifact)
        try:
            data = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise HubertExportError(f"{path} is not a hubert-export artifact ({MANIFEST_NAME} is not "
                                    f"readable JSON: {type(exc).__name__}): rebuild the artifact") from None
        return cls(path, read_manifest(data, f"artifact {path}: {MANIFEST_NAME}"))

    @property
    def path(self) -> Path:
        return self._path

    @property
    def manifest(self) -> Manifest:
        """A copy: only a build writes an artifact's manifest."""
        return self._manifest.model_copy(deep=True)

    @property
    def target(self) -> str:
        return self._manifest.target

    @property
    def precision(self) -> str:
        return self._manifest.precision

    @property
    def task(self) -> str:
        return self._manifest.task

    @property
    def input_contract(self) -> Any:
        """What the artifact accepts (a contract.InputContract), as its back end declared it."""
        return self._manifest.input_contract

    def recipe(self) -> Any:
        """The recipe the artifact was built from (a recipes.Recipe), read back from the manifest."""
        from hubert_export.recipes import recipe_from_dict

        return recipe_from_dict(self._manifest.recipe, source=f"{self._path}/{MANIFEST_NAME}")

    def tokenizer(self) -> Any:
        """The CTC tokenizer of the artifact's vocab.json (a tokenizer.CTCTokenizer), or None without one."""
        from hubert_export.tokenizer import CTCTokenizer

        return CTCTokenizer.from_dir(self._path) if (self._path / "vocab.json").is_file() else None

    @property
    def int8_layers(self) -> int | None:
        """How many Conv/MatMul layers compute in INT8 (None: not an INT8 artifact, or not recorded)."""
        return self._manifest.int8_layers

    @property
    def deployment_isa(self) -> str | None:
        """The CPU instruction set the artifact was built for (hubert_export/isa.py); None before it was recorded."""
        return self._manifest.isa.deployment if self._manifest.isa is not None else None

    @property
    def model_files(self) -> list[Path]:
        """The back end's model files: `backend.files` when recorded, else by the registered back ends'
        file suffixes (hubert_export/targets.py)."""
        named = self._manifest.backend.get("files")
        if isinstance(named, dict):
            named = list(named)
        if isinstance(named, list) and named and all(isinstance(n, str) for n in named):
            return [self._path / n for n in named]
        return [self._path / n for n in sorted(self._manifest.files) if n.endswith(model_suffixes())]

    def verify_files(self) -> None:
        """Raise when a file listed in the manifest is missing or no longer has its recorded hash."""
        problems = []
        for name, entry in sorted(self._manifest.files.items()):
            file = self._path / name
            if not file.is_file():
                problems.append(f"{name} is missing")
            elif file.stat().st_size != entry.bytes or sha256_file(file) != entry.sha256:
                problems.append(f"{name} does not match the hash in {MANIFEST_NAME} (modified after the build?)")
        if problems:
            raise HubertExportError(f"artifact {self._path}: {'; '.join(problems)}: rebuild the artifact")
