"""The canonical PyTorch HuBERT: the model that is exported and the reference every artifact meets."""

from hubert_export.model.config import HubertConfig
from hubert_export.model.heads import HubertForCTC, HubertForSequenceClassification
from hubert_export.model.hubert import HubertModel, HubertPreTrainedModel

__all__ = ["HubertConfig", "HubertForCTC", "HubertForSequenceClassification", "HubertModel",
           "HubertPreTrainedModel"]
