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
import os
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
# onnx protobufs cannot exceed 2 GB; hubert-xlarge (~3.8 GB in float32) needs external data: the
# weights in one `<model>.onnx.data` file beside the graph (`export.external_data`: "auto" above
# this many bytes of weights, "always", "never"). docs/large-models.md follows it through every step.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
EXTERNAL_DATA_SUFFIX = ".data"
EXTERNAL_DATA_POLICIES = ("auto", "always", "never")
_PROTOBUF_LIMIT = 2**31 - 1

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
    external_data: str = "auto",
) -> onnx.ModelProto:
    """Export `model` for `task`; returns the checked ONNX model, also written to `path` if given.

    Models under 2 GB stay in memory (no file is written without `path`): writing and re-reading
    400 MB costs seconds on a slow disk. A model written with external data (`external_data`, see
    `uses_external_data`) to `path` comes back with its weights not read (`load_onnx`).
    """
    return export_onnx_serialized(model, task, path, opset=opset, with_attention_mask=with_attention_mask,
                                  output_hidden_states=output_hidden_states, exporter=exporter,
                                  external_data=external_data)[0]


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def uses_external_data(model: torch.nn.Module, policy: str = "auto") -> bool:
    """Whether `model` is exported with its weights in an external data file: `policy` "always",
    "never" (refused above protobuf's 2 GB), or "auto" (above EXTERNAL_DATA_THRESHOLD bytes)."""
    if policy not in EXTERNAL_DATA_POLICIES:
        raise HubertExportError(f"export.external_data {policy!r} is not one of {', '.join(EXTERNAL_DATA_POLICIES)}")
    size = weight_bytes(model)
    if policy == "never" and size > _PROTOBUF_LIMIT:
        raise HubertExportError(f"the model has {size / 1e9:.2f} GB of weights, beyond the 2 GB an ONNX file can "
                                "hold inside itself: set export.external_data to auto or always")
    return policy == "always" or (policy == "auto" and size > EXTERNAL_DATA_THRESHOLD)


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
    external_data: str = "auto",
) -> tuple[onnx.ModelProto | None, bytes | None]:
    """`export_onnx`, also returning the exporter's own serialisation of the model (None for the
    dynamo exporter and for models over 2 GB): a build that ships the graph unchanged writes those
    bytes instead of serialising 400 MB again.

    For returned bytes, check=False leaves the onnx.checker run to the caller (`check_onnx`), who
    can overlap it with other work, and parse=False returns no ModelProto (parsing 400 MB is wasted
    on a build that only writes them). A model exported through a file is always checked and parsed.

    With external data (`uses_external_data(model, external_data)`) no bytes are returned: the
    model goes to `path` and `<path>.data` (the tracing exporter's loose tensor files gathered
    into that one file, streamed, not loaded), is checked by path, and comes back with its weights
    referenced, not read (`load_onnx`). Without `path` it goes through a temporary file and comes
    back with its weights loaded.
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

    num_bytes = weight_bytes(model)
    external = uses_external_data(model, external_data)
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
                    if external:
                        # The tracing exporter writes the tensors of models over 2 GB as loose files, and
                        # smaller models inline: either way, into one <name>.data file.
                        gather_external_data(target)
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
        if external and path is not None:
            return load_onnx(target), None
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
def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def saves_external_data(model: onnx.ModelProto) -> bool:
    """Whether `save_onnx` writes `model` with its weights in an external data file: it has external
    data already, or its weights exceed EXTERNAL_DATA_THRESHOLD."""
    return (has_external_data(model)
            or sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD)


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save `model`; its weights in one external `<name>.data` file when it has external data
    already (a `load_onnx` model, or one a pass made from it) or they exceed EXTERNAL_DATA_THRESHOLD.

    External data is written by onnx_ir, tensor by tensor from where they are (memory, or the file
    a `load_onnx` model references): the weights are never all in memory twice."""
    if not saves_external_data(model):
        onnx.save(model, str(path))
        return
    import onnx_ir as ir

    ir.save(ir.serde.deserialize_model(model), str(path), external_data=path.name + EXTERNAL_DATA_SUFFIX)


def load_onnx(path: Path) -> onnx.ModelProto:
    """The ONNX file at `path` with its external tensors referenced, not read: their locations made
    absolute, so that graph passes (onnx_ir) read them from the file on demand and `save_onnx`
    streams them into a new file. Such a model is for this process only: never save it with onnx.save."""
    model = onnx.load(str(path), load_external_data=False)
    base = Path(path).resolve().parent
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = str(base / entry.value)
    return model


def gather_external_data(path: Path) -> None:
    """Rewrite the ONNX file at `path` with every tensor (inline, or a loose file beside it) in one
    `<name>.data` file, streamed through onnx_ir (memory-mapped reads), then remove the loose files."""
    import onnx_ir as ir

    proto = onnx.load(str(path), load_external_data=False)
    loose = {entry.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
             for entry in t.external_data if entry.key == "location"}
    del proto
    data_name = path.name + EXTERNAL_DATA_SUFFIX
    loose.discard(data_name)
    staged = path.with_name(f".{path.name}.gathered")
    model = ir.load(str(path))
    ir.save(model, str(staged), external_data=data_name)
    del model
    os.replace(staged, path)
    for name in loose:
        (path.parent / name).unlink(missing_ok=True)


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
