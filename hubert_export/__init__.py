"""hubert-export: HuBERT checkpoints in, verified ONNX Runtime / OpenVINO / TensorRT artifacts out."""

from hubert_export.errors import HubertExportError
from hubert_export.model import (
    HubertConfig,
    HubertForCTC,
    HubertForSequenceClassification,
    HubertModel,
    HubertPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "HubertConfig",
    "HubertExportError",
    "HubertForCTC",
    "HubertForSequenceClassification",
    "HubertModel",
    "HubertPreTrainedModel",
    "__version__",
]
