"""The typed manifest: every layout the tool has written reads as the current version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubert_export.artifact import MANIFEST_NAME, Artifact
from hubert_export.backends import get_backend
from hubert_export.contract import InputContract
from hubert_export.errors import HubertExportError
from hubert_export.manifest import MANIFEST_VERSION, Manifest, read_manifest
from hubert_export.recipes import Shape

STORED = Path(__file__).parent / "data" / "manifests"
EXAMPLES = sorted(STORED.glob("*.json"))


def stored(name_part: str) -> dict:
    [path] = [p for p in EXAMPLES if name_part in p.name]
    return json.loads(path.read_text())


def test_there_is_an_example_of_each_version_and_back_end():
    versions = {json.loads(p.read_text())["manifest_version"] for p in EXAMPLES}
    assert versions == set(range(1, MANIFEST_VERSION + 1))
    assert {json.loads(p.read_text())["target"] for p in EXAMPLES} >= {"onnx", "openvino", "litert"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_stored_manifest_reads_as_the_current_version(path: Path, tmp_path: Path):
    data = json.loads(path.read_text())
    manifest = read_manifest(data, path.name)
    assert manifest.manifest_version == MANIFEST_VERSION
    assert (manifest.target, manifest.precision, manifest.task) == (data["target"], data["precision"], data["task"])
    assert set(manifest.files) == set(data["files"])
    assert manifest.input_names == [i["name"] for i in data["io"]["inputs"]]
    recorded = data.get("shape_range") or data["input_contract"]
    assert manifest.input_contract.min == Shape(**recorded["min"]) and manifest.input_contract.max == Shape(**recorded["max"])
    # What the readers take from it: the recipe, the runner's contract, the output names.
    (tmp_path / MANIFEST_NAME).write_text(path.read_text())
    artifact = Artifact.open(tmp_path)
    assert artifact.recipe().target == data["target"]
    if data["target"] != "litert":  # its runner module needs the [litert] extra's venv to import
        runner = get_backend(data["target"]).load(artifact)  # not activated: the model files are not stored
        assert runner.contract == manifest.input_contract
    assert manifest.output_names == [o["name"] for o in data["io"]["outputs"]]
    # The current version round-trips: what a build writes now reads back the same.
    assert read_manifest(json.loads(json.dumps(manifest.to_json_dict())), "again") == manifest


def test_version_1_contracts_come_from_where_version_1_kept_them():
    litert = read_manifest(stored("d597975-litert"), "litert")
    assert litert.input_contract.window == Shape(**stored("d597975-litert")["backend"]["built_shape"])
    onnx = read_manifest(stored("d597975-onnx"), "onnx")
    assert onnx.input_contract.window is None and onnx.input_contract.attention_mask is False
    # An OpenVINO artifact whose recipe compiled one static shape accepted only that shape.
    data = stored("d597975-openvino-fp32")
    data["recipe"]["openvino"]["static_shape"] = {"batch": 1, "samples": 16_000}
    assert read_manifest(data, "static").input_contract == InputContract.fixed(Shape(1, 16_000), False)


def test_older_sections_are_optional_and_newer_ones_typed():
    first = read_manifest(stored("2c7dc53-onnx"), "first")
    assert first.golden is None and first.isa is None and first.int8_layers is None
    latest = read_manifest(stored("d597975-openvino-int8"), "latest")
    assert latest.isa is not None and latest.isa.deployment.startswith(("x86", "arm64", "other"))
    assert latest.int8_layers == latest.backend["quantization"]["quantized_layers"] > 0
    assert latest.frame_axes() == {"logits": 1}


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.pop("target"), "no 'target'"),
        (lambda d: d.pop("input_contract"), "no 'input_contract'"),
        (lambda d: d["files"]["config.json"].update(bytes=-1), "'files.config.json.bytes'"),
        (lambda d: d["input_contract"].update(attention_mask="sometimes"), "'input_contract.attention_mask'"),
        (lambda d: d.update(surprise=1), "'surprise'"),
        (lambda d: d.update(manifest_version=MANIFEST_VERSION + 1), "upgrade hubert-export"),
        (lambda d: d.update(manifest_version="2"), "no hubert-export wrote"),
    ],
)
def test_a_damaged_manifest_is_one_clear_line(edit, words):
    data = json.loads(json.dumps(read_manifest(stored("d597975-onnx"), "x").to_json_dict()))
    edit(data)
    with pytest.raises(HubertExportError, match=words) as info:
        read_manifest(data, "artifact a: manifest.json")
    message = str(info.value)
    assert "\n" not in message and message.startswith("artifact a: manifest.json")
    assert "rebuild the artifact" in message or "upgrade hubert-export" in message


def test_the_manifest_a_build_writes_is_the_current_version(onnx_artifact):
    data = json.loads((onnx_artifact / MANIFEST_NAME).read_text())
    assert data["manifest_version"] == MANIFEST_VERSION and "shape_range" not in data
    manifest = Manifest.model_validate(data)
    assert manifest.input_contract.contains(1, 16_000)
