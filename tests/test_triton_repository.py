"""`hubert-export serve --model-repository`: Triton model repositories for the official back ends.

Triton's onnxruntime, openvino and tensorrt_plan back ends are not in PyTriton's bundle, so each
config.pbtxt is checked by parsing it with the protobuf definitions tritonclient ships
(`model_config_pb2`) and comparing it with the manifest; the model files must be the artifact's,
byte for byte.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hubert_export import cli
from hubert_export.artifact import Artifact, sha256_file
from hubert_export.build import DEFAULT_MODEL_DIR, export_artifact
from hubert_export.contract import InputContract
from hubert_export.errors import HubertExportError
from hubert_export.recipes import Shape, default_recipe
from hubert_export.triton_repository import RepositoryOptions, model_config

HAS_CLIENT = importlib.util.find_spec("tritonclient") is not None


def parse(text: str):
    """config.pbtxt through Triton's own ModelConfig message: a field Triton does not know fails here."""
    pytest.importorskip("tritonclient", reason="tritonclient ships model_config_pb2 (the [serve] extra)")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repository-artifacts")
    built = {}
    for target in ("onnx", "openvino"):
        out = root / f"shipped-{target}"
        assert export_artifact(DEFAULT_MODEL_DIR, out, default_recipe(target), latency_repeats=0).passed
        built[target] = out
    return built


def test_repository_layout_and_configs(artifacts, tmp_path, capsys):
    out = tmp_path / "repo"
    argv = ["serve", "--model-repository", str(out), str(artifacts["onnx"]), str(artifacts["openvino"]),
            "--name", "asr_onnx", "--name", "asr_ov", "--max-batch", "8", "--max-queue-delay-ms", "3",
            "--instances", "2"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("wrote") == 2
    for name, target, backend in (("asr_onnx", "onnx", "onnxruntime"), ("asr_ov", "openvino", "openvino")):
        artifact = Artifact.open(artifacts[target])
        model_dir = out / name
        for file in artifact.model_files:  # the artifact's files, unchanged
            assert sha256_file(model_dir / "1" / file.name) == sha256_file(file)
        assert (model_dir / "hubert-export" / "manifest.json").is_file()
        assert (model_dir / "hubert-export" / "vocab.json").is_file()
        if not HAS_CLIENT:
            continue
        config = parse((model_dir / "config.pbtxt").read_text())
        assert config.name == name and config.backend == backend
        assert config.default_model_filename == artifact.model_files[0].name
        assert config.max_batch_size == 8
        inputs = {i.name: (i.data_type, list(i.dims)) for i in config.input}
        assert inputs == {"input_values": (parse_type("TYPE_FP32"), [-1]),
                          "attention_mask": (parse_type("TYPE_INT64"), [-1])}
        outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
        assert outputs == {"logits": (parse_type("TYPE_FP32"), [-1, 32])}  # frames, the manifest's vocabulary
        assert config.dynamic_batching.max_queue_delay_microseconds == 3000
        assert [(g.count, g.kind) for g in config.instance_group] == [(2, parse_kind("KIND_CPU"))]
        assert config.parameters["hubert_export_task"].string_value == "ctc"


def parse_type(name: str) -> int:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Value(name)


def parse_kind(name: str) -> int:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelInstanceGroup.Kind.Value(name)


@pytest.mark.skipif(not HAS_CLIENT, reason="tritonclient ships model_config_pb2 (the [serve] extra)")
def test_tensorrt_and_fixed_shape_configs(artifacts):
    artifact = Artifact.open(artifacts["onnx"])
    manifest = artifact.manifest
    engine = Artifact(artifact.path, manifest.model_copy(update={"target": "tensorrt",
                                                                 "backend": {"files": ["model.plan"]}}))
    config = parse(model_config(engine, "asr_trt", RepositoryOptions(max_batch=64)))
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.max_batch_size == 16  # capped by the artifact's largest batch
    assert config.instance_group[0].kind == parse_kind("KIND_GPU")
    # one fixed shape (an OpenVINO static_shape): no Triton batching, the full shape as dims
    fixed = InputContract.fixed(Shape(batch=2, samples=32_000), attention_mask=True)
    static = Artifact(artifact.path, manifest.model_copy(update={"target": "openvino", "input_contract": fixed}))
    config = parse(model_config(static, "asr_static"))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(i.dims) for i in config.input] == [[2, 32_000], [2, 32_000]]
    assert list(config.output[0].dims) == [2, -1, 32]


def test_refuses_targets_without_a_triton_back_end_and_modified_artifacts(artifacts, tmp_path):
    artifact = Artifact.open(artifacts["onnx"])
    litert = Artifact(artifact.path, artifact.manifest.model_copy(update={"target": "litert"}))
    with pytest.raises(HubertExportError, match="no official Triton back end"):
        model_config(litert, "x")
    tampered = tmp_path / "tampered"
    import shutil

    shutil.copytree(artifacts["onnx"], tampered)
    (tampered / "vocab.json").write_text("{}")
    assert cli.main(["serve", "--model-repository", str(tmp_path / "repo"), str(tampered)]) == 2
    assert not (tmp_path / "repo" / "tampered").exists()
