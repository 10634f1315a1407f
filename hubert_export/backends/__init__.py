"""Back ends: one file each, one registry line each.

Adding a back end is one new module here with a `Backend` subclass, plus its line in
`hubert_export/targets.py` (`TARGETS`), the one list the CLI, the recipe schema and `Artifact` read.
The interface (everything generic code may call; nothing is probed with hasattr):

    class MyBackend(Backend):
        target = "mine"                                   # what --target names

        check_available(recipe) -> None                   # optional: refuse, before any work, a build
                                                          # this machine cannot do (HubertExportError)
        graph_passes(recipe) -> list[str]                 # `hubert_export.passes` to run on the export
                                                          # before `build`: only those measured to help
        input_contract(recipe, attention_mask)            # optional: what the artifact will accept
            -> InputContract                              # (default: the recipe's shape range)
        needs_onnx: bool = True                           # False: `build` converts the PyTorch model
                                                          # itself (`inputs.model`), no ONNX export is made
        build(inputs: BuildInputs) -> BackendBuild        # write the artifact's model files
        load(artifact, *, threads=None, **options) -> Runner

`build` reads a frozen `BuildInputs` (recipe, config, task, I/O names, the exported graph as an
`ExportedGraph`, calibration audio on demand) and writes only inside `inputs.out_dir` (a temporary
directory renamed into place once everything succeeded). It returns a `BackendBuild`: the
manifest's `backend` section (its `files` names the model files) and the SHA-256 of files it
hashed while writing them, and, when the build narrowed what the artifact accepts below what
`input_contract` declared (ExecuTorch's exporter narrows the length range), the narrower contract.
The manifest records the contract (`input_contract`); the runner `load` returns enforces it, and
parity, bench, transcribe and Ray keep to it (hubert_export/contract.py). `load` returns an inactive
`hubert_export.runner.Runner`: `activate()` (or `with runner:`) loads or compiles it and records `load_seconds`; `infer` then runs it. The
parity harness and the benchmarks never know which back end produced an output.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from hubert_export.audio import FeatureExtractorConfig
from hubert_export.contract import InputContract
from hubert_export.errors import HubertExportError
from hubert_export.model.config import HubertConfig
from hubert_export.recipes import Recipe
from hubert_export.targets import TARGETS

if TYPE_CHECKING:  # torch-free at run time: `check --golden` loads back ends on machines without torch
    from hubert_export.artifact import Artifact
    from hubert_export.runner import Runner
    from hubert_export.tasks import TaskSpec

class ExportedGraph:
    """The exported ONNX model after the back end's passes: bytes and/or a parsed model, and a file
    on request. Writing 400 MB and reading it back costs seconds that a back end working on the
    graph in memory does not need to pay, so each form is made only when first asked for.

    A model with external data (over 2 GB, or `export.external_data: always`) has no bytes: its
    parsed form references its weights in the export's `.data` file (`export.load_onnx`), and
    `file()`/`write()` stream them into `<name>.onnx.data` beside the file written
    (`export.save_onnx`). `external_data` says which kind this is."""

    def __init__(self, scratch_path: Path, model: onnx.ModelProto | None = None,
                 serialized: bytes | None = None) -> None:
        if model is None and serialized is None and not scratch_path.exists():
            raise ValueError("an exported graph needs a model, its bytes, or an existing file")
        self._scratch_path = scratch_path
        self._model = model
        self._serialized = serialized

    def model(self) -> onnx.ModelProto:
        """The parsed graph; treat it as read-only (graph passes copy before they change anything)."""
        if self._model is None:
            from hubert_export.export import load_onnx

            self._model = (onnx.load_from_string(self._serialized) if self._serialized is not None
                           else load_onnx(self._scratch_path))
        return self._model

    @property
    def external_data(self) -> bool:
        """Whether the graph's weights live in an external data file (and any file written from it)."""
        if self._serialized is not None:
            return False
        from hubert_export.export import saves_external_data

        return saves_external_data(self.model())

    def file(self) -> Path:
        """The graph as a file in the build's scratch directory (written on first call), for tools that read files."""
        if not self._scratch_path.exists():
            self.write(self._scratch_path, sha256=False)
        return self._scratch_path

    def write(self, target: Path, *, sha256: bool = True) -> str | None:
        """Write the graph as it is to `target`; returns its SHA-256 when asked and computed on the way
        (an artifact file: the manifest wants its digest without reading 400 MB back)."""
        if self._serialized is None:
            from hubert_export.export import save_onnx

            save_onnx(self.model(), target)
            return None
        data = self._serialized
        if not sha256:
            target.write_bytes(data)
            return None
        # hashlib and the write both release the GIL: the digest costs no wall time.
        with ThreadPoolExecutor(max_workers=1) as pool:
            digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
            target.write_bytes(data)
        return digest.result()


