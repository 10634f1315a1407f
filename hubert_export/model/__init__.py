"""The canonical PyTorch HuBERT: the model that is exported and the reference every artifact meets."""

from hubert_export.model.config import HubertConfig
from hubert_export.model.heads import HubertForCTC, HubertForSequenceClassification
from hubert_export.model.hubert import HubertModel, HubertPreTrainedModel

ARCHITECTURES = {
    "HubertModel": HubertModel,
    "HubertForCTC": HubertForCTC,
    "HubertForSequenceClassification": HubertForSequenceClassification,
}

__all__ = ["ARCHITECTURES", "HubertConfig", "HubertForCTC", "HubertForSequenceClassification", "HubertModel",
           "HubertPreTrainedModel"]
