"""The canonical PyTorch HuBERT: the model that is exported and the reference every artifact meets.

`HubertConfig` (config.py) needs no torch; the model classes are imported on first use, so that
`hubert_export.model.config` loads on a machine without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from hubert_export.model.config import HubertConfig

_LAZY = {
    "HubertForCTC": "hubert_export.model.heads",
    "HubertForSequenceClassification": "hubert_export.model.heads",
    "HubertModel": "hubert_export.model.hubert",
    "HubertPreTrainedModel": "hubert_export.model.hubert",
}

__all__ = ["HubertConfig", "HubertForCTC", "HubertForSequenceClassification", "HubertModel",
           "HubertPreTrainedModel"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hubert_export.model' has no attribute {name!r}")
