"""ExecuTorch: `model.pte` from `torch.export` -> `to_edge_transform_and_lower` (XNNPACK partitioner).

  fp32  the canonical model (weight norm folded), every op delegated to XNNPACK that it takes
  int8  PT2E quantisation with ExecuTorch's XNNPACK quantiser (symmetric, per-channel INT8 weights),
        activations static and calibrated on audio (`calibration.method: static`, the default) or
        quantised on the fly (`dynamic`)

Shapes: the audio length is dynamic (the recipe's min..max samples), the batch is fixed at the
recipe's opt batch: XNNPACK's reshape takes one dynamic dimension only ("XNNPACK reshape only
supports 1 dynamic dimension", measured with batch and samples both dynamic). The manifest's
`input_contract` records what was built. What torch.export needed, found here:
- `Dim.AUTO` for the length: a named `Dim` fails on guards the attention-mask path adds
  (`1 % frames != 0`, i.e. at least two frames), which the exporter cannot prove over a range;
  AUTO accepts them and narrows the range, and the narrowed range is the one recorded.
- oneDNN switched off while exporting: on fake tensors, torch's convolution picks its oneDNN or
  native kernel by input size, which adds size guards that `to_edge` turns into a narrow range
  around the example length (measured: 25,680..51,359 samples for an example of 48,000).
- memory planned for the largest input (`ConstraintBasedSymShapeEvalPass`): the default plans
  for the example length and longer inputs then fail to load ("Error resizing tensor").

The runner is ExecuTorch's Python runtime (`executorch.runtime`), with XNNPACK's thread pool set to
the recipe's thread count. The extra is `pip install 'hubert-export[executorch]'`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hubert_export.artifact import Artifact
from hubert_export.backends import Backend, BackendBuild, BuildInputs
from hubert_export.contract import InputContract, check_inputs
from hubert_export.errors import HubertExportError
from hubert_export.recipes import Recipe, Shape, ShapeRange
from hubert_export.runner import Runner

MODEL_NAME = "model.pte"
EXTRA_HINT = "pip install 'hubert-export[executorch]'"

log = logging.getLogger(__name__)


class ExecuTorchBackend(Backend):
    target = "executorch"
    needs_onnx = False  # lowered from the PyTorch model

    def check_available(self, recipe: Recipe) -> None:
        import importlib.util

        if importlib.util.find_spec("executorch") is None:
            raise HubertExportError(f"--target executorch needs the [executorch] extra (executorch not installed): "
                                    f"{EXTRA_HINT}")

    def graph_passes(self, recipe: Recipe) -> list[str]:
        return []  # lowered from PyTorch: the ONNX graph passes do not apply

    def input_contract(self, recipe: Recipe, attention_mask: bool) -> InputContract:
        """The recipe's length range at its opt batch; the build narrows the lengths to what the exporter proved."""
        batch = recipe.shapes.opt.batch
        shapes = recipe.shapes
        return InputContract(Shape(batch, shapes.min.samples), Shape(batch, shapes.opt.samples),
                             Shape(batch, shapes.max.samples), attention_mask)

    def build(self, inputs: BuildInputs) -> BackendBuild:
        section, built = _build(inputs)
        return BackendBuild(section, contract=InputContract.over(built, inputs.contract.attention_mask))

    def load(self, artifact: Artifact, *, threads: int | None = None) -> ExecuTorchRunner:
        manifest = artifact.manifest
        options = artifact.recipe().executorch
        return ExecuTorchRunner(
            artifact.path / MODEL_NAME, input_names=manifest.input_names, output_names=manifest.output_names,
            threads=threads if threads is not None else options.num_threads,
            # The runtime refuses shapes outside its planned range with a bare error code: ours says which.
            contract=manifest.input_contract,
        )


