"""manifest.json, typed and versioned: what built an artifact, from what, for which inputs, with
which results.

Only a build writes a manifest (`artifact.write_manifest`, which validates it here first); every
other command reads it with `read_manifest`, which takes any version this tool has written and
returns the current `Manifest`:

    version 1  2026-11-25 .. 2026-12-04. `shape_range` ({min, opt, max}) said what the artifact accepts,
               together with the back end's `static_shape` (OpenVINO's recipe field, LiteRT's
               `backend.built_shape`) and the `io` inputs. Sections added along the way, absent
               from older files: `io` (2c7dc53), `backend.graph_passes` (55e2ee5), `golden`
               (d65a3ab), `isa` and `backend.int8_layers` (917c8d1).
    version 2  `input_contract` (hubert_export/contract.py) replaces `shape_range`: one record of
               the shapes and inputs the artifact accepts, which every runner enforces.

`tests/data/manifests/` holds a manifest written by each of those revisions; the tests read every
one. Sections owned by one part of the tool stay dictionaries typed there: `recipe`
(`Artifact.recipe()` validates it as a `Recipe`), `backend` (each back end's own), `parity` (the
build's summary) and `golden` (hubert_export/golden.py).

Torch-free: `check --golden` reads manifests on deployment targets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from hubert_export.contract import InputContract
from hubert_export.errors import HubertExportError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tool(_Section):
    name: str
    version: str


class Source(_Section):
    checkpoint: str  # the checkpoint directory the build read (or the one a Ray worker's copy came from)
    checkpoint_sha256: str | None = None  # artifact.hash_checkpoint(): configs and weights
    architecture: str | None = None  # the model class, e.g. "HubertForCTC"


class Tensor(_Section):
    name: str
    dtype: str
    shape: list[str | int]  # symbolic names for dynamic axes, e.g. ["batch", "frames", 32]


class Io(_Section):
    inputs: list[Tensor]
    outputs: list[Tensor]
    dynamic_axes: dict[str, dict[str, str]] = Field(default_factory=dict)
    frames: dict[str, int] | None = None  # {stride_samples, receptive_field} of the feature encoder


class FileEntry(_Section):
    sha256: str
    bytes: StrictInt = Field(ge=0)


class Isa(_Section):
    deployment: str  # the CPU instruction set the INT8 arithmetic was chosen for (hubert_export/isa.py)
    build_machine: dict[str, Any]  # the build CPU's ISA, flags and oneDNN cap


class Manifest(_Section):
    manifest_version: Literal[2]
    tool: Tool
    versions: dict[str, str]  # artifact.library_versions() at build time
    created_utc: str
    source: Source
    task: str
    target: str
    precision: str
    recipe: dict[str, Any]  # Recipe.to_dict() of the recipe the artifact was built from
    io: Io | None = None  # None: built before the io section was recorded (version 1)
    input_contract: InputContract
    files: dict[str, FileEntry]  # every file but manifest.json: model files, metadata, reports, golden.npz
    backend: dict[str, Any] = Field(default_factory=dict)  # the back end's section; `files` names the model files
    isa: Isa | None = None  # None: built before the ISA was recorded (version 1)
    parity: dict[str, Any] | None = None  # the build's parity summary (verdict, worst metrics, latency)
    golden: dict[str, Any] | None = None  # the stored golden outputs, or why none were stored

    @property
    def input_names(self) -> list[str]:
        return self.input_contract.input_names

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.io.outputs] if self.io is not None else []

    def frame_axes(self) -> dict[str, int]:
        """Each frame-wise output's frames axis."""
        outputs = self.io.outputs if self.io is not None else []
        return {o.name: o.shape.index("frames") for o in outputs if "frames" in o.shape}

    @property
    def int8_layers(self) -> int | None:
        """How many Conv/MatMul layers compute in INT8 (None: not an INT8 artifact, or built before
        the count was recorded for every back end)."""
        if self.precision != "int8":
            return None
        if "int8_layers" in self.backend:
            return self.backend["int8_layers"]
        quantization = self.backend.get("quantization")
        return quantization.get("quantized_layers") if isinstance(quantization, dict) else None

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def read_manifest(data: Any, where: str) -> Manifest:
    """The manifest in `data` (parsed manifest.json) as the current version, whatever version wrote
    it. `where` names the file in errors, which are one line and say what to do."""
    if not isinstance(data, dict):
        raise HubertExportError(f"{where} is not a JSON object: rebuild the artifact")
    version = data.get("manifest_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise HubertExportError(f"{where} has manifest_version {version!r}, which no hubert-export wrote: "
                                "rebuild the artifact")
    if version > MANIFEST_VERSION:
        raise HubertExportError(f"{where} was written by a newer hubert-export (manifest_version {version}, this "
                                f"one reads 1..{MANIFEST_VERSION}): upgrade hubert-export")
    try:
        return Manifest.model_validate(_from_version_1(data) if version == 1 else data)
    except ValidationError as exc:
        raise HubertExportError(f"{where}: {_problems(exc)} (damaged or hand-edited?): rebuild the artifact") from None


def _problems(exc: ValidationError) -> str:
    """The validation errors in one line: every missing field by name, else the first problem."""
    def at(error: Any) -> str:
        return ".".join(str(part) for part in error["loc"]) or "(top level)"

    missing = [at(e) for e in exc.errors() if e["type"] == "missing"]
    if missing:
        return f"no {', '.join(repr(m) for m in missing)}"
    first = exc.errors()[0]
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{at(first)!r}: {first['msg'].lower()}{more}"


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest in version 2's terms: its input contract gathered from where version 1
    kept it (the shape range, the io inputs, the back end's one compiled shape)."""
    upgraded = {key: value for key, value in data.items() if key != "shape_range"}
    upgraded["manifest_version"] = 2
    recipe = data.get("recipe") if isinstance(data.get("recipe"), dict) else {}
    shapes = data.get("shape_range") or recipe.get("shapes")
    io = data.get("io") if isinstance(data.get("io"), dict) else {}
    # Before `io` was recorded the runners fed `input_values` only.
    attention_mask = any(isinstance(i, dict) and i.get("name") == "attention_mask" for i in io.get("inputs", []))
    static = (recipe.get("openvino") or {}).get("static_shape") if data.get("target") == "openvino" else None
    if isinstance(static, dict):  # compiled for one shape at load time, whatever the range said
        shapes = {"min": static, "opt": static, "max": static}
    if isinstance(shapes, dict):
        upgraded["input_contract"] = {**{k: shapes.get(k) for k in ("min", "opt", "max")},
                                      "attention_mask": attention_mask}
    return upgraded
