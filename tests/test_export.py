"""The ONNX export: dynamic axes that are really dynamic, names, checker, every task."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hubert_export import HubertExportError, HubertForCTC, HubertForSequenceClassification, HubertModel
from hubert_export.export import export_onnx
from hubert_export.runner import EagerRunner
from hubert_export.tasks import HUBERT

from .conftest import TINY_LARGE, save_reference_checkpoint


def run(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {n: inputs[n] for n in names})))


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def exported_ctc(ctc_checkpoint, tmp_path_factory, request):
    model = HubertForCTC.from_pretrained(ctc_checkpoint)
    path = tmp_path_factory.mktemp("export") / "ctc.onnx"
    export_onnx(model, HUBERT.task("ctc"), path, exporter=request.param)
    assert not model.training  # the exporter must leave the reference in eval mode
    return model, path


def test_names_and_symbolic_axes(exported_ctc):
    _, path = exported_ctc
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_values"]
    assert [o.name for o in graph.output] == ["logits"]
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "samples"]
    out_dims = graph.output[0].type.tensor_type.shape.dim
    assert [out_dims[0].dim_param, out_dims[1].dim_param, out_dims[2].dim_value] == ["batch", "frames", 12]
    onnx.checker.check_model(str(path), full_check=True)
    assert not any(n.op_type == "ReduceL2" for n in graph.node)  # weight norm folded away


@pytest.mark.parametrize("batch, samples", [(1, 400), (1, 1234), (2, 16_000), (3, 33_333), (1, 160_000)])
def test_one_export_serves_every_shape(exported_ctc, batch, samples):
    """Exported at one shape (2 x 16003), correct at the shortest valid input and at other lengths,
    whichever exporter traced it."""
    model, path = exported_ctc
    x = np.random.default_rng(samples).standard_normal((batch, samples)).astype(np.float32)
    expected = EagerRunner(model, HUBERT.task("ctc")).activate().infer({"input_values": x})["logits"]
    got = run(path, {"input_values": x})["logits"]
    assert got.shape == expected.shape == (batch, model.config.num_frames(samples), 12)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_attention_mask_input_and_hidden_states(tmp_path, exporter):
    path = save_reference_checkpoint(tmp_path / "ck", "HubertModel", **TINY_LARGE)
    model = HubertModel.from_pretrained(path)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, HUBERT.task("feature-extraction"), onnx_path, with_attention_mask=True, output_hidden_states=True,
                exporter=exporter)
    x = np.random.default_rng(0).standard_normal((2, 9000)).astype(np.float32)
    mask = np.ones((2, 9000), dtype=np.int64)
    mask[1, 5000:] = 0
    inputs = {"input_values": x, "attention_mask": mask}
    expected = EagerRunner(model, HUBERT.task("feature-extraction"), with_attention_mask=True,
                           output_hidden_states=True).activate().infer(inputs)
    got = run(onnx_path, inputs)
    assert set(got) == {"last_hidden_state", "hidden_states"}
    assert got["hidden_states"].shape == (2, model.config.num_hidden_layers + 1, model.config.num_frames(9000), 32)
    for name in got:
        assert np.abs(got[name] - expected[name]).max() < 1e-4


def test_sequence_classification_export(tmp_path):
    path = save_reference_checkpoint(tmp_path / "ck", "HubertForSequenceClassification", num_labels=3,
                                     use_weighted_layer_sum=True, classifier_proj_size=8, **TINY_LARGE)
    model = HubertForSequenceClassification.from_pretrained(path)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, HUBERT.task("sequence-classification"), onnx_path)
    for n in (400, 7000):
        x = np.random.default_rng(n).standard_normal((2, n)).astype(np.float32)
        expected = EagerRunner(model, HUBERT.task("sequence-classification")).activate().infer({"input_values": x})["logits"]
        got = run(onnx_path, {"input_values": x})["logits"]
        assert got.shape == (2, 3) and np.abs(got - expected).max() < 1e-4


def test_export_leaves_the_model_unchanged(ctc_checkpoint, tmp_path):
    model = HubertForCTC.from_pretrained(ctc_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, HUBERT.task("ctc"), tmp_path / "m.onnx")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_old_opset_is_a_clear_error(ctc_checkpoint, tmp_path):
    with pytest.raises(HubertExportError, match="opset 17 is too old"):
        export_onnx(HubertForCTC.from_pretrained(ctc_checkpoint), HUBERT.task("ctc"), tmp_path / "m.onnx", opset=17)
