"""fairseq checkpoints imported without fairseq (hubert_export/model/fairseq.py).

The reference is fairseq itself: tests/data/fairseq holds tiny checkpoints that real fairseq code
built, saved and loaded back (scripts/make_fairseq_fixtures.py, run in a throwaway environment with
the `fairseq-fixed` sdist), and the outputs fairseq computed with them. hubert-ctc is the shipped
trained model re-created as a fairseq `hubert_ctc` fine-tuning, so its transcripts of the held-out
clips are meaningful; the others are random (pretraining heads, a quantizer, batch-normed
positional convolution, a wav2vec_ctc head). transformers is a second reference: it must load the
imported directory and compute the same logits.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from hubert_export import cli
from hubert_export.build import DEFAULT_MODEL_DIR
from hubert_export.errors import HubertExportError
from hubert_export.hub import resolve_model
from hubert_export.model import load_config
from hubert_export.model.fairseq import (
    eval_layer_spec,
    fairseq_model,
    import_fairseq_checkpoint,
    read_dictionary,
    read_fairseq_checkpoint,
    vocab_json,
)
from hubert_export.model.hubert import HubertPreTrainedModel

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fairseq"
SPEECH = Path(__file__).resolve().parent.parent / "data" / "speech"
HUBERT_CTC = FIXTURES / "hubert-ctc" / "checkpoint_best.pt"
WAV2VEC2_CTC = FIXTURES / "wav2vec2-ctc" / "checkpoint_last.pt"
PRETRAINED = {"hubert-base": FIXTURES / "hubert-base.pt", "hubert-bn": FIXTURES / "hubert-bn.pt",
              "wav2vec2-base": FIXTURES / "wav2vec2-base.pt"}
TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def fairseq_reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def imported(tmp_path_factory) -> dict[str, Path]:
    """Every fixture imported once: name -> Hugging Face checkpoint directory."""
    root = tmp_path_factory.mktemp("fairseq-imported")
    sources = {**PRETRAINED, "hubert-ctc": HUBERT_CTC, "wav2vec2-ctc": WAV2VEC2_CTC}
    return {name: import_fairseq_checkpoint(path, root / name) for name, path in sources.items()}


def _load(directory: Path):
    from hubert_export.model import HubertForCTC, HubertModel, Wav2Vec2ForCTC, Wav2Vec2Model

    classes = {"HubertForCTC": HubertForCTC, "HubertModel": HubertModel, "Wav2Vec2ForCTC": Wav2Vec2ForCTC,
               "Wav2Vec2Model": Wav2Vec2Model}
    return classes[load_config(directory).architectures[0]].from_pretrained(directory)


def _assert_close(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape
    difference = float(np.abs(ours - reference).max())
    # 1e-5 on unit-scale outputs; trained CTC logits reach ~30, where float32's own step is ~4e-6
    assert difference <= TOLERANCE * max(1.0, float(np.abs(reference).max())), difference
    return difference


# ---------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_pretrained_features_equal_fairseq(name, imported, fairseq_reference):
    model = _load(imported[name])
    with torch.no_grad():
        ours = model(torch.from_numpy(fairseq_reference["input"])).last_hidden_state.numpy()
    _assert_close(ours, fairseq_reference[f"{name}/features"])
    assert float(np.abs(fairseq_reference[f"{name}/features"]).max()) > 1.0  # a real signal, not zeros


def test_ctc_logits_equal_fairseq(imported, fairseq_reference):
    model = _load(imported["wav2vec2-ctc"])
    with torch.no_grad():
        ours = model(torch.from_numpy(fairseq_reference["input"])).logits.numpy()
    _assert_close(ours, fairseq_reference["wav2vec2-ctc/logits"])
    for clip in ("utt00", "utt01"):
        model = _load(imported["hubert-ctc"])
        with torch.no_grad():
            ours = model(torch.from_numpy(fairseq_reference[f"hubert-ctc/{clip}/input"])).logits.numpy()
        _assert_close(ours, fairseq_reference[f"hubert-ctc/{clip}/logits"])


def test_fine_tuned_hubert_transcribes_the_test_clips_as_fairseq_does(imported):
    """The shipped model through fairseq's format: the same transcripts as fairseq and as the original."""
    from hubert_export.transcribe import transcribe

    clips = sorted(SPEECH.glob("*.flac"))
    fairseq_transcripts = json.loads((FIXTURES / "hubert-ctc" / "fairseq_transcripts.json").read_text())
    assert sorted(fairseq_transcripts) == [c.stem for c in clips] and len(clips) == 20
    ours = {Path(r.path).stem: r.text for r in transcribe(imported["hubert-ctc"], clips)}
    assert ours == fairseq_transcripts
    original = {Path(r.path).stem: r.text for r in transcribe(DEFAULT_MODEL_DIR, clips)}
    assert ours == original
    # the clips' real transcripts: the model is good, so most words are right (not a blank-only output)
    truth = dict(line.split("\t") for line in (SPEECH / "transcripts.tsv").read_text().splitlines() if line)
    assert sum(ours[k] == truth[k] for k in truth) >= 10


