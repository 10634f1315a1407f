"""What an export is, declared once per model family and task (the shape of Optimum's OnnxConfig).

A `ModelFamily` declares everything the generic code needs to export, check and run a family's
checkpoints: input and output names with their dynamic axes and dtypes, the static dimensions read
from the config (hidden size, vocabulary, labels, layers), the dummy inputs the exporter traces
with, each task's model class and head weights, the architecture -> task map of config.json, the
default opset and the parity tolerances. The exporter, the manifest, the runners, the parity
harness, the FLOP count and the benchmarks read it from here; a new family is one more
`ModelFamily(...)` and one line in `FAMILIES` (and its config class in model/config.py's
`CONFIG_CLASSES`, which torch-free code reads). wav2vec2, whose inference graph is HuBERT's, was
added that way.

Names follow the ecosystem (Optimum, ONNX Runtime's speech examples): `input_values`, optional
`attention_mask`, and `last_hidden_state` or `logits`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hubert_export.errors import HubertExportError
from hubert_export.recipes import DEFAULT_OPSET, TASKS as RECIPE_TASKS  # torch-free: recipes load without torch
from hubert_export.model import (HubertConfig, HubertForCTC, HubertForSequenceClassification, HubertModel,
                                 Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification, Wav2Vec2Model)

TASK_NAMES: tuple[str, ...] = tuple(t for t in RECIPE_TASKS if t != "auto")

# Default parity thresholds per precision. fp32 is exact up to float rounding; fp16 and int8 are
# judged on what users consume (directions of features, decoded tokens, top-1 classes), since their
# absolute errors grow with the output's scale and mean little on their own.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_error": 1e-4, "relative_l2_error": 1e-4, "min_cosine_similarity": 0.9999,
             "min_argmax_agreement": 0.995, "max_token_edit_rate": 0.01, "min_top1_agreement": 1.0,
             "max_cer": 0.01, "max_wer": 0.02},
    "fp16": {"relative_l2_error": 0.02, "min_cosine_similarity": 0.995, "min_argmax_agreement": 0.97,
             "max_token_edit_rate": 0.05, "min_top1_agreement": 0.98, "max_cer": 0.05, "max_wer": 0.1},
    # INT8 gates on what users see (frame argmax, decoded tokens, CER), set between a good and a
    # broken INT8 graph as measured on random-init hubert-base (the worst case of the five built-in
    # cases; a random model's near-flat logits flip argmaxes far more easily than a trained one's):
    #   good, feature encoder in float (OpenVINO): argmax agreement 0.865, token edit rate 0.196,
    #     min cosine 0.962;
    #   broken, every conv INT8 (OpenVINO): agreement 0.33 (b1-1234) / 0.70 (padded), min cosine 0.84;
    #   broken, ONNX Runtime static QDQ attention on 1-3 frame inputs: agreement 0, cosine 0.43.
    # The worst single frame's cosine only catches a broken graph.
    "int8": {"min_cosine_similarity": 0.70, "min_argmax_agreement": 0.80, "max_token_edit_rate": 0.25,
             "min_top1_agreement": 0.9, "max_cer": 0.10, "max_wer": 0.25},
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype, rank, named dynamic axes and config-given static dims."""

    name: str
    dtype: str
    rank: int
    axes: dict[int, str]
    static_dims: Callable[[Any], dict[int, int]] = lambda config: {}

    def shape(self, config: Any) -> list[Any]:
        """Axis names where dynamic, sizes where the config fixes them (None where neither)."""
        fixed = self.static_dims(config)
        return [self.axes.get(i, fixed.get(i)) for i in range(self.rank)]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    model_class: type[nn.Module]
    output: TensorSpec
    description: str
    # The weights a checkpoint fine-tuned for this task has: without them from_pretrained would
    # initialise the head at random, and an export of that is garbage.
    head_prefix: str | None = None

    @property
    def output_axes(self) -> dict[str, dict[int, str]]:
        return {self.output.name: self.output.axes}

    @property
    def output_names(self) -> list[str]:
        return [self.output.name]


