"""The canonical PyTorch HuBERT: the model that is exported and the reference every artifact meets.

wav2vec 2.0 checkpoints load into the same network (wav2vec2.py). The configs (config.py) need no
torch; the model classes are imported on first use, so that `hubert_export.model.config` loads on
a machine without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from hubert_export.model.config import HubertConfig, Wav2Vec2Config, load_config

_LAZY = {
    "HubertForCTC": "hubert_export.model.heads",
    "HubertForSequenceClassification": "hubert_export.model.heads",
    "HubertModel": "hubert_export.model.hubert",
    "HubertPreTrainedModel": "hubert_export.model.hubert",
    "Wav2Vec2ForCTC": "hubert_export.model.wav2vec2",
    "Wav2Vec2ForSequenceClassification": "hubert_export.model.wav2vec2",
    "Wav2Vec2Model": "hubert_export.model.wav2vec2",
    "Wav2Vec2PreTrainedModel": "hubert_export.model.wav2vec2",
}

__all__ = ["HubertConfig", "HubertForCTC", "HubertForSequenceClassification", "HubertModel",
           "HubertPreTrainedModel", "Wav2Vec2Config", "Wav2Vec2ForCTC", "Wav2Vec2ForSequenceClassification",
           "Wav2Vec2Model", "Wav2Vec2PreTrainedModel", "load_config"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hubert_export.model' has no attribute {name!r}")
