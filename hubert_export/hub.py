"""Model ids (`facebook/hubert-large-ls960-ft`) to checkpoint directories in the local Hugging Face cache.

Resolution is offline only: a build or a CI gate must not depend on the network, and a model that
is not cached is the user's to download. A path that exists is always taken as a path, so
directories keep working exactly as before.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hubert_export.errors import HubertExportError

# owner/name as the Hub spells them: letters, digits, '-', '_', '.'; exactly one slash.
_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def looks_like_model_id(spec: str | Path) -> bool:
    """True for `owner/name`; false for anything with a second slash, a leading dot or a backslash."""
    text = str(spec)
    return bool(_MODEL_ID.fullmatch(text)) and ".." not in text


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub would use, read from the environment now (not at import)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def resolve_model(spec: str | Path) -> Path:
    """An existing path as it is; an `owner/name` id as its cached snapshot directory (offline); a
    fairseq `.pt` file as its imported checkpoint directory (imported once, cached by its sha256)."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".pt":
        from hubert_export.model.fairseq import imported_checkpoint_dir  # imports torch: only when needed

        return imported_checkpoint_dir(path)
    if path.exists() or not looks_like_model_id(spec):
        return path
    model_id = str(spec)
    cache = hub_cache_dir()
    download = f"download it with `hf download {model_id}` (or `huggingface-cli download {model_id}`)"
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:
        raise HubertExportError(
            f"{model_id} is not a directory, and huggingface_hub (needed to find model ids in the local "
            f"cache) is not installed: pip install huggingface_hub, or pass a checkpoint directory") from exc
    try:
        snapshot = snapshot_download(model_id, cache_dir=cache, local_files_only=True)
    except LocalEntryNotFoundError:
        raise HubertExportError(
            f"{model_id} is neither a directory nor a model in the local Hugging Face cache (looked in "
            f"{cache / ('models--' + model_id.replace('/', '--'))}; set HF_HUB_CACHE or HF_HOME if your cache "
            f"is elsewhere): {download}, or pass a checkpoint directory") from None
    snapshot = Path(snapshot)
    if not (snapshot / "config.json").is_file():
        raise HubertExportError(
            f"the cached snapshot of {model_id} at {snapshot} has no config.json (a partial download): "
            f"{download} again")
    return snapshot
