"""Trace the canonical model to ONNX with dynamic batch and audio length.

Two exporters, both tested for the same parity at every length:
- "torchscript" (default): torch's tracing exporter, the one Optimum uses. The model is written so
  that tracing stays general (frame counts come from tensor shapes, no Python branching on
  values), and it exports hubert-base in about a third of the dynamo exporter's time.
- "dynamo": `torch.onnx.export(..., dynamo=True)` through `torch.export`, with symbolic batch and
  samples dimensions; the exporter torch develops going forward.
The weight-normed positional convolution is folded into a plain convolution for the export.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from hubert_export.errors import HubertExportError
from hubert_export.model import HubertPreTrainedModel
from hubert_export.tasks import DEFAULT_OPSET, ExportModule, TaskSpec, family_of, output_axes

DEFAULT_EXPORTER = "torchscript"
EXPORTERS = ("torchscript", "dynamo")
# onnx protobufs cannot exceed 2 GB; hubert-xlarge (~3.8 GB in float32) needs external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
EXTERNAL_DATA_SUFFIX = ".data"

log = logging.getLogger(__name__)


@contextlib.contextmanager
def folded_weight_norm(model: HubertPreTrainedModel) -> Iterator[None]:
    """The positional conv as a plain conv for the duration of the export, then restored."""
    backbone = model._backbone()
    original = backbone.encoder.pos_conv_embed.conv
    backbone.encoder.pos_conv_embed.fold_weight_norm()
    try:
        yield
    finally:
        backbone.encoder.pos_conv_embed.conv = original


def export_onnx(
    model: HubertPreTrainedModel,
    task: TaskSpec,
    path: Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    with_attention_mask: bool = False,
    output_hidden_states: bool = False,
    exporter: str = DEFAULT_EXPORTER,
) -> onnx.ModelProto:
    """Export `model` for `task`; returns the checked ONNX model, also written to `path` if given.

    Models under 2 GB stay in memory (no file is written without `path`): writing and re-reading
    400 MB costs seconds on a slow disk.
    """
    return export_onnx_serialized(model, task, path, opset=opset, with_attention_mask=with_attention_mask,
                                  output_hidden_states=output_hidden_states, exporter=exporter)[0]


def export_onnx_serialized(
    model: HubertPreTrainedModel,
    task: TaskSpec,
    path: Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    with_attention_mask: bool = False,
    output_hidden_states: bool = False,
    exporter: str = DEFAULT_EXPORTER,
    check: bool = True,
    parse: bool = True,
) -> tuple[onnx.ModelProto | None, bytes | None]:
    """`export_onnx`, also returning the exporter's own serialisation of the model (None for the
    dynamo exporter and for models over 2 GB): a build that ships the graph unchanged writes those
    bytes instead of serialising 400 MB again.

    For returned bytes, check=False leaves the onnx.checker run to the caller (`check_onnx`), who
    can overlap it with other work, and parse=False returns no ModelProto (parsing 400 MB is wasted
    on a build that only writes them). A model exported through a file is always checked and parsed.
    """
    if opset < 18:
        raise HubertExportError(f"opset {opset} is too old: the exporter needs opset 18 or newer (default {DEFAULT_OPSET})")
    if exporter not in EXPORTERS:
        raise HubertExportError(f"unknown exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    model = model.eval()
    config = model.config
    family = family_of(config)
    wrapper = ExportModule(model, output_hidden_states)
    dummy = family.dummy_inputs(with_attention_mask)
    input_names = list(dummy)
    args = tuple(dummy.values())
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("samples", min=config.receptive_field, max=2**30)
    dims = {"batch": batch, "samples": samples}
    dynamic_shapes = {name: {i: dims[a] for i, a in family.input(name).axes.items()} for name in input_names}
    axes = output_axes(task, output_hidden_states, family)
    input_axes = {name: family.input(name).axes for name in input_names}

    num_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = num_bytes > EXTERNAL_DATA_THRESHOLD
    log.info(f"tracing {type(model).__name__} ({num_bytes / 1e6:.0f} MB of weights) to ONNX opset {opset} ({exporter})")
    # The wrapper is a fresh nn.Module, in training mode unless told: the exporter restores that
    # mode on the whole model afterwards, which would switch dropout on in the eager reference.
    wrapper.eval()
    in_memory = exporter == "torchscript" and not external
    with contextlib.ExitStack() as stack:
        target = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not in_memory:
            target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hubert-export-"))) / "model.onnx"
        with folded_weight_norm(model), torch.no_grad(), _quiet_exporter():
            try:
                if in_memory:
                    buffer = _BytesCapture()
                    _export_torchscript(wrapper, args, buffer, input_axes, axes, opset)
                elif exporter == "torchscript":
                    _export_torchscript(wrapper, args, target, input_axes, axes, opset)
                    # The tracing exporter writes tensors of models over 2 GB as loose files: gather them.
                    save_onnx(onnx.load(str(target)), target)
                else:
                    _export_dynamo(wrapper, args, target, input_axes, axes, opset, external, dynamic_shapes)
            except Exception as exc:  # the exporter raises many types; the user needs one line
                raise HubertExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        if in_memory:
            data = buffer.value()
            if check:
                check_onnx(data)
            if path is not None:
                path.write_bytes(data)
            return (onnx.load_from_string(data) if parse else None), data
        check_onnx(target)
        return onnx.load(str(target)), None


class _BytesCapture:
    """A write-only file that keeps the bytes objects written to it: the exporter writes the
    serialised model in one call, and io.BytesIO would copy those 400 MB twice (in, then out)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))  # no copy when it already is bytes
        return len(data)

    def flush(self) -> None:
        pass

    def value(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


def _export_torchscript(wrapper: torch.nn.Module, args: tuple[torch.Tensor, ...], f: Path | _BytesCapture,
                        input_axes: dict[str, dict[int, str]], axes: dict[str, dict[int, str]], opset: int) -> None:
    dynamic_axes = input_axes | axes
    torch.onnx.export(wrapper, args, f if isinstance(f, _BytesCapture) else str(f), input_names=list(input_axes),
                      output_names=list(axes), dynamic_axes=dynamic_axes, opset_version=opset,
                      do_constant_folding=True, dynamo=False)


def _export_dynamo(wrapper: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path,
                   input_axes: dict[str, dict[int, str]], axes: dict[str, dict[int, str]], opset: int, external: bool,
                   dynamic_shapes: dict[str, dict[int, torch.export.Dim]]) -> None:
    program = torch.onnx.export(
        wrapper, args, input_names=list(input_axes), output_names=list(axes), dynamic_shapes=dynamic_shapes,
        opset_version=opset, dynamo=True, optimize=False, external_data=external, verbose=False,
    )
    _name_axes(program.model, input_axes | axes)
    program.save(str(path), external_data=external)
def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save `model`, its weights in one external `<name>.data` file when they exceed protobuf's 2 GB."""
    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    onnx.save(model, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
              location=path.name + EXTERNAL_DATA_SUFFIX)


def check_onnx(model: Path | bytes) -> None:
    """onnx.checker's full check (shape inference included) of a file or serialised model."""
    try:
        onnx.checker.check_model(model if isinstance(model, bytes) else str(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        name = "the exported model" if isinstance(model, bytes) else model.name
        raise HubertExportError(f"{name} fails onnx.checker: {str(exc).splitlines()[0]}") from exc


def _name_axes(model: "onnx_ir.Model", declared: dict[str, dict[int, str]]) -> None:
    """Give every dynamic axis its declared name (batch, samples, frames) in the graph's I/O."""
    import onnx_ir

    for value in list(model.graph.inputs) + list(model.graph.outputs):
        names = declared.get(value.name, {})
        dims = [names.get(i, dim) for i, dim in enumerate(value.shape)]
        value.shape = onnx_ir.Shape(dims)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter prints progress banners and warnings meant for its own developers.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Null()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass
