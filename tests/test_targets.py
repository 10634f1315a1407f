"""The back-end registry is the only list: a back end registered here, in the test module, is a
target of the CLI, the recipe schema and Artifact without another file touched."""

from __future__ import annotations

import json

import pytest

from hubert_export import cli
from hubert_export.artifact import Artifact
from hubert_export.backends import Backend, BackendBuild, BuildInputs, get_backend
from hubert_export.backends.onnxruntime import OnnxRuntimeRunner
from hubert_export.recipes import Recipe, default_recipe, load_recipe, recipe_json_schema
from hubert_export.targets import TARGETS, TargetSpec, register_target, unregister_target

MODEL = "model.onnxcopy"


class OnnxCopyBackend(Backend):
    """The exported ONNX graph as it is, under a suffix no other back end uses, run by ONNX Runtime."""

    target = "onnx-copy"

    def graph_passes(self, recipe: Recipe) -> list[str]:
        return []

    def build(self, inputs: BuildInputs) -> BackendBuild:
        digest = inputs.graph.write(inputs.out_dir / MODEL)
        return BackendBuild({"files": [MODEL]}, {MODEL: digest} if digest else {})

    def load(self, artifact: Artifact, *, threads: int | None = None, **options) -> OnnxRuntimeRunner:
        return OnnxRuntimeRunner(artifact.path / MODEL, threads=threads or 0, contract=artifact.input_contract)


@pytest.fixture
def onnx_copy():
    register_target(TargetSpec("onnx-copy", f"{__name__}:OnnxCopyBackend", ("fp32",), (".onnxcopy",)))
    yield
    unregister_target("onnx-copy")


def test_a_registered_back_end_builds_from_the_cli_and_checks(onnx_copy, ctc_checkpoint, tmp_path, capsys):
    out = tmp_path / "copy"
    assert cli.main(["--target", "onnx-copy", "--model", str(ctc_checkpoint), "--output", str(out), "--quiet",
                     "--latency-repeats", "0"]) == 0
    artifact = Artifact.open(out)
    assert artifact.target == "onnx-copy" and artifact.model_files == [out / MODEL]
    assert isinstance(get_backend("onnx-copy"), OnnxCopyBackend)
    assert cli.main(["check", str(out), "--quiet", "--latency-repeats", "0"]) == 0
    assert "parity PASS" in capsys.readouterr().out


def test_a_registered_back_end_is_in_the_recipe_schema(onnx_copy, tmp_path):
    assert "onnx-copy" in recipe_json_schema()["properties"]["target"]["enum"]
    assert default_recipe("onnx-copy").precision == "fp32"
    path = tmp_path / "copy.yaml"
    path.write_text("target: ONNX-Copy\nprecision: fp32\n")
    assert load_recipe(path).target == "onnx-copy"


def test_model_files_are_told_by_the_registered_suffixes(onnx_copy, ctc_checkpoint, tmp_path):
    """A manifest without backend.files (older artifacts): model files by the registry's suffixes."""
    from hubert_export.build import export_artifact

    out = tmp_path / "copy"
    export_artifact(ctc_checkpoint, out, default_recipe("onnx-copy"), latency_repeats=0)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["backend"]["files"]
    manifest_path.write_text(json.dumps(manifest))
    assert Artifact.open(out).model_files == [out / MODEL]


def test_an_unregistered_target_is_refused_everywhere(tmp_path, capsys):
    assert "onnx-copy" not in TARGETS
    with pytest.raises(SystemExit):
        cli.main(["--target", "onnx-copy"])
    assert "invalid choice: 'onnx-copy'" in capsys.readouterr().err
    path = tmp_path / "copy.yaml"
    path.write_text("target: onnx-copy\n")
    with pytest.raises(Exception, match="'onnx-copy' is not a target; allowed: onnx, openvino"):
        load_recipe(path)