def _build(ctx: BuildInputs) -> tuple[dict[str, Any], ShapeRange]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    from hubert_export.export import folded_weight_norm
    from hubert_export.tasks import ExportModule

    recipe = ctx.recipe
    batch = recipe.shapes.opt.batch
    lo, hi = recipe.shapes.min.samples, recipe.shapes.max.samples
    model = ctx.model
    wrapper = ExportModule(model, recipe.export.output_hidden_states).eval()
    example_len = min(max(recipe.shapes.opt.samples, lo), hi)
    args: tuple[torch.Tensor, ...] = (_example(batch, example_len),)
    length = torch.export.Dim.AUTO(min=lo, max=hi)
    dynamic: dict[str, Any] = {"input_values": {1: length}}
    if "attention_mask" in ctx.input_names:
        args += (torch.ones(batch, example_len, dtype=torch.int64),)
        dynamic["attention_mask"] = {1: length}
    section: dict[str, Any] = {"files": [MODEL_NAME], "executorch": _version("executorch"),
                               "delegate": "XnnpackBackend"}
    log.info(f"exporting with torch.export (batch {batch}, {lo}..{hi} samples)")
    with torch.no_grad(), folded_weight_norm(model), torch.backends.mkldnn.flags(enabled=False), _quiet():
        try:
            program = torch.export.export(wrapper, args, dynamic_shapes=dynamic)
            if recipe.precision == "int8":
                program, section["quantization"], section["calibration_samples"] = _quantize(ctx, program, args,
                                                                                               dynamic)
            log.info("lowering to ExecuTorch with the XNNPACK partitioner")
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            built_lo, built_hi = _length_range(lowered.exported_program(), lo, hi)
            executorch_program = lowered.to_executorch(
                ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass()))
        except HubertExportError:
            raise
        except Exception as exc:  # the exporter raises many types; the user needs one line
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise HubertExportError(f"ExecuTorch export failed: {type(exc).__name__}: {first}") from exc
    (ctx.out_dir / MODEL_NAME).write_bytes(executorch_program.buffer)
    opt = min(max(example_len, built_lo), built_hi)
    return section, ShapeRange(Shape(batch, built_lo), Shape(batch, opt), Shape(batch, built_hi))


def _example(batch: int, samples: int) -> torch.Tensor:
    example = torch.zeros(batch, samples)
    example[:, ::7] = 0.5
    return example


def _quantize(ctx: BuildInputs, program: Any, args: tuple[torch.Tensor, ...],
              dynamic: dict[str, Any]) -> tuple[Any, str, int | None]:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    method = ctx.recipe.calibration.method
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=method == "dynamic"))
    prepared = prepare_pt2e(program.module(), quantizer)
    samples = None
    if method == "static":
        batches = ctx.calibration_inputs()
        log.info(f"calibrating INT8 (XNNPACK quantiser, PT2E) on {len(batches)} recordings")
        batch = args[0].shape[0]
        for inputs in batches:
            feed = [torch.from_numpy(np.repeat(inputs[name], batch, axis=0)) for name in ctx.input_names]
            prepared(*feed)
        samples = len(batches)
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, args, dynamic_shapes=dynamic), method, samples


def _length_range(program: Any, lo: int, hi: int) -> tuple[int, int]:
    """The audio-length range the exporter settled on (it may narrow the one asked for)."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == "input_values":
            size = node.meta["val"].shape[1]
            if isinstance(size, int):
                return size, size
            bounds = program.range_constraints.get(size.node.expr)
            if bounds is not None:
                return max(lo, int(bounds.lower)), min(hi, int(bounds.upper))
    return lo, hi


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


class ExecuTorchRunner(Runner):
    """ExecuTorch's runtime (Python bindings) on the program's `forward` method."""

    def __init__(self, model_path: Path, *, input_names: list[str], output_names: list[str], threads: int = 0,
                 contract: InputContract | None = None) -> None:
        self.name = "executorch"
        self.model_path = model_path
        self.input_names = input_names
        self.output_names = output_names
        self.threads = threads
        self.contract = contract

    def _activate(self) -> None:
        try:
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
        except ImportError:
            raise HubertExportError(f"this artifact is an ExecuTorch program and needs the [executorch] extra: "
                                    f"{EXTRA_HINT}") from None
        if self.threads > 0:
            portable_lib._unsafe_reset_threadpool(self.threads)  # XNNPACK's pool is process-wide
        try:
            self.method = Runtime.get().load_program(self.model_path).load_method("forward")
        except (RuntimeError, ValueError) as exc:
            raise HubertExportError(f"ExecuTorch cannot load {self.model_path.name} "
                                    f"({str(exc).splitlines()[0][:200]}): the file is corrupt or was modified; "
                                    "rebuild the artifact") from None

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(inputs, self.contract, self.input_names)
        feed = [torch.from_numpy(np.ascontiguousarray(inputs["input_values"], dtype=np.float32))]
        if "attention_mask" in self.input_names:
            feed.append(torch.from_numpy(np.ascontiguousarray(inputs["attention_mask"], dtype=np.int64)))
        outputs = self.method.execute(feed)
        return {name: out.numpy().astype(np.float32, copy=False) for name, out in zip(self.output_names, outputs)}

    def _deactivate(self) -> None:
        self.method = None
