"""Runners: anything that maps named input arrays to named output arrays.

Every back end's `load()` returns one; so does the eager PyTorch model. The lifecycle is
Polygraphy's: constructing a runner is cheap, `activate()` (or entering `with runner:`) loads or
compiles it and records `load_seconds`, `infer` runs it, `deactivate()` releases it. The parity
harness and the benchmarks only ever call `infer`, so they never know which back end produced an
output, and load time is measured apart from inference time.

This module imports torch only inside `EagerRunner`: the back ends' runners, which `check --golden`
uses on machines without torch, derive from `Runner` here.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from hubert_export.model import HubertPreTrainedModel
    from hubert_export.tasks import TaskSpec


class Runner:
    """Base class: implement `_activate`, `_infer` and `_deactivate`; set `input_names` and
    `output_names` by the end of `_activate` at the latest."""

    name: str = "runner"
    input_names: list[str]
    output_names: list[str]
    is_active: bool = False
    load_seconds: float | None = None  # wall time of the last activate()

    def activate(self) -> Runner:
        """Load or compile what `infer` needs; a no-op when already active."""
        if not self.is_active:
            start = time.perf_counter()
            self._activate()
            self.load_seconds = time.perf_counter() - start
            self.is_active = True
        return self

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active: call activate() or use it in a with block")
        return self._infer(inputs)

    def deactivate(self) -> None:
        """Release what the runner holds (sessions, compiled models, GPU memory)."""
        if self.is_active:
            self._deactivate()
            self.is_active = False

    close = deactivate

    def _activate(self) -> None:
        pass

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()


class EagerRunner(Runner):
    """The canonical PyTorch model, in eval mode: the reference of every parity check.

    The caller's model is left as it is: when another dtype, device or mode is asked for, the
    runner works on a copy.
    """

    def __init__(
        self,
        model: HubertPreTrainedModel,
        task: TaskSpec,
        *,
        with_attention_mask: bool = False,
        output_hidden_states: bool = False,
        dtype: torch.dtype | None = None,  # default float32
        device: str = "cpu",
    ) -> None:
        import torch

        from hubert_export.tasks import family_of

        dtype = torch.float32 if dtype is None else dtype
        self.name = f"eager-{str(dtype).removeprefix('torch.')}"
        self.model = model
        self.output_hidden_states = output_hidden_states
        self.dtype = dtype
        self.device = device
        family = family_of(model.config)
        self.input_names = family.input_names(with_attention_mask)
        self.output_names = [s.name for s in family.outputs(task, output_hidden_states)]

    def _activate(self) -> None:
        import torch

        from hubert_export.tasks import ExportModule

        model = self.model
        converts = any(p.dtype != self.dtype or p.device != torch.device(self.device)
                       for p in model.parameters() if p.is_floating_point())
        if converts or model.training:
            model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        self.module = ExportModule(model, self.output_hidden_states).eval()

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        values = torch.from_numpy(np.ascontiguousarray(inputs["input_values"])).to(self.device, self.dtype)
        mask = None
        if "attention_mask" in self.input_names and "attention_mask" in inputs:
            mask = torch.from_numpy(np.ascontiguousarray(inputs["attention_mask"])).to(self.device)
        with torch.inference_mode():
            outputs = self.module(values, mask)
        return {name: out.float().cpu().numpy() for name, out in zip(self.output_names, outputs)}

    def _deactivate(self) -> None:
        self.module = None


def median_latency(runner: Runner, input_names: list[str], batch: int, samples: int,
                   repeats: int = 3) -> dict[str, Any]:
    """{seconds, shape, compute_seconds}: the median wall time of `repeats` calls of `runner` on a
    deterministic batch x samples input and, for runners that time the device alone (TensorRT's
    `last_timing`), the median without the host<->device copies (None otherwise)."""
    rng = np.random.default_rng(0)
    inputs = {"input_values": rng.standard_normal((batch, samples)).astype(np.float32)}
    if "attention_mask" in input_names:
        inputs["attention_mask"] = np.ones((batch, samples), dtype=np.int64)
    # The parity cases warmed the runner up, but its first calls at a new, longer shape are still
    # slow (hubert-base on ONNX Runtime: 0.99 s, 0.93 s, then 0.78 s).
    runner.infer(inputs)
    times, compute = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.infer(inputs)
        times.append(time.perf_counter() - start)
        timing = getattr(runner, "last_timing", None)
        if timing and "compute" in timing:
            compute.append(timing["compute"])
    return {"seconds": float(np.median(times)), "shape": [batch, samples],
            "compute_seconds": float(np.median(compute)) if compute else None}


class WindowRunner(Runner):
    """A fixed-shape runner (LiteRT) seen as one that takes any batch of up to `samples` samples.

    Rows run `batch` at a time, zero-padded into the window as the feature extractor pads a batch
    (attention_mask 0 there when the model takes one); each output is cut back to the frames of
    the input's length. With an attention mask the real frames are what the model gives unpadded;
    without one (HuBERT-base) the padding is seen by attention and the GroupNorm, as in any padded
    batch of such a model: only inputs of the window's length are then exact (transcribe makes
    every chunk but a recording shorter than the window that long).
    """

    def __init__(self, runner: Runner, batch: int, samples: int, num_frames: Any,
                 frame_axes: dict[str, int]) -> None:
        self.runner = runner
        self.batch, self.samples = batch, samples
        self.num_frames = num_frames  # samples -> frames (HubertConfig.num_frames)
        self.frame_axes = frame_axes  # output name -> its frames axis
        self.name = runner.name
        self.input_names = runner.input_names
        self.output_names = runner.output_names

    def _activate(self) -> None:
        self.runner.activate()

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from hubert_export.errors import HubertExportError

        from hubert_export.contract import check_waveforms

        check_waveforms(inputs["input_values"])
        rows, length = inputs["input_values"].shape
        if length > self.samples:
            raise HubertExportError(
                f"input of {length} samples is longer than the {self.samples}-sample window this artifact was built "
                "for: split it (transcribe does) or rebuild with a longer --opt-shape")
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, rows, self.batch):
            group = {name: inputs[name][start:start + self.batch] for name in self.input_names}
            count = group["input_values"].shape[0]
            outputs = self.runner.infer(fit_inputs(group, self.batch, self.samples))
            for name in self.output_names:
                out = outputs[name][:count]
                axis = self.frame_axes.get(name)
                if axis is not None:
                    out = np.take(out, np.arange(self.num_frames(length)), axis=axis)
                pieces[name].append(out)
        return {name: np.concatenate(parts) for name, parts in pieces.items()}

    def _deactivate(self) -> None:
        self.runner.deactivate()


def fit_inputs(inputs: dict[str, np.ndarray], batch: int, samples: int) -> dict[str, np.ndarray]:
    """A prepared batch cut or zero-padded to exactly batch x samples, for fixed-shape artifacts.

    Padding is what the feature extractor does for a batch (zeros, and attention_mask 0 where the
    model takes one); missing rows repeat the given ones, surplus rows are dropped.
    """
    rows = np.resize(np.arange(inputs["input_values"].shape[0]), batch)
    fitted = {}
    for name, array in inputs.items():
        out = np.zeros((batch, samples), dtype=array.dtype)
        width = min(samples, array.shape[1])
        out[:, :width] = array[rows, :width]
        fitted[name] = out
    return fitted
