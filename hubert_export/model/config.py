"""HubertConfig: every field of the Hugging Face `HubertConfig`, same names, defaults and meanings.

It reads and writes the Hugging Face `config.json`. Keys this class does not know (fields of newer
or older `transformers` releases, training bookkeeping) are kept in `extra` and written back
unchanged, so a round trip through hubert-export never loses information.

`Wav2Vec2Config` is the same for wav2vec 2.0 checkpoints (`model_type: "wav2vec2"`), whose
inference network is HuBERT's; `load_config` picks the class from config.json's `model_type`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hubert_export.errors import HubertExportError

CONFIG_NAME = "config.json"

# The activations `transformers.activations.ACT2FN` offers that HuBERT checkpoints use.
ACTIVATIONS = (
    "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu",
    "relu", "selu", "silu", "swish", "tanh", "sigmoid", "mish", "linear",
)
CTC_LOSS_REDUCTIONS = ("sum", "mean", "none")
FEAT_EXTRACT_NORMS = ("group", "layer")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


@dataclass
class HubertConfig:
    vocab_size: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_layer_norm: bool = True
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    conv_pos_batch_norm: bool = False
    do_stable_layer_norm: bool = False
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    ctc_loss_reduction: str = "sum"
    ctc_zero_infinity: bool = False
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    # Sequence classification (generic Hugging Face fields). num_labels follows id2label.
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    problem_type: str | None = None
    architectures: list[str] | None = None
    # Keys of config.json that this class does not model, kept verbatim for the round trip.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    model_type = "hubert"
    # Fields that this family's config.json does not have: they keep their defaults, and a value
    # config.json gives them stays in `extra`, unread, as transformers leaves it.
    fixed_fields: ClassVar[tuple[str, ...]] = ()
    # SpecAugment (training only): draw time-mask spans inside each row's real length (the padded
    # length otherwise), as transformers' model of this family does.
    mask_spans_within_lengths = False

    def __post_init__(self) -> None:
        self.conv_dim = tuple(self.conv_dim)
        self.conv_stride = tuple(self.conv_stride)
        self.conv_kernel = tuple(self.conv_kernel)
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        self.validate()

    # ----------------------------------------------------------------------------------- derived
    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if self.num_labels != n:
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    @property
    def inputs_to_logits_ratio(self) -> int:
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame (400 for every released HuBERT)."""
        field_size = 1
        for kernel, stride in reversed(list(zip(self.conv_kernel, self.conv_stride))):
            field_size = (field_size - 1) * stride + kernel
        return field_size

    def num_frames(self, num_samples: int) -> int:
        """Frames the feature encoder produces for `num_samples` samples."""
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            num_samples = (num_samples - kernel) // stride + 1
        return num_samples

    # -------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        def bad(msg: str) -> HubertExportError:
            return HubertExportError(f"invalid {type(self).__name__}: {msg}: fix the value in config.json")

        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in self.fixed_fields:
            if getattr(self, name) != defaults[name]:
                raise HubertExportError(f"{type(self).__name__} has no {name}: {self.model_type} models always "
                                        f"compute as {name}={defaults[name]!r}; leave it at that")
        # Adapters add layers this model does not have: wav2vec2's convolutional adapter after the
        # encoder (add_adapter) and MMS's per-language attention adapters (adapter_attn_dim, which
        # transformers' HuBERT honours too). Refused rather than silently dropped.
        for name, what in (("add_adapter", "a convolutional adapter after the encoder"),
                           ("adapter_attn_dim", "attention adapters in every layer, as MMS has")):
            value = getattr(self, name, self.extra.get(name))
            if value not in (None, False):
                raise HubertExportError(
                    f"{self.model_type} checkpoints with {name}={value!r} ({what}) are not supported: "
                    "export a checkpoint without adapters")

        n = len(self.conv_dim)
        if n == 0 or len(self.conv_stride) != n or len(self.conv_kernel) != n:
            raise bad(
                f"conv_dim, conv_stride and conv_kernel must have the same non-zero length, got "
                f"{len(self.conv_dim)}, {len(self.conv_stride)} and {len(self.conv_kernel)}: give one "
                "entry per feature-encoder convolution in each"
            )
        for name in ("conv_dim", "conv_stride", "conv_kernel"):
            if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in getattr(self, name)):
                raise bad(f"{name} must hold positive integers, got {list(getattr(self, name))}")
        positive = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "classifier_proj_size",
                    "mask_time_length", "mask_feature_length")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(f"{name} must be a positive integer, got {value!r}")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size <= 0):
            raise bad(f"vocab_size must be a positive integer, got {self.vocab_size!r}")
        if self.hidden_size % self.num_attention_heads:
            raise bad(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise bad(
                f"hidden_size ({self.hidden_size}) must be divisible by num_conv_pos_embedding_groups "
                f"({self.num_conv_pos_embedding_groups})"
            )
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise bad(f"unknown activation {name}={getattr(self, name)!r}: use one of {', '.join(ACTIVATIONS)}")
        if self.feat_extract_norm not in FEAT_EXTRACT_NORMS:
            raise bad(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if self.ctc_loss_reduction not in CTC_LOSS_REDUCTIONS:
            raise bad(f"ctc_loss_reduction must be one of {CTC_LOSS_REDUCTIONS}, got {self.ctc_loss_reduction!r}")
        if self.problem_type not in PROBLEM_TYPES:
            raise bad(f"problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        for name in ("hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout",
                     "final_dropout", "layerdrop", "mask_time_prob", "mask_feature_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise bad(f"{name} must be a probability between 0 and 1, got {value!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or self.layer_norm_eps <= 0:
            raise bad(f"layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")
        if self.num_labels < 1:
            raise bad("id2label must name at least one label")

    # ------------------------------------------------------------------------------ (de)serialise
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HubertConfig:
        if not isinstance(data, dict):
            raise HubertExportError("invalid HubertConfig: config.json must hold a JSON object: restore the "
                                    "checkpoint's config.json")
        data = dict(data)
        model_type = data.pop("model_type", cls.model_type)
        if model_type not in (cls.model_type, None):
            raise HubertExportError(
                f"config.json has model_type {model_type!r}, not {cls.model_type!r}: load the checkpoint with "
                f"the {model_type} classes, or read its config with hubert_export.load_config"
            )
        # Hugging Face derives num_labels from id2label; a config may carry either.
        num_labels = data.pop("num_labels", None)
        data.pop("label2id", None)
        data.pop("num_feat_extract_layers", None)  # derived from conv_dim
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"} - set(cls.fixed_fields)
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        if "id2label" in kwargs and kwargs["id2label"] is None:
            del kwargs["id2label"]
        try:
            config = cls(**kwargs, extra=data)
        except (TypeError, ValueError, AttributeError) as exc:
            raise HubertExportError(f"invalid HubertConfig: {exc}: fix the value in config.json") from None
        if num_labels is not None and "id2label" not in kwargs:
            config.num_labels = int(num_labels)
        return config

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra" or f.name in self.fixed_fields:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = self.label2id
        out["num_feat_extract_layers"] = self.num_feat_extract_layers
        out["model_type"] = self.model_type
        return out

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path) -> HubertConfig:
        return cls.from_dict(read_config_json(checkpoint_dir))

    def save_pretrained(self, checkpoint_dir: str | Path) -> None:
        path = Path(checkpoint_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


@dataclass
class Wav2Vec2Config(HubertConfig):
    """wav2vec 2.0's config (Hugging Face `Wav2Vec2Config`): HuBERT's fields, same names and defaults.

    HuBERT took wav2vec 2.0's network and changed only its training target, so the inference graph
    is the same. What differs in the config: wav2vec 2.0 always layer-normalises the features
    before projecting them and has no batch-normed positional convolution (`feat_proj_layer_norm`
    and `conv_pos_batch_norm` are HuBERT's fields, fixed here at True and False), and it has
    adapters, which are refused. Its pretraining fields (codevectors, negatives, ...) and the
    x-vector head's (tdnn_*) stay in `extra`.
    """

    add_adapter: bool = False
    adapter_attn_dim: int | None = None

    model_type = "wav2vec2"
    fixed_fields = ("feat_proj_layer_norm", "conv_pos_batch_norm")
    mask_spans_within_lengths = True  # Wav2Vec2Model passes its frame mask to the span sampler


# config.json's model_type -> config class. One line per family (tasks.FAMILIES has the rest).
CONFIG_CLASSES: dict[str, type[HubertConfig]] = {"hubert": HubertConfig, "wav2vec2": Wav2Vec2Config}

# Relatives of wav2vec 2.0 whose networks differ from this one, and how (named in the refusal).
UNSUPPORTED_MODEL_TYPES = {
    "data2vec-audio": "its positional embedding is a stack of 5 layer-normed convolutions",
    "wavlm": "its attention adds a gated relative position bias",
}


def read_config_json(checkpoint_dir: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint (or the file itself) as a dict; one-line errors when absent or broken."""
    path = Path(checkpoint_dir)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise HubertExportError(
            f"no {CONFIG_NAME} in {path.parent}: point at a Hugging Face checkpoint directory "
            "(config.json + model.safetensors)"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HubertExportError(f"{path} is not valid JSON ({exc}): restore the checkpoint's config.json") from None


def load_config(checkpoint_dir: str | Path) -> HubertConfig:
    """The config of a checkpoint, of the class its `model_type` names (a config without one is HuBERT's)."""
    data = read_config_json(checkpoint_dir)
    model_type = (data.get("model_type") or "hubert") if isinstance(data, dict) else "hubert"
    if model_type not in CONFIG_CLASSES:
        why = f" ({UNSUPPORTED_MODEL_TYPES[model_type]})" if model_type in UNSUPPORTED_MODEL_TYPES else ""
        raise HubertExportError(
            f"model_type {model_type!r} is not supported{why}: hubert-export exports "
            f"{' and '.join(CONFIG_CLASSES)} checkpoints; point --model at one of those")
    return CONFIG_CLASSES[model_type].from_dict(data)
