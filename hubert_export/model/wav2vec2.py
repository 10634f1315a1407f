"""wav2vec 2.0 (Baevski et al., 2020): at inference, HuBERT's network under other checkpoint names.

HuBERT (Hsu et al., 2021) kept wav2vec 2.0's network — convolutional feature encoder, feature
projection, convolutional relative position embedding, transformer, in the same base (post-LN,
GroupNorm encoder) and large (pre-LN, LayerNorm encoder) layouts — and changed only what it is
trained to predict. So these classes are HuBERT's, with what differs in a checkpoint:
  * the config (`Wav2Vec2Config`): the feature projection always layer-normalises first, there
    is no batch-normed positional convolution, adapters are refused;
  * the names: head classes keep the backbone under `wav2vec2.` (mapped by weights.py both ways,
    so `save_pretrained` writes what transformers' `Wav2Vec2ForCTC` loads);
  * pretraining checkpoints (`Wav2Vec2ForPreTraining`) carry the quantizer and the contrastive
    projections (`quantizer.`, `project_q.`, `project_hid.`), which inference never reads: they are
    ignored with a note, and any other unknown weight is still refused.
"""

from __future__ import annotations

from hubert_export.model.config import Wav2Vec2Config
from hubert_export.model.heads import HubertForCTC, HubertForSequenceClassification
from hubert_export.model.hubert import HubertModel, HubertPreTrainedModel


class Wav2Vec2PreTrainedModel(HubertPreTrainedModel):
    config_class = Wav2Vec2Config
    base_model_prefix = "wav2vec2"
    pretraining_prefixes = ("quantizer.", "project_q.", "project_hid.")


class Wav2Vec2Model(Wav2Vec2PreTrainedModel, HubertModel):
    pass


class Wav2Vec2ForCTC(Wav2Vec2PreTrainedModel, HubertForCTC):
    pass


class Wav2Vec2ForSequenceClassification(Wav2Vec2PreTrainedModel, HubertForSequenceClassification):
    pass
