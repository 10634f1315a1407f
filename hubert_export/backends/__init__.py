"""Back ends: one file each, one registry line each.

Every back-end module exposes the same three functions:

    graph_passes(recipe: Recipe) -> list[str]
        The graph passes (`hubert_export.passes`) to run on the export before `build`: only those
        measured to help this back end, since each costs build time on a 400 MB graph.

    build(ctx: BuildContext) -> dict
        Turn the exported ONNX model (`ctx.onnx_model()` in memory, or the file `ctx.onnx_path`) into this back end's artifact files inside
        `ctx.out_dir` (a temporary directory renamed into place only after everything succeeded).
        Returns the back end's section of the manifest: `files` (the model files it wrote), the
        options it used, and anything a later `load` needs.

    load(artifact: Artifact, **options) -> Runner
        Open a built artifact for inference (see `hubert_export.runner.Runner`).

The parity harness and the benchmarks never know which back end produced an output.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from hubert_export.audio import FeatureExtractorConfig
from hubert_export.errors import HubertExportError
from hubert_export.model import HubertConfig
from hubert_export.recipes import Recipe
from hubert_export.tasks import TaskSpec

# target name (as given to --target) -> module implementing build/load
BACKENDS: dict[str, str] = {
    "onnx": "hubert_export.backends.onnxruntime",
    "openvino": "hubert_export.backends.openvino",
    "tensorrt": "hubert_export.backends.tensorrt",
    "litert": "hubert_export.backends.litert",
    "executorch": "hubert_export.backends.executorch",
}


@dataclass
class BuildContext:
    """What a back end's build needs to know about the export it starts from."""

    export_path: Path
    out_dir: Path
    recipe: Recipe
    config: HubertConfig
    feature_extractor: FeatureExtractorConfig
    task: TaskSpec
    input_names: list[str]
    output_names: list[str]
    log: Callable[[str], None]
    # Calibration inputs for INT8 (batch-1 input dicts), read lazily: FP32 builds never touch audio.
    calibration_inputs: Callable[[], list[dict[str, np.ndarray]]]
    # The exported graph after the back end's passes, kept in memory: writing 400 MB and reading it
    # back costs seconds that a back end working on the graph itself does not need to pay.
    exported: onnx.ModelProto | None = None
    # Its serialisation when already at hand (no pass changed the exporter's output).
    serialized: bytes | None = None
    # sha256 of artifact files written from bytes in memory (name relative to out_dir), for the
    # manifest: hashed while writing instead of read back afterwards.
    file_sha256: dict[str, str] = field(default_factory=dict)
    # The PyTorch model, for back ends that convert it themselves (`EXPORTS_ONNX = False` in their
    # module: LiteRT, ExecuTorch); those builds skip the ONNX export.
    model: Any = None

    @property
    def onnx_path(self) -> Path:
        """The exported graph as a file (written on first use), for tools that read files."""
        if not self.export_path.exists():
            self.write_export(self.export_path)
        return self.export_path

    def write_export(self, target: Path) -> None:
        """Write the exported graph, as it is, to `target` (a back end that ships it unchanged)."""
        if self.serialized is None:
            from hubert_export.export import save_onnx

            save_onnx(self.onnx_model(), target)
        elif target.parent == self.out_dir:  # an artifact file: the manifest will want its digest
            data = self.serialized
            # hashlib and the write both release the GIL: the digest costs no wall time.
            with ThreadPoolExecutor(max_workers=1) as pool:
                digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
                target.write_bytes(data)
            self.file_sha256[target.name] = digest.result()
        else:
            target.write_bytes(self.serialized)

    def onnx_model(self) -> onnx.ModelProto:
        """The exported graph; treat it as read-only (graph passes copy before they change anything)."""
        if self.exported is None:
            self.exported = (onnx.load_from_string(self.serialized) if self.serialized is not None
                             else onnx.load(str(self.export_path)))
        return self.exported


def get_backend(target: str) -> ModuleType:
    """The module implementing `target`, imported on first use (TensorRT is an optional extra)."""
    if target not in BACKENDS:
        raise HubertExportError(f"unknown target {target!r}: choose one of {', '.join(sorted(BACKENDS))}")
    return importlib.import_module(BACKENDS[target])