@dataclass(frozen=True)
class ModelFamily:
    """Everything generic code needs to know about one family of checkpoints."""

    name: str
    config_class: type
    inputs: tuple[TensorSpec, ...]
    tasks: dict[str, TaskSpec]
    # config.json's `architectures` -> task; the first known one wins, else `default_task`.
    architectures: dict[str, str]
    # Every hidden state, for users who take their own weighted layer sum.
    hidden_states: TensorSpec
    default_task: str = "feature-extraction"
    default_opset: int = DEFAULT_OPSET
    thresholds: dict[str, dict[str, float]] = field(default_factory=lambda: DEFAULT_THRESHOLDS)

    def task(self, name: str) -> TaskSpec:
        if name not in self.tasks:
            raise HubertExportError(f"unknown task {name!r}: choose one of {', '.join(self.tasks)}")
        return self.tasks[name]

    def infer_task(self, config: Any) -> str:
        """The task a checkpoint was saved for, from config.json's `architectures`."""
        for architecture in getattr(config, "architectures", None) or []:
            if architecture in self.architectures:
                return self.architectures[architecture]
        return self.default_task

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)

    def input_names(self, with_attention_mask: bool) -> list[str]:
        return [s.name for s in self.inputs if with_attention_mask or s.name != "attention_mask"]

    def outputs(self, task: TaskSpec, output_hidden_states: bool) -> list[TensorSpec]:
        return [task.output] + ([self.hidden_states] if output_hidden_states else [])

    def dummy_inputs(self, with_attention_mask: bool) -> dict[str, torch.Tensor]:
        """What the exporter traces with: batch 2 and a length that is no multiple of the stride keep
        the tracer from specialising either dimension."""
        values = torch.zeros(2, 16_003)
        values[:, ::7] = 0.5
        inputs = {"input_values": values}
        if with_attention_mask:
            inputs["attention_mask"] = torch.ones(2, 16_003, dtype=torch.int64)
        return inputs

    def io_section(self, input_names: list[str], task: TaskSpec, output_hidden_states: bool,
                   config: Any) -> dict[str, Any]:
        """The manifest's `io`: inputs and outputs with dtypes and shapes, dynamic axes, frame geometry."""
        inputs = [self.input(n) for n in input_names]
        outputs = self.outputs(task, output_hidden_states)
        return {
            "inputs": [{"name": s.name, "dtype": s.dtype, "shape": s.shape(config)} for s in inputs],
            "outputs": [{"name": s.name, "dtype": s.dtype, "shape": s.shape(config)} for s in outputs],
            "dynamic_axes": {s.name: {str(k): v for k, v in s.axes.items()} for s in inputs + outputs},
            "frames": {"stride_samples": config.inputs_to_logits_ratio, "receptive_field": config.receptive_field},
        }


# The graph interface of the wav2vec 2.0 / HuBERT network, shared by the families that compute it.
SPEECH_INPUTS = (
    TensorSpec("input_values", "float32", 2, {0: "batch", 1: "samples"}),
    TensorSpec("attention_mask", "int64", 2, {0: "batch", 1: "samples"}),
)
LAST_HIDDEN_STATE = TensorSpec("last_hidden_state", "float32", 3, {0: "batch", 1: "frames"},
                               lambda c: {2: c.hidden_size})
CTC_LOGITS = TensorSpec("logits", "float32", 3, {0: "batch", 1: "frames"}, lambda c: {2: c.vocab_size})
CLASS_LOGITS = TensorSpec("logits", "float32", 2, {0: "batch"}, lambda c: {1: c.num_labels})
HIDDEN_STATES = TensorSpec("hidden_states", "float32", 4, {0: "batch", 2: "frames"},
                           lambda c: {1: c.num_hidden_layers + 1, 3: c.hidden_size})


