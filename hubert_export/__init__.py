"""hubert-export: HuBERT checkpoints in, verified ONNX Runtime / OpenVINO / TensorRT artifacts out.

The model classes are imported on first use (module `__getattr__`), so that the modules a
deployment target needs (`check --golden`: the artifact, the parity comparison, a back end's
runtime) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from hubert_export.errors import HubertExportError

__version__ = "0.1.0"

_LAZY = {name: "hubert_export.model" for name in (
    "HubertConfig", "HubertForCTC", "HubertForSequenceClassification", "HubertModel", "HubertPreTrainedModel",
    "Wav2Vec2Config", "Wav2Vec2ForCTC", "Wav2Vec2ForSequenceClassification", "Wav2Vec2Model", "load_config")}

__all__ = [
    "HubertConfig",
    "HubertExportError",
    "HubertForCTC",
    "HubertForSequenceClassification",
    "HubertModel",
    "HubertPreTrainedModel",
    "Wav2Vec2Config",
    "Wav2Vec2ForCTC",
    "Wav2Vec2ForSequenceClassification",
    "Wav2Vec2Model",
    "__version__",
    "load_config",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hubert_export' has no attribute {name!r}")
