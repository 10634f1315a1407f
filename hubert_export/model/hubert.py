"""HuBERT: feature encoder -> feature projection -> (SpecAugment) -> transformer encoder.

`HubertModel` has the forward signature and outputs of `transformers.HubertModel`;
`HubertPreTrainedModel` holds what every class shares: weight initialisation, `from_pretrained`
and `save_pretrained`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubert_export.errors import HubertExportError
from hubert_export.model import weights
from hubert_export.model.config import HubertConfig
from hubert_export.model.encoder import HubertEncoder, WeightNormConv1d
from hubert_export.model.feature_encoder import HubertFeatureEncoder, HubertFeatureProjection, frame_lengths
from hubert_export.model.masking import compute_mask_indices

log = logging.getLogger(__name__)


class ModelOutput:
    """Fields by name or position; `to_tuple()` skips the fields that are None, as transformers does."""

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def __getitem__(self, key: int | str) -> Any:
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutput(CausalLMOutput):
    pass


class HubertPreTrainedModel(nn.Module):
    config: HubertConfig
    config_class: type[HubertConfig] = HubertConfig
    # Where the checkpoint's head classes keep the backbone (transformers' base_model_prefix); this
    # model keeps it under `hubert` in every family, and weights.py maps the names both ways.
    base_model_prefix = "hubert"
    # Weights of the checkpoint's pretraining objective that inference never reads: ignored on load.
    pretraining_prefixes: tuple[str, ...] = ()

    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        self.config = config

    # ------------------------------------------------------------------------------ initialisation
    def init_weights(self) -> None:
        self.apply(self._init_module)

    def _init_module(self, module: nn.Module) -> None:
        # On the meta device (from_pretrained) there is nothing to initialise, and meta init ops
        # import torch._dynamo: over a second of start-up for nothing.
        if any(p.is_meta for p in module.parameters(recurse=False)):
            return
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, WeightNormConv1d):
            # fairseq's init: v ~ N(0, 4 / (k * C)), g = ||v|| so that the weight starts equal to v.
            channels, _, kernel = module.weight_v.shape
            nn.init.normal_(module.weight_v, std=math.sqrt(4.0 / (kernel * channels)))
            with torch.no_grad():
                module.weight_g.copy_(module.weight_v.norm(dim=(0, 1), keepdim=True))
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                bound = math.sqrt(module.groups / (module.in_channels * module.kernel_size[0]))
                nn.init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, HubertModel) and module.masked_spec_embed is not None:
            nn.init.uniform_(module.masked_spec_embed)

    def _init_parameter(self, name: str, shape: torch.Size) -> torch.Tensor:
        """A freshly initialised head parameter (a backbone checkpoint has none)."""
        if name == "layer_weights":
            return torch.full(shape, 1.0 / shape[0])
        if name.endswith(".bias"):
            return torch.zeros(shape)
        return torch.randn(shape) * self.config.initializer_range

    # ------------------------------------------------------------------------------ helpers
    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the convolutional feature encoder (the usual fine-tuning recipe)."""
        self._backbone().feature_extractor.freeze()

    def _backbone(self) -> HubertModel:
        return self if isinstance(self, HubertModel) else self.hubert  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls, checkpoint_dir: str | Path, *, strict: bool = True, dtype: torch.dtype | None = torch.float32
    ) -> HubertPreTrainedModel:
        """Load a Hugging Face checkpoint directory (config.json + weights) into this class.

        A backbone checkpoint loaded into a head class initialises only the head; a head
        checkpoint loaded into `HubertModel` drops the head. Any other missing or unexpected
        weight is an error listing it (unless strict=False). The model is returned in eval mode.
        """
        checkpoint_dir = Path(checkpoint_dir)
        config = cls.config_class.from_pretrained(checkpoint_dir)
        state = weights.load_checkpoint_state(checkpoint_dir)
        pretraining = [k for k in state if k.startswith(cls.pretraining_prefixes)]
        if pretraining:
            found = [p + "*" for p in cls.pretraining_prefixes if any(k.startswith(p) for k in pretraining)]
            log.warning(f"ignoring {len(pretraining)} weights of {config.model_type}'s pretraining objective "
                        f"({', '.join(found)}): inference does not use them")
            state = {k: v for k, v in state.items() if not k.startswith(cls.pretraining_prefixes)}
        # Build on the meta device: parameters are then bound to the checkpoint's (memory-mapped)
        # tensors instead of allocating and initialising a second copy.
        with torch.device("meta"):
            model = cls(config)
        # Matched in the checkpoint's names (wav2vec 2.0 keeps the backbone under `wav2vec2.`), so
        # that every error names a weight as the checkpoint spells it.
        prefix = cls.base_model_prefix + "."
        expected = {weights.checkpoint_name(k, prefix): v for k, v in model.state_dict().items()}
        state, _dropped_head = weights.match_prefix(state, set(expected), prefix)
        missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in expected]
        head_only = [k for k in missing if k.startswith(weights.HEAD_PREFIXES)]
        backbone_missing = [k for k in missing if k not in head_only]
        problems = []
        if backbone_missing:
            problems.append(f"missing weights: {weights.describe_keys(backbone_missing)}")
        if unexpected and strict:
            problems.append(f"unexpected weights: {weights.describe_keys(unexpected)}")
        if problems:
            raise HubertExportError(
                f"checkpoint {checkpoint_dir} does not fit {cls.__name__} with its config.json "
                f"({'; '.join(problems)}): check that config.json belongs to these weights"
            )
        for key in unexpected:
            del state[key]
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise HubertExportError(
                    f"checkpoint {checkpoint_dir}: weight {key} has shape {tuple(tensor.shape)} but config.json "
                    f"implies {tuple(expected[key].shape)}: check that config.json belongs to these weights"
                )
            if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                state[key] = tensor.to(dtype)
        for key in head_only:
            state[key] = model._init_parameter(key, expected[key].shape)
        model.load_state_dict({weights.model_name(k, prefix): v for k, v in state.items()}, strict=False, assign=True)
        # num_batches_tracked is optional in checkpoints; any buffer still on meta gets its default.
        for module in model.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer.is_meta:
                    module.register_buffer(name, torch.zeros(buffer.shape, dtype=buffer.dtype))
        return model.eval()

    def save_pretrained(self, checkpoint_dir: str | Path) -> None:
        """Write config.json and model.safetensors in the layout transformers loads."""
        from safetensors.torch import save_file

        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if any(isinstance(m, nn.Conv1d) and "pos_conv" in n and not self.config.conv_pos_batch_norm
               for n, m in self.named_modules()):
            raise HubertExportError("this model's weight norm was folded for export: save the original model instead")
        config = dataclasses.replace(self.config, architectures=[type(self).__name__])
        config.save_pretrained(checkpoint_dir)
        state = weights.to_checkpoint_state(self.state_dict(), self.base_model_prefix + ".")
        save_file(state, str(checkpoint_dir / weights.SAFETENSORS_NAME), metadata={"format": "pt"})

    def feature_vector_mask(self, num_frames: int, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, samples) sample mask -> (B, frames) bool frame mask: frames that see real audio."""
        lengths = frame_lengths(self.config, attention_mask.sum(-1))
        return torch.arange(num_frames, device=attention_mask.device)[None, :] < lengths[:, None]


class HubertModel(HubertPreTrainedModel):
    def __init__(self, config: HubertConfig) -> None:
        super().__init__(config)
        self.feature_extractor = HubertFeatureEncoder(config)
        self.feature_projection = HubertFeatureProjection(config)
        # The learned embedding that replaces time-masked frames exists only when masking is on.
        self.masked_spec_embed = (
            nn.Parameter(torch.empty(config.hidden_size))
            if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0 else None
        )
        self.encoder = HubertEncoder(config)
        self.init_weights()

    def _mask_hidden_states(
        self,
        hidden_states: torch.Tensor,
        mask_time_indices: torch.Tensor | None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SpecAugment: explicit `mask_time_indices` always apply; random masks only in training."""
        config = self.config
        if not config.apply_spec_augment:
            return hidden_states
        B, T, D = hidden_states.shape
        if mask_time_indices is None and config.mask_time_prob > 0 and self.training:
            # Like transformers, spans are drawn over the padded length for HuBERT and inside each
            # row's length for wav2vec 2.0, so that a seeded run masks the reference's frames.
            lengths = frame_mask if config.mask_spans_within_lengths else None
            mask_time_indices = torch.from_numpy(compute_mask_indices(
                (B, T), config.mask_time_prob, config.mask_time_length, lengths, config.mask_time_min_masks,
            )).to(hidden_states.device)
        if mask_time_indices is not None:
            if self.masked_spec_embed is None:
                raise ValueError("mask_time_indices needs masked_spec_embed: set mask_time_prob > 0 in the config")
            embed = self.masked_spec_embed.to(hidden_states.dtype)
            hidden_states = torch.where(mask_time_indices.bool()[..., None], embed, hidden_states)
        if config.mask_feature_prob > 0 and self.training:
            mask_feature_indices = torch.from_numpy(compute_mask_indices(
                (B, D), config.mask_feature_prob, config.mask_feature_length, min_masks=config.mask_feature_min_masks,
            )).to(hidden_states.device)
            hidden_states = hidden_states.masked_fill(mask_feature_indices[:, None, :], 0.0)
        return hidden_states

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput | tuple[torch.Tensor, ...]:
        features = self.feature_extractor(input_values).transpose(1, 2)  # (B, T, C)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = self.feature_vector_mask(features.shape[1], attention_mask)
        hidden_states = self.feature_projection(features)  # (B, T, D)
        hidden_states = self._mask_hidden_states(hidden_states, mask_time_indices, frame_mask)
        last_hidden_state, all_hidden_states, attentions = self.encoder(
            hidden_states, frame_mask, bool(output_attentions), bool(output_hidden_states)
        )
        output = BaseModelOutput(last_hidden_state, all_hidden_states, attentions)
        return output if return_dict is not False else output.to_tuple()