def speech_tasks(backbone: type[nn.Module], ctc: type[nn.Module],
                 classification: type[nn.Module]) -> dict[str, TaskSpec]:
    """The three tasks of the network, on one family's model classes (the same outputs and heads)."""
    return {
        "feature-extraction": TaskSpec("feature-extraction", backbone, LAST_HIDDEN_STATE,
                                       "the encoder's last hidden state, (batch, frames, hidden)"),
        "ctc": TaskSpec("ctc", ctc, CTC_LOGITS, "per-frame token logits for CTC decoding, (batch, frames, vocab)",
                        head_prefix="lm_head."),
        "sequence-classification": TaskSpec("sequence-classification", classification, CLASS_LOGITS,
                                            "one row of class logits per utterance, (batch, labels)",
                                            head_prefix="classifier."),
    }


HUBERT = ModelFamily(
    name="hubert",
    config_class=HubertConfig,
    inputs=SPEECH_INPUTS,
    tasks=speech_tasks(HubertModel, HubertForCTC, HubertForSequenceClassification),
    architectures={
        "HubertModel": "feature-extraction",
        "HubertForCTC": "ctc",
        "HubertForSequenceClassification": "sequence-classification",
    },
    hidden_states=HIDDEN_STATES,
)

# wav2vec 2.0: HuBERT's inference network (hubert_export/model/wav2vec2.py says what differs).
WAV2VEC2 = ModelFamily(
    name="wav2vec2",
    config_class=Wav2Vec2Config,
    inputs=SPEECH_INPUTS,
    tasks=speech_tasks(Wav2Vec2Model, Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification),
    architectures={
        "Wav2Vec2Model": "feature-extraction",
        "Wav2Vec2ForCTC": "ctc",
        "Wav2Vec2ForSequenceClassification": "sequence-classification",
        # A pretraining checkpoint's backbone gives features; its quantizer is ignored on load.
        "Wav2Vec2ForPreTraining": "feature-extraction",
    },
    hidden_states=HIDDEN_STATES,
)

# config.json's model_type -> family. One line per family.
FAMILIES: dict[str, ModelFamily] = {"hubert": HUBERT, "wav2vec2": WAV2VEC2}
TASKS: dict[str, TaskSpec] = HUBERT.tasks


def family_of(config: Any) -> ModelFamily:
    """The family a config belongs to (by its model_type)."""
    model_type = getattr(config, "model_type", "hubert")
    if model_type not in FAMILIES:
        raise HubertExportError(f"model_type {model_type!r} is not supported: hubert-export exports "
                                f"{' and '.join(FAMILIES)} checkpoints; point --model at one of those")
    return FAMILIES[model_type]


def infer_task(config: Any) -> str:
    """The task a checkpoint was saved for, from config.json's `architectures`."""
    return family_of(config).infer_task(config)


def output_axes(task: TaskSpec, output_hidden_states: bool, family: ModelFamily = HUBERT) -> dict[str, dict[int, str]]:
    return {s.name: s.axes for s in family.outputs(task, output_hidden_states)}


def frame_axes(task: TaskSpec, output_hidden_states: bool) -> dict[str, int]:
    """Output name -> the axis that counts frames (absent for per-utterance outputs)."""
    return {name: axis for name, axes in output_axes(task, output_hidden_states).items()
            for axis, label in axes.items() if label == "frames"}


class ExportModule(nn.Module):
    """The model as the exported graph sees it: arrays in, the task's outputs (a tuple) out."""

    def __init__(self, model: nn.Module, output_hidden_states: bool = False) -> None:
        super().__init__()
        self.model = model
        self.output_hidden_states = output_hidden_states

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        out = self.model(input_values, attention_mask=attention_mask,
                         output_hidden_states=self.output_hidden_states, return_dict=True)
        logits = getattr(out, "logits", None)
        main = out.last_hidden_state if logits is None else logits
        if self.output_hidden_states:
            return main, torch.stack(out.hidden_states, dim=1)
        return (main,)
