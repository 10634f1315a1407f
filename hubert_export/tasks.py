"""What an export is, per task: the model class, input and output names, and their dynamic axes.

One place declares it; the exporter, the manifest, the runners and the parity harness read it.
Names follow the ecosystem (Optimum, ONNX Runtime's speech examples): `input_values`, optional
`attention_mask`, and `last_hidden_state` or `logits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hubert_export.errors import HubertExportError
from hubert_export.model import HubertConfig, HubertForCTC, HubertForSequenceClassification, HubertModel


@dataclass(frozen=True)
class TaskSpec:
    name: str
    model_class: type[nn.Module]
    output_axes: dict[str, dict[int, str]]
    description: str

    @property
    def output_names(self) -> list[str]:
        return list(self.output_axes)


INPUT_AXES: dict[str, dict[int, str]] = {
    "input_values": {0: "batch", 1: "samples"},
    "attention_mask": {0: "batch", 1: "samples"},
}

TASKS: dict[str, TaskSpec] = {
    "feature-extraction": TaskSpec(
        "feature-extraction", HubertModel,
        {"last_hidden_state": {0: "batch", 1: "frames"}},
        "the encoder's last hidden state, (batch, frames, hidden)",
    ),
    "ctc": TaskSpec(
        "ctc", HubertForCTC,
        {"logits": {0: "batch", 1: "frames"}},
        "per-frame token logits for CTC decoding, (batch, frames, vocab)",
    ),
    "sequence-classification": TaskSpec(
        "sequence-classification", HubertForSequenceClassification,
        {"logits": {0: "batch"}},
        "one row of class logits per utterance, (batch, labels)",
    ),
}
# Every hidden state, for users who take their own weighted layer sum: (batch, layers + 1, frames, hidden).
HIDDEN_STATES_AXES = {"hidden_states": {0: "batch", 2: "frames"}}

_TASK_BY_ARCHITECTURE = {
    "HubertModel": "feature-extraction",
    "HubertForCTC": "ctc",
    "HubertForSequenceClassification": "sequence-classification",
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise HubertExportError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]


def infer_task(config: HubertConfig) -> str:
    """The task a checkpoint was saved for, from config.json's `architectures`."""
    for architecture in config.architectures or []:
        if architecture in _TASK_BY_ARCHITECTURE:
            return _TASK_BY_ARCHITECTURE[architecture]
    return "feature-extraction"


def output_axes(task: TaskSpec, output_hidden_states: bool) -> dict[str, dict[int, str]]:
    axes = dict(task.output_axes)
    if output_hidden_states:
        axes.update(HIDDEN_STATES_AXES)
    return axes


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
        main = out.last_hidden_state if isinstance(self.model, HubertModel) else out.logits
        if self.output_hidden_states:
            return main, torch.stack(out.hidden_states, dim=1)
        return (main,)