def test_imported_directory_loads_in_transformers(imported, fairseq_reference):
    transformers = pytest.importorskip("transformers")
    directory = imported["hubert-ctc"]
    model = transformers.HubertForCTC.from_pretrained(directory).eval()
    x = torch.from_numpy(fairseq_reference["hubert-ctc/utt00/input"])
    with torch.no_grad():
        logits = model(x).logits.numpy()
    _assert_close(logits, fairseq_reference["hubert-ctc/utt00/logits"])
    tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(directory)
    assert tokenizer.pad_token_id == 0 and tokenizer.convert_ids_to_tokens(4) == "|"
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(directory)
    assert extractor.do_normalize is True  # the fine-tuning task's normalize
    assert json.loads((imported["hubert-base"] / "preprocessor_config.json").read_text())["do_normalize"] is False


def test_imported_directory_files(imported):
    ctc = imported["hubert-ctc"]
    assert {p.name for p in ctc.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json",
                                               "vocab.json", "tokenizer_config.json", "fairseq_import.json"}
    assert json.loads((ctc / "vocab.json").read_text()) == json.loads((DEFAULT_MODEL_DIR / "vocab.json").read_text())
    record = json.loads((ctc / "fairseq_import.json").read_text())
    assert record["fairseq_model"] == "hubert_ctc"
    assert record["pretraining_only_weights_left_out"] == ["w2v_encoder.w2v_model.label_embs_concat"]
    pretrained = {p.name for p in imported["hubert-base"].iterdir()}
    assert "vocab.json" not in pretrained and "preprocessor_config.json" in pretrained
    config = load_config(imported["hubert-bn"])
    assert config.conv_pos_batch_norm and config.hidden_act == "gelu_new" and config.num_conv_pos_embeddings == 15
    assert load_config(imported["wav2vec2-ctc"]).model_type == "wav2vec2"


def test_missing_post_extract_proj_is_the_identity(imported):
    """fairseq has no projection when the convolutions are as wide as the encoder: the import writes I."""
    assert "post_extract_proj.weight" not in read_fairseq_checkpoint(PRETRAINED["hubert-bn"])["model"]
    weight = _load(imported["hubert-bn"]).state_dict()["feature_projection.projection.weight"]
    assert torch.equal(weight, torch.eye(32))


