"""Back ends: one file each, one registry line each.

Every back-end module exposes the same two functions:

    build(onnx_path: Path, recipe: Recipe, out_dir: Path, progress: Progress) -> dict
        Turn the exported ONNX model into this back end's artifact files inside `out_dir` (a
        temporary directory that is renamed into place only after everything succeeded). Returns the
        back end's section of the manifest (files it wrote, options it used, library versions).

    load(artifact_dir: Path, manifest: dict, **options) -> Runner
        Open a built artifact for inference.

A Runner is a context manager with `input_names`, `output_names` and
`infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]`; the parity harness and the
benchmarks never know which back end produced an output.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hubert_export.errors import HubertExportError

# target name (as given to --target) -> module implementing build/load
BACKENDS: dict[str, str] = {
    "onnx": "hubert_export.backends.onnxruntime",
    "openvino": "hubert_export.backends.openvino",
    "tensorrt": "hubert_export.backends.tensorrt",
}


def get_backend(target: str) -> ModuleType:
    """The module implementing `target`, imported on first use (TensorRT is an optional extra)."""
    if target not in BACKENDS:
        raise HubertExportError(
            f"unknown target {target!r}: choose one of {', '.join(sorted(BACKENDS))}"
        )
    return importlib.import_module(BACKENDS[target])
