"""What an artifact accepts: one input contract per artifact.

    InputContract(min, opt, max, attention_mask)

The back end declares it at build time (`Backend.input_contract(recipe, attention_mask)`, narrowed
by its build when it learns more, as ExecuTorch's exporter does), the manifest records it
(`input_contract`), and every runner enforces it (`InputContract.check`) before it runs anything.

A contract whose min and max are the same shape is a fixed window (LiteRT, an OpenVINO
`static_shape`): the artifact computes that one shape, and the tool's own consumers (the parity
check, `transcribe`) fit shorter audio into it with `runner.WindowRunner`, as a deployment would.
Everything else reads the contract too: which parity cases run, the latency shape (`opt`), which
benchmark shapes fit, what a Ray corpus check may batch.

Torch-free: runners on deployment targets import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hubert_export.errors import HubertExportError
from hubert_export.recipes import Shape, ShapeRange


@dataclass(frozen=True)
class InputContract:
    min: Shape  # the smallest batch and the shortest audio, in 16 kHz samples
    opt: Shape  # the shape the back end optimised for; latency is measured at it
    max: Shape
    attention_mask: bool  # the artifact takes `attention_mask` beside `input_values`

    @classmethod
    def over(cls, shapes: ShapeRange, attention_mask: bool) -> InputContract:
        return cls(shapes.min, shapes.opt, shapes.max, attention_mask)

    @classmethod
    def fixed(cls, shape: Shape, attention_mask: bool) -> InputContract:
        return cls(shape, shape, shape, attention_mask)

    @property
    def shape_range(self) -> ShapeRange:
        return ShapeRange(self.min, self.opt, self.max)

    @property
    def window(self) -> Shape | None:
        """The one shape of a fixed-shape artifact, else None."""
        return self.opt if self.min == self.max else None

    @property
    def input_names(self) -> list[str]:
        return ["input_values", "attention_mask"] if self.attention_mask else ["input_values"]

    def contains(self, batch: int, samples: int) -> bool:
        return self.min.batch <= batch <= self.max.batch and self.min.samples <= samples <= self.max.samples

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """Refuse inputs the artifact was not built for, with a message that says what it accepts."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise HubertExportError(f"missing input {', '.join(missing)}: this artifact takes "
                                    f"{', '.join(self.input_names)}")
        values = inputs["input_values"]
        check_waveforms(values)
        if self.attention_mask and inputs["attention_mask"].shape != values.shape:
            raise HubertExportError(f"attention_mask has shape {list(inputs['attention_mask'].shape)}, "
                                    f"input_values {list(values.shape)}: give both the same (batch, samples) shape")
        batch, samples = values.shape
        window = self.window
        if window is not None and (batch, samples) != (window.batch, window.samples):
            raise HubertExportError(
                f"input of batch {batch} x {samples} samples does not match the one shape this artifact is built "
                f"for ({window.batch} x {window.samples}): pad or split the input to that shape (transcribe "
                "does), or rebuild for another --opt-shape")
        if not self.contains(batch, samples):
            raise HubertExportError(
                f"input of batch {batch} x {samples} samples is outside this artifact's shape range "
                f"(batch {self.min.batch}..{self.max.batch}, samples {self.min.samples}..{self.max.samples}): "
                "split the input or rebuild with a wider --max-shape")

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.min.to_dict(), "opt": self.opt.to_dict(), "max": self.max.to_dict(),
                "attention_mask": self.attention_mask}


def check_waveforms(values: np.ndarray) -> None:
    """Refuse what no artifact can run: anything but a finite (batch, samples) array."""
    if values.ndim != 2:
        raise HubertExportError(f"input_values must be (batch, samples), got shape {list(values.shape)}")
    if not np.isfinite(values).all():
        raise HubertExportError("input_values holds NaN or Inf: clean the audio before inference")


def check_inputs(inputs: dict[str, np.ndarray], contract: InputContract | None, input_names: list[str]) -> None:
    """What every runner calls before it runs: the artifact's contract, or for a bare model file
    outside an artifact (`bench` on a .onnx) the model's own input names and sane waveforms."""
    if contract is not None:
        contract.check(inputs)
        return
    missing = [n for n in input_names if n not in inputs]
    if missing:
        raise HubertExportError(f"missing input {', '.join(missing)}: this model takes {', '.join(input_names)}")
    check_waveforms(inputs["input_values"])