# -------------------------------------------------------------------------- the restricted unpickler
class _Payload:
    """An object whose unpickling runs `call(*args)`: what a malicious checkpoint carries."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _write_checkpoint(path: Path, cfg, state: dict, **extra) -> Path:
    torch.save({"cfg": cfg, "model": state, **extra}, path)
    return path


@pytest.fixture()
def real_parts() -> tuple[dict, dict]:
    checkpoint = read_fairseq_checkpoint(PRETRAINED["hubert-base"])
    return checkpoint["cfg"], checkpoint["model"]


@pytest.mark.parametrize("call", ["os.system", "builtins.exec", "subprocess.call"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(call, tmp_path, real_parts, capsys):
    marker = tmp_path / "code-ran"
    module, name = call.rsplit(".", 1)
    function = getattr(__import__(module), name)
    payload = {"os.system": (f"touch {marker}",), "builtins.exec": (f"open({str(marker)!r}, 'w').close()",),
               "subprocess.call": (["touch", str(marker)],)}[call]
    cfg, state = real_parts
    cfg = json.loads(json.dumps(cfg))
    cfg["model"]["conv_feature_layers"] = _Payload(function, *payload)  # hidden deep inside a real config
    source = _write_checkpoint(tmp_path / "evil.pt", cfg, state)
    out = tmp_path / "out"
    code = cli.main(["import", str(source), str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    # named as the pickle spells it (protocol 2 writes Python 2's module names: commands for subprocess)
    spelled = {"os.system": f"{os.system.__module__}.system", "builtins.exec": "builtins.exec",
               "subprocess.call": "commands.call"}[call]
    assert f"needs {spelled}" in err and "refused" in err and "nothing in it was run" in err
    assert not marker.exists() and not out.exists()
    assert list(tmp_path.iterdir()) == [source]  # no temporary directory left either


def _fake_modules(monkeypatch, module: types.ModuleType, remove: bool = False) -> None:
    """`module` and its parent packages in sys.modules (fairseq is not installed here), or out again."""
    parts = module.__name__.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if remove:
            monkeypatch.delitem(sys.modules, name, raising=False)
        else:
            monkeypatch.setitem(sys.modules, name, module if depth == len(parts) else types.ModuleType(name))


def test_a_fairseq_function_is_refused_by_name(tmp_path, real_parts, monkeypatch):
    """Only data is accepted, even from fairseq's own modules: a function of fairseq is not called."""
    marker = tmp_path / "code-ran"
    fake = types.ModuleType("fairseq.evil")
    fake.run = lambda: marker.touch()
    fake.run.__module__, fake.run.__qualname__ = "fairseq.evil", "run"
    _fake_modules(monkeypatch, fake)
    cfg, state = real_parts
    source = _write_checkpoint(tmp_path / "evil.pt", {**cfg, "extra": _Payload(fake.run)}, state)
    _fake_modules(monkeypatch, fake, remove=True)
    with pytest.raises(HubertExportError, match=r"fairseq\.evil\.run"):
        read_fairseq_checkpoint(source)
    assert not marker.exists()


def test_fairseq_classes_are_names_only(tmp_path, real_parts, monkeypatch):
    """A fairseq class named in the config (omegaconf's metadata names config dataclasses) reads as a
    name; an instance of one, which unpickling would construct, is refused naming the class."""
    fake = types.ModuleType("fairseq.models.fake")

    class FakeConfig:
        def __setstate__(self, state):  # what unpickling an instance would run
            (tmp_path / "code-ran").touch()

    FakeConfig.__module__, FakeConfig.__qualname__ = "fairseq.models.fake", "FakeConfig"
    fake.FakeConfig = FakeConfig
    _fake_modules(monkeypatch, fake)
    cfg, state = real_parts
    named = _write_checkpoint(tmp_path / "named.pt", {**cfg, "object_type": FakeConfig}, state)
    built = FakeConfig()
    built.x = 1
    instance = _write_checkpoint(tmp_path / "instance.pt", {**cfg, "object": built}, state)
    _fake_modules(monkeypatch, fake, remove=True)
    assert read_fairseq_checkpoint(named)["cfg"]["object_type"] is None
    with pytest.raises(HubertExportError, match=r"needs fairseq\.models\.fake\.FakeConfig"):
        read_fairseq_checkpoint(instance)
    assert not (tmp_path / "code-ran").exists()


