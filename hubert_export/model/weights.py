"""Checkpoint formats and the key mapping between Hugging Face checkpoints and this model.

Module and parameter names follow `transformers` exactly, so the mapping is short:
  * the positional convolution's weight norm is stored either as `weight_g` / `weight_v` (older
    checkpoints) or `parametrizations.weight.original0` / `original1` (transformers >= 4.35): both
    load into `weight_g` / `weight_v`, and saving writes the newer names;
  * head classes keep the backbone under `hubert.`; a backbone checkpoint has no prefix;
  * wav2vec 2.0's head classes keep the same backbone under `wav2vec2.` (its `base_model_prefix`):
    it is read into `hubert.` and written back as `wav2vec2.`, so that transformers loads what
    `save_pretrained` writes. Every other name is the same in both families.

Formats, safest first: `model.safetensors` (memory-mapped, no copy), a sharded
`model.safetensors.index.json`, then `pytorch_model.bin` (sharded or not) through
`torch.load(weights_only=True)`, which refuses pickles that would run code.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import torch

from hubert_export.errors import HubertExportError

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_BIN_NAME = "pytorch_model.bin"
TORCH_BIN_INDEX_NAME = "pytorch_model.bin.index.json"

BACKBONE_PREFIX = "hubert."  # where this model's head classes keep the backbone, whatever the family
# Names of head parameters: what a backbone lacks and a head class adds.
HEAD_PREFIXES = ("lm_head.", "projector.", "classifier.", "layer_weights")

_RENAMES_ON_LOAD = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}
_RENAMES_ON_SAVE = {v: k for k, v in _RENAMES_ON_LOAD.items()}

_SAFETENSORS_DTYPES = {
    "F64": (np.float64, None), "F32": (np.float32, None), "F16": (np.float16, None),
    "BF16": (np.uint16, torch.bfloat16), "I64": (np.int64, None), "I32": (np.int32, None),
    "I16": (np.int16, None), "I8": (np.int8, None), "U8": (np.uint8, None), "BOOL": (np.bool_, None),
}


def checkpoint_weight_files(checkpoint_dir: Path) -> list[Path]:
    """The weight files of a checkpoint directory, in the order of preference above."""
    for index_name, single_name in ((SAFETENSORS_INDEX_NAME, SAFETENSORS_NAME), (TORCH_BIN_INDEX_NAME, TORCH_BIN_NAME)):
        if (checkpoint_dir / single_name).is_file():
            return [checkpoint_dir / single_name]
        index = checkpoint_dir / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise HubertExportError(f"{index} is not a valid shard index (no weight_map): restore it") from None
            shards = [checkpoint_dir / name for name in sorted(set(weight_map.values()))]
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise HubertExportError(f"{index.name} lists shards that are missing: {', '.join(missing)}: copy them beside it")
            return shards
    raise HubertExportError(
        f"no weights in {checkpoint_dir}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {TORCH_BIN_NAME}"
    )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, memory-mapped copy-on-write: pages are read on first use."""
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > path.stat().st_size - 8:  # random bytes would ask for exabytes
                raise ValueError(f"header length {header_len} exceeds the file")
            header = json.loads(f.read(header_len))
        data_start = 8 + header_len
        file_size = path.stat().st_size
        header.pop("__metadata__", None)
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
        if data_start + end > file_size:
            raise ValueError(f"needs {data_start + end} bytes, file has {file_size}")
        buffer = np.memmap(path, dtype=np.uint8, mode="c") if end else np.zeros(0, np.uint8)
        tensors = {}
        for name, info in header.items():
            np_dtype, torch_view = _SAFETENSORS_DTYPES[info["dtype"]]
            begin, stop = info["data_offsets"]
            array = buffer[data_start + begin: data_start + stop].view(np_dtype).reshape(info["shape"])
            tensor = torch.from_numpy(array)
            tensors[name] = tensor.view(torch_view) if torch_view is not None else tensor
        return tensors
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error, json.JSONDecodeError) as exc:
        raise HubertExportError(
            f"{path} is not a readable safetensors file ({exc}): the file is truncated or corrupt, download it again"
        ) from None


def read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, loaded with weights_only=True: a pickle that carries code is refused."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        # torch's message is a paragraph; the global the pickle wanted to call is what matters.
        called = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(exc))
        reason = f"it calls {called.group(1)}" if called else _first_sentence(exc)
        raise HubertExportError(
            f"{path} holds pickled code, not just weights, and was not loaded ({reason}): "
            "convert the checkpoint to safetensors with a trusted tool"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise HubertExportError(f"{path} is not a readable PyTorch checkpoint ({_first_sentence(exc)}): "
                                "the file is truncated or corrupt, download it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HubertExportError(f"{path} does not hold a state dict of tensors: point at a model checkpoint")
    return state


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")[:200]


def load_checkpoint_state(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, under this model's parameter names."""
    state: dict[str, torch.Tensor] = {}
    for path in checkpoint_weight_files(checkpoint_dir):
        state.update(read_safetensors(path) if path.suffix == ".safetensors" else read_torch_bin(path))
    return {_rename(key, _RENAMES_ON_LOAD): tensor for key, tensor in state.items()}


def to_checkpoint_state(state: dict[str, torch.Tensor], backbone_prefix: str = BACKBONE_PREFIX) -> dict[str, torch.Tensor]:
    """This model's state dict under the names transformers >= 4.35 writes, the backbone under `backbone_prefix`."""
    return {_rename(checkpoint_name(key, backbone_prefix), _RENAMES_ON_SAVE): tensor.detach().contiguous()
            for key, tensor in state.items()}


def checkpoint_name(key: str, backbone_prefix: str) -> str:
    """This model's parameter name as a checkpoint whose head classes use `backbone_prefix` spells it."""
    return backbone_prefix + key[len(BACKBONE_PREFIX):] if key.startswith(BACKBONE_PREFIX) else key


def model_name(key: str, backbone_prefix: str) -> str:
    """A checkpoint's parameter name (backbone under `backbone_prefix`) as this model spells it."""
    return BACKBONE_PREFIX + key[len(backbone_prefix):] if key.startswith(backbone_prefix) else key


def _rename(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key.endswith("." + old):
            return key[: -len(old)] + new
    return key


def match_prefix(state: dict[str, torch.Tensor], expected: set[str],
                 backbone_prefix: str = BACKBONE_PREFIX) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Move checkpoint keys under or out of `backbone_prefix` to meet the `expected` names.

    Both sides are in the checkpoint's names: head classes keep the backbone under `hubert.`, or
    `wav2vec2.` for wav2vec 2.0. A key moves under the prefix only where that makes it an expected
    name, so an unexpected key keeps the checkpoint's spelling. Returns the renamed state and the
    head weights dropped because the model has no head (a CTC checkpoint loaded as a bare backbone
    for feature extraction).
    """
    model_has_prefix = any(k.startswith(backbone_prefix) for k in expected)
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in state.items():
        has_prefix = key.startswith(backbone_prefix)
        if model_has_prefix and not has_prefix and backbone_prefix + key in expected:
            key = backbone_prefix + key
        elif not model_has_prefix and has_prefix:
            key = key[len(backbone_prefix):]
        elif not model_has_prefix and key.startswith(HEAD_PREFIXES):
            dropped.append(key)
            continue
        renamed[key] = tensor
    return renamed, dropped


def describe_keys(keys: list[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
