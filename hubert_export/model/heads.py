"""Task heads on top of HubertModel: CTC speech recognition and utterance classification."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hubert_export.model.config import HubertConfig
from hubert_export.model.feature_encoder import frame_lengths
from hubert_export.model.hubert import CausalLMOutput, HubertModel, HubertPreTrainedModel, SequenceClassifierOutput


class HubertForCTC(HubertPreTrainedModel):
    """Per-frame token logits (`lm_head`), trained with CTC; the pad token is the CTC blank."""

    def __init__(self, config: HubertConfig) -> None:
        super().__init__(config)
        if config.vocab_size is None:
            raise ValueError("HubertForCTC needs config.vocab_size: set it to the tokenizer's vocabulary size")
        self.hubert = HubertModel(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.lm_head.apply(self._init_module)  # the backbone initialised itself

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutput | tuple[torch.Tensor, ...]:
        """labels: (B, U) token ids; -100 and the pad (blank) id mark padding and are ignored."""
        if labels is not None and labels.max() >= self.config.vocab_size:
            raise ValueError(f"label values must be < vocab_size ({self.config.vocab_size})")
        outputs = self.hubert(input_values, attention_mask, mask_time_indices, output_attentions,
                              output_hidden_states, return_dict=True)
        logits = self.lm_head(self.dropout(outputs.last_hidden_state))  # (B, T, V)

        loss = None
        if labels is not None:
            sample_lengths = (attention_mask.sum(-1) if attention_mask is not None
                              else torch.full((input_values.shape[0],), input_values.shape[-1], device=logits.device))
            logit_lengths = frame_lengths(self.config, sample_lengths).long()
            blank = self.config.pad_token_id
            labels_mask = (labels != -100) & (labels != blank)
            log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)  # (T, B, V)
            loss = F.ctc_loss(
                log_probs, labels.masked_select(labels_mask), logit_lengths, labels_mask.sum(-1),
                blank=blank, reduction=self.config.ctc_loss_reduction, zero_infinity=self.config.ctc_zero_infinity,
            )
        output = CausalLMOutput(loss, logits, outputs.hidden_states, outputs.attentions)
        return output if return_dict is not False else output.to_tuple()


class HubertForSequenceClassification(HubertPreTrainedModel):
    """Utterance labels: (weighted) hidden states -> projector -> masked mean over frames -> classifier."""

    def __init__(self, config: HubertConfig) -> None:
        super().__init__(config)
        self.hubert = HubertModel(config)
        if config.use_weighted_layer_sum:
            num_layers = config.num_hidden_layers + 1  # the encoder's input and every layer's output
            self.layer_weights = nn.Parameter(torch.ones(num_layers) / num_layers)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)
        self.projector.apply(self._init_module)  # the backbone initialised itself
        self.classifier.apply(self._init_module)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput | tuple[torch.Tensor, ...]:
        weighted = self.config.use_weighted_layer_sum
        outputs = self.hubert(input_values, attention_mask, mask_time_indices, output_attentions,
                              output_hidden_states or weighted, return_dict=True)
        if weighted:
            stacked = torch.stack(outputs.hidden_states, dim=1)  # (B, L+1, T, D)
            norm_weights = self.layer_weights.softmax(dim=-1)
            hidden_states = (stacked * norm_weights.view(-1, 1, 1)).sum(dim=1)
        else:
            hidden_states = outputs.last_hidden_state
        hidden_states = self.projector(hidden_states)  # (B, T, P)
        if attention_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            frame_mask = self.feature_vector_mask(hidden_states.shape[1], attention_mask)
            hidden_states = hidden_states * frame_mask[..., None].to(hidden_states.dtype)
            pooled = hidden_states.sum(dim=1) / frame_mask.sum(dim=1, keepdim=True).to(hidden_states.dtype)
        logits = self.classifier(pooled)  # (B, num_labels)

        loss = None
        if labels is not None:
            loss = self._loss(logits, labels)
        output = SequenceClassifierOutput(
            loss, logits, outputs.hidden_states if output_hidden_states else None, outputs.attentions
        )
        return output if return_dict is not False else output.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The generic Hugging Face convention: one label is regression (MSE), several are
        # single-label classification (cross-entropy) unless config.problem_type says otherwise.
        problem = self.config.problem_type or ("regression" if self.config.num_labels == 1 else
                                               "single_label_classification")
        if problem == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
        if problem == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