def test_stand_ins_hold_data_only(tmp_path, real_parts, monkeypatch):
    """omegaconf's classes and fairseq's enums become plain data; omegaconf is never imported."""
    from enum import Enum

    fake = types.ModuleType("fairseq.dataclass.constants")

    class Mode(Enum):
        LAYER = "layer_norm"

    Mode.__module__, Mode.__qualname__ = "fairseq.dataclass.constants", "Mode"
    fake.Mode = Mode
    _fake_modules(monkeypatch, fake)
    cfg, state = real_parts
    cfg = json.loads(json.dumps(cfg))
    cfg["model"]["extractor_mode"] = Mode.LAYER
    source = _write_checkpoint(tmp_path / "enum.pt", cfg, state)
    _fake_modules(monkeypatch, fake, remove=True)
    monkeypatch.delitem(sys.modules, "omegaconf", raising=False)
    checkpoint = read_fairseq_checkpoint(source)
    assert checkpoint["cfg"]["model"]["extractor_mode"] == "layer_norm"
    real = read_fairseq_checkpoint(PRETRAINED["hubert-base"])  # its cfg is pickled omegaconf objects
    assert real["cfg"]["model"]["encoder_embed_dim"] == 48 and real["cfg"]["task"]["labels"] == ["km"]  # a ListConfig
    assert "omegaconf" not in sys.modules


def test_not_a_checkpoint(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip and not a pickle")
    with pytest.raises(HubertExportError, match="not a readable PyTorch checkpoint"):
        read_fairseq_checkpoint(garbage)
    weights_only = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(1)}, weights_only)
    with pytest.raises(HubertExportError, match="not a fairseq training checkpoint"):
        read_fairseq_checkpoint(weights_only)


