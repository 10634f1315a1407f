"""The per-family declaration: what it says matches what the model and the exported graph do."""

import onnx
import pytest

from hubert_export import HubertExportError
from hubert_export.export import export_onnx
from hubert_export.model import HubertConfig, Wav2Vec2Config
from hubert_export.model.config import CONFIG_CLASSES
from hubert_export.model.weights import load_checkpoint_state
from hubert_export.tasks import FAMILIES, HUBERT, TASK_NAMES, WAV2VEC2, family_of, infer_task

from .conftest import TINY_BASE, save_reference_checkpoint


def _graph_shape(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("task_name, architecture, mask, hidden", [
    ("ctc", "HubertForCTC", False, False),
    ("feature-extraction", "HubertModel", True, True),
    ("sequence-classification", "HubertForSequenceClassification", False, False),
    ("ctc", "Wav2Vec2ForCTC", True, True),
])
def test_io_section_matches_the_exported_graph(tmp_path, task_name, architecture, mask, hidden):
    """Names, dtypes, dynamic axes and static sizes in the manifest are the graph's own."""
    checkpoint = save_reference_checkpoint(tmp_path / "ck", architecture, num_labels=5, **TINY_BASE)
    family = FAMILIES["wav2vec2" if architecture.startswith("Wav2Vec2") else "hubert"]
    task = family.task(task_name)
    model = task.model_class.from_pretrained(checkpoint)
    assert type(model).__name__ == architecture
    path = tmp_path / "m.onnx"
    export_onnx(model, task, path, with_attention_mask=mask, output_hidden_states=hidden)
    graph = onnx.load(str(path)).graph
    io = family.io_section(family.input_names(mask), task, hidden, model.config)
    dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}
    for declared, values in ((io["inputs"], graph.input), (io["outputs"], graph.output)):
        assert [d["name"] for d in declared] == [v.name for v in values]
        for d, v in zip(declared, values):
            assert d["dtype"] == dtypes[v.type.tensor_type.elem_type]
            graph_shape = _graph_shape(v)
            # Static dims the graph knows must be the declared ones; symbolic ones carry the declared names.
            assert len(d["shape"]) == len(graph_shape)
            for want, got in zip(d["shape"], graph_shape):
                if isinstance(want, str) or (isinstance(got, int) and got > 0):
                    assert want == got, (d["name"], d["shape"], graph_shape)


@pytest.mark.parametrize("family, architecture", [
    (HUBERT, "HubertForCTC"), (HUBERT, "HubertForSequenceClassification"),
    (WAV2VEC2, "Wav2Vec2ForCTC"), (WAV2VEC2, "Wav2Vec2ForSequenceClassification"),
])
def test_head_prefix_names_the_heads_weights(tmp_path, family, architecture):
    checkpoint = save_reference_checkpoint(tmp_path / "ck", architecture, **TINY_BASE)
    task = family.task(family.architectures[architecture])
    assert task.model_class.__name__ == architecture
    assert any(k.startswith(task.head_prefix) for k in load_checkpoint_state(checkpoint))


def test_every_task_is_declared_once_and_reachable_from_its_architecture():
    for family in FAMILIES.values():
        assert tuple(family.tasks) == TASK_NAMES
        for name, task in family.tasks.items():
            assert family.architectures[task.model_class.__name__] == name
            assert task.model_class.config_class is family.config_class
    assert FAMILIES["hubert"] is HUBERT and FAMILIES["wav2vec2"] is WAV2VEC2


def test_every_family_has_its_config_class_for_torch_free_loading():
    assert set(FAMILIES) == set(CONFIG_CLASSES)
    for model_type, family in FAMILIES.items():
        assert CONFIG_CLASSES[model_type] is family.config_class and family.config_class.model_type == model_type


def test_task_inference_and_unknown_names():
    config = HubertConfig(architectures=["HubertForCTC"])
    assert infer_task(config) == "ctc" and family_of(config) is HUBERT
    assert infer_task(HubertConfig(architectures=["SomethingElse"])) == "feature-extraction"
    config = Wav2Vec2Config(architectures=["Wav2Vec2ForPreTraining"])
    assert infer_task(config) == "feature-extraction" and family_of(config) is WAV2VEC2
    assert infer_task(Wav2Vec2Config(architectures=["Wav2Vec2ForCTC"])) == "ctc"
    with pytest.raises(HubertExportError, match="unknown task 'asr'"):
        HUBERT.task("asr")


def test_dummy_inputs_follow_the_declared_inputs():
    inputs = HUBERT.dummy_inputs(with_attention_mask=True)
    assert list(inputs) == HUBERT.input_names(True) == ["input_values", "attention_mask"]
    assert str(inputs["attention_mask"].dtype) == "torch.int64"
    assert list(HUBERT.dummy_inputs(with_attention_mask=False)) == ["input_values"]