@dataclass(frozen=True)
class BuildInputs:
    """What a back end's build reads: everything about the export it starts from."""

    out_dir: Path
    work_dir: Path  # scratch space inside the temporary artifact, removed after the build
    recipe: Recipe
    config: HubertConfig
    feature_extractor: FeatureExtractorConfig
    task: TaskSpec
    input_names: list[str]
    output_names: list[str]
    graph: ExportedGraph | None  # None for back ends that convert the PyTorch model (needs_onnx False)
    contract: InputContract  # what the artifact is to accept: the back end's input_contract
    # Calibration inputs for INT8 (batch-1 input dicts), read on demand: FP32 builds never touch audio.
    calibration_inputs: Callable[[], list[dict[str, np.ndarray]]]
    # The eager model (eval mode), for back ends that convert it themselves (LiteRT, ExecuTorch).
    model: Any = None


@dataclass
class BackendBuild:
    """What a back end's build returns: its manifest section and the digests it computed."""

    section: dict[str, Any]  # the manifest's `backend` section; `files` names the model files
    file_sha256: dict[str, str] = field(default_factory=dict)  # name relative to out_dir -> sha256
    contract: InputContract | None = None  # what the artifact accepts, when narrower than the one declared
    # Goals the build set itself and missed (an accuracy-control drop it could not reach): the
    # artifact is complete, and the build fails with these next to any parity failures.
    failures: list[str] = field(default_factory=list)


class Backend:
    """Base class of every back end; see the module docstring for the contract."""

    target: str = ""
    needs_onnx: bool = True

    def check_available(self, recipe: Recipe) -> None:
        """Refuse, before any work, a build this machine cannot do. Default: every machine can."""

    def graph_passes(self, recipe: Recipe) -> list[str]:
        raise NotImplementedError

    def input_contract(self, recipe: Recipe, attention_mask: bool) -> InputContract:
        """What an artifact built from `recipe` accepts. Default: the recipe's shape range."""
        return InputContract.over(recipe.shapes.range, attention_mask)

    def build(self, inputs: BuildInputs) -> BackendBuild:
        raise NotImplementedError

    def load(self, artifact: Artifact, *, threads: int | None = None, **options: Any) -> Runner:
        raise NotImplementedError


def load_runner(artifact: Artifact, *, threads: int | None = None) -> Runner:
    """The artifact's runner, activated; a fixed-window artifact's (LiteRT, OpenVINO static shapes)
    wrapped in a `WindowRunner`, so that it takes any batch of inputs no longer than its window."""
    from hubert_export.model.config import load_config
    from hubert_export.runner import WindowRunner

    runner = get_backend(artifact.target).load(artifact, threads=threads).activate()
    window = artifact.input_contract.window
    if window is None:
        return runner
    return WindowRunner(runner, window.batch, window.samples, load_config(artifact.path).num_frames,
                        artifact.manifest.frame_axes()).activate()


def get_backend(target: str) -> Backend:
    """The back end implementing `target`, imported on first use (TensorRT is an optional extra)."""
    if target not in TARGETS:
        raise HubertExportError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    module_name, class_name = TARGETS[target].backend.split(":")
    return getattr(importlib.import_module(module_name), class_name)()