# ---------------------------------------------------------------------------------- safe evaluator
def test_layer_spec_evaluator():
    assert eval_layer_spec("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)
    assert eval_layer_spec(" [(32, 10, 5)] + 2 * [(32,3,2)]") == [(32, 10, 5), (32, 3, 2), (32, 3, 2)]


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/hubert-export-evaluator-ran')",
    "[(512,10,5)] * 10**9", "[(512,10,5)] * 100000", "[x for x in range(3)]", "[(512,10,5)] + (1,2,3)",
    "[(512,10)]", "[(0,10,5)]", "[]", "[(512,10,5)] - [(512,10,5)]", "lambda: 1", "[(512,10,5)", "[(512.0,10,5)]",
])
def test_layer_spec_evaluator_refuses(text):
    with pytest.raises(HubertExportError, match="conv_feature_layers"):
        eval_layer_spec(text)
    assert not Path("/tmp/hubert-export-evaluator-ran").exists()


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("section, field, value, named", [
    ("model", "layer_type", "conformer", "layer_type"),
    ("model", "pos_conv_depth", 5, "pos_conv_depth"),
    ("model", "crop_seq_to_multiple", 2, "crop_seq_to_multiple"),
    ("model", "activation_fn", "relu_squared", "activation_fn"),
    ("model", "extractor_mode", "weird", "extractor_mode"),
    ("model", "_name", "contentvec", "contentvec"),
    ("model", "_name", "data2vec_audio", "data2vec_audio"),
])
def test_unsupported_computation_is_refused_by_name(section, field, value, named, tmp_path, real_parts):
    cfg, state = real_parts
    cfg = json.loads(json.dumps(cfg))
    cfg[section][field] = value
    source = _write_checkpoint(tmp_path / "variant.pt", cfg, state)
    with pytest.raises(HubertExportError, match=named):
        import_fairseq_checkpoint(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ctc_refusals_and_dictionary(tmp_path):
    checkpoint = read_fairseq_checkpoint(WAV2VEC2_CTC)
    cfg = json.loads(json.dumps(checkpoint["cfg"]))
    cfg["model"]["blank_weight"] = 0.5
    source = _write_checkpoint(tmp_path / "blank.pt", cfg, checkpoint["model"])
    with pytest.raises(HubertExportError, match="blank_weight"):
        import_fairseq_checkpoint(source, tmp_path / "out")
    cfg["model"]["blank_weight"], saved_w2v_args = 0, cfg["model"]["w2v_args"]
    cfg["model"]["w2v_args"] = None
    source = _write_checkpoint(tmp_path / "no-args.pt", cfg, checkpoint["model"])
    with pytest.raises(HubertExportError, match="w2v_args"):
        import_fairseq_checkpoint(source, tmp_path / "out")
    # no dict.ltr.txt beside it and no task_state: the error says what to do
    cfg["model"]["w2v_args"] = saved_w2v_args
    source = _write_checkpoint(tmp_path / "ctc.pt", cfg, checkpoint["model"])
    with pytest.raises(HubertExportError, match="dict.ltr.txt.*--dict"):
        import_fairseq_checkpoint(source, tmp_path / "out")
    # --dict, and a dictionary of the wrong size
    out = import_fairseq_checkpoint(source, tmp_path / "out", dictionary=WAV2VEC2_CTC.parent / "dict.ltr.txt")
    assert json.loads((out / "vocab.json").read_text())["<pad>"] == 0
    with pytest.raises(HubertExportError, match="14 outputs.*--dict"):
        import_fairseq_checkpoint(source, tmp_path / "out2", dictionary=FIXTURES / "hubert-ctc" / "dict.ltr.txt")
    # the target dictionary fairseq pickled in task_state, when there is no file
    source = _write_checkpoint(tmp_path / "ctc-state.pt", cfg, checkpoint["model"],
                               task_state={"target_dictionary": {"symbols": read_dictionary(
                                   WAV2VEC2_CTC.parent / "dict.ltr.txt")}})
    assert json.loads((import_fairseq_checkpoint(source, tmp_path / "out3") / "vocab.json").read_text()) == \
        json.loads((out / "vocab.json").read_text())


def test_dictionary_format(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_text("| 10\nE 9\n<unk> 3 #fairseq:overwrite\nX Y 2\n")
    assert read_dictionary(path) == ["<s>", "<pad>", "</s>", "<unk>", "|", "E", "X Y"]
    assert vocab_json(read_dictionary(path))["<pad>"] == 0
    path.write_text("| 10\n| 9\n")
    with pytest.raises(HubertExportError, match="appears twice"):
        read_dictionary(path)
    path.write_text("|\n")
    with pytest.raises(HubertExportError, match="SYMBOL COUNT"):
        read_dictionary(path)


def test_old_checkpoint_with_argparse_namespace(tmp_path, fairseq_reference):
    """Pre-hydra fairseq saved `args` (a Namespace) and no cfg, with torch < 1.6's serialization
    format: read as plain data, the same network."""
    checkpoint = read_fairseq_checkpoint(PRETRAINED["wav2vec2-base"])
    model = checkpoint["cfg"]["model"]
    args = argparse.Namespace(arch="wav2vec2", task="audio_pretraining", normalize=False, sample_rate=16000,
                              **{k: v for k, v in model.items() if k != "_name"})
    source = tmp_path / "wav2vec_small.pt"
    torch.save({"args": args, "model": checkpoint["model"]}, source, _use_new_zipfile_serialization=False)
    assert not source.read_bytes().startswith(b"PK")  # the legacy format, not a zip
    out = import_fairseq_checkpoint(source, tmp_path / "out")
    with torch.no_grad():
        ours = _load(out)(torch.from_numpy(fairseq_reference["input"])).last_hidden_state.numpy()
    _assert_close(ours, fairseq_reference["wav2vec2-base/features"])


def test_float16_weights_are_written_as_float32(tmp_path, real_parts, fairseq_reference):
    from safetensors import safe_open

    cfg, state = real_parts
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out = import_fairseq_checkpoint(_write_checkpoint(tmp_path / "fp16.pt", cfg, half), tmp_path / "out")
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float32}
    with torch.no_grad():
        ours = _load(out)(torch.from_numpy(fairseq_reference["input"])).last_hidden_state.numpy()
    assert np.abs(ours - fairseq_reference["hubert-base/features"]).max() < 0.05  # float16 rounding only


def test_interpolations_are_resolved(tmp_path):
    """A cfg pickled with omegaconf interpolations left in (`normalize: ${task.normalize}`)."""
    checkpoint = read_fairseq_checkpoint(HUBERT_CTC)
    cfg = json.loads(json.dumps(checkpoint["cfg"]))
    assert cfg["task"]["normalize"] is True
    cfg["model"]["normalize"] = "${task.normalize}"
    model = fairseq_model({**checkpoint, "cfg": cfg}, HUBERT_CTC)
    assert model.normalize is True
    cfg["task"]["normalize"] = False
    assert fairseq_model({**checkpoint, "cfg": cfg}, HUBERT_CTC).normalize is False


# ------------------------------------------------------------------------------------------ key map
def test_every_tensor_used_once(tmp_path, real_parts):
    cfg, state = real_parts
    surplus = _write_checkpoint(tmp_path / "surplus.pt", cfg, {**state, "encoder.layers.2.fc1.weight": torch.zeros(1)})
    with pytest.raises(HubertExportError, match=r"encoder\.layers\.2\.fc1\.weight"):
        import_fairseq_checkpoint(surplus, tmp_path / "out")
    missing = _write_checkpoint(tmp_path / "missing.pt", cfg,
                                {k: v for k, v in state.items() if k != "encoder.layers.1.fc2.bias"})
    with pytest.raises(HubertExportError, match=r"encoder\.layers\.1\.feed_forward\.output_dense\.bias"):
        import_fairseq_checkpoint(missing, tmp_path / "out")
    wrong = dict(state)
    wrong["encoder.layers.0.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(HubertExportError, match=r"encoder\.layers\.0\.fc1\.weight has shape \(3, 3\)"):
        import_fairseq_checkpoint(_write_checkpoint(tmp_path / "wrong.pt", cfg, wrong), tmp_path / "out")
    cfg = json.loads(json.dumps(cfg))
    cfg["model"]["encoder_layers"] = 3  # the config promises a layer the weights lack
    with pytest.raises(HubertExportError, match="missing"):
        import_fairseq_checkpoint(_write_checkpoint(tmp_path / "layers.pt", cfg, state), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- --model file.pt, CLI
def test_model_file_resolves_to_a_cached_import(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBERT_EXPORT_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "ft" / "checkpoint_best.pt"
    source.parent.mkdir()
    shutil.copy(HUBERT_CTC, source)
    shutil.copy(HUBERT_CTC.parent / "dict.ltr.txt", source.parent)
    first = resolve_model(source)
    assert first.parent == tmp_path / "cache" / "fairseq" and (first / "config.json").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(source)) == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    # a different dictionary is a different model: imported again beside the first
    (source.parent / "dict.ltr.txt").write_text((HUBERT_CTC.parent / "dict.ltr.txt").read_text().replace("Z", "z"))
    second = resolve_model(source)
    assert second != first and json.loads((second / "vocab.json").read_text())["z"] == 30
    assert sorted(p.name for p in (tmp_path / "cache" / "fairseq").iterdir()) == sorted([first.name, second.name])


def test_build_and_check_with_a_fairseq_file(tmp_path, monkeypatch, capsys):
    """`--model file.pt` builds, and `check ARTIFACT` finds the imported checkpoint the manifest recorded."""
    monkeypatch.setenv("HUBERT_EXPORT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "artifact"
    assert cli.main(["--target", "onnx", "--model", str(HUBERT_CTC), "--output", str(out), "--quiet",
                     "--latency-repeats", "0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert Path(manifest["source"]["checkpoint"]).parent == tmp_path / "cache" / "fairseq"
    assert cli.main(["check", str(out), "--quiet", "--latency-repeats", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["transcribe", str(out), str(SPEECH / "utt01.flac"), "--quiet"]) == 0
    fairseq_transcripts = json.loads((FIXTURES / "hubert-ctc" / "fairseq_transcripts.json").read_text())
    assert capsys.readouterr().out.strip() == fairseq_transcripts["utt01"]


def test_import_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["import", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for action in cli.COMMANDS["import"][0]()._actions:
        assert action.help and all(option in text for option in action.option_strings)


def test_import_command(tmp_path, capsys):
    out = tmp_path / "hubert-ctc"
    assert cli.main(["import", str(HUBERT_CTC), str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert isinstance(_load(out), HubertPreTrainedModel)
    assert cli.main(["import", str(HUBERT_CTC), str(out), "--quiet"]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["import", str(tmp_path / "nope.pt"), str(tmp_path / "x"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()
