"""The back-end registry: the one list of targets. One line a back end.

The CLI's `--target` choices, the recipe schema's target names and precisions, `get_backend` and
the artifact's model-file suffixes all read `TARGETS`; adding a back end is its module under
`hubert_export/backends/` and its line here. Stdlib only: the recipe schema imports it, and so does
a torch-free `check --golden`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TargetSpec:
    name: str  # what --target and a recipe's `target` say
    backend: str  # "module:class" implementing hubert_export.backends.Backend, imported on first use
    precisions: tuple[str, ...]  # the first is the default
    model_suffixes: tuple[str, ...]  # the artifact's model files (hashing, sizes, optimum-style lookups)

    @property
    def default_precision(self) -> str:
        return self.precisions[0]


TARGETS: dict[str, TargetSpec] = {spec.name: spec for spec in (
    # ONNX Runtime FP16 runs only on its CUDA / TensorRT execution providers; the back end checks that.
    TargetSpec("onnx", "hubert_export.backends.onnxruntime:OnnxRuntimeBackend", ("fp32", "int8", "fp16"),
               (".onnx", ".onnx.data", ".onnx_data", ".data")),
    TargetSpec("openvino", "hubert_export.backends.openvino:OpenVinoBackend", ("fp32", "fp16", "int8"), (".xml", ".bin")),
    TargetSpec("tensorrt", "hubert_export.backends.tensorrt:TensorRtBackend", ("fp16", "fp32"), (".engine", ".plan")),
    TargetSpec("litert", "hubert_export.backends.litert:LiteRtBackend", ("fp32", "fp16", "int8"), (".tflite",)),
    TargetSpec("executorch", "hubert_export.backends.executorch:ExecuTorchBackend", ("fp32", "int8"), (".pte",)),
)}

# Called after the registry changes (the recipe schema drops what it cached).
_listeners: list[Callable[[], None]] = []


def register_target(spec: TargetSpec) -> None:
    """Add (or replace) a back end: from then on the CLI, recipes, get_backend and Artifact know it."""
    TARGETS[spec.name] = spec
    for listener in _listeners:
        listener()


def unregister_target(name: str) -> None:
    TARGETS.pop(name, None)
    for listener in _listeners:
        listener()


def on_change(listener: Callable[[], None]) -> None:
    _listeners.append(listener)


def model_suffixes() -> tuple[str, ...]:
    """Every registered back end's model-file suffixes."""
    return tuple(dict.fromkeys(s for spec in TARGETS.values() for s in spec.model_suffixes))
