"""Write tests/data/fairseq: tiny fairseq checkpoints made by real fairseq code, and fairseq's outputs.

The independent reference of `hubert_export.model.fairseq` (tests/model/test_fairseq.py). Run it
with a Python that has fairseq (it builds on Python 3.11 as the `fairseq-fixed` sdist), never the
project's environment:

    python3 -m venv /tmp/fairseq-venv && /tmp/fairseq-venv/bin/pip install torch==2.13.0
    /tmp/fairseq-venv/bin/pip install fairseq-fixed==0.12.3.1 soundfile
    /tmp/fairseq-venv/bin/python scripts/make_fairseq_fixtures.py

Every model is built by fairseq's own task and model classes, saved in the checkpoint format of
fairseq's trainer (or of an older release, where stated), then loaded back with fairseq's
`load_model_ensemble_and_task` — the outputs stored are those of the reloaded model:

  hubert-ctc/       the shipped tiny CTC model (hubert_export/data/tiny-ctc) re-created as a fairseq
                    `hubert_ctc` fine-tuning (layer-norm feature encoder, layer_norm_first, conv bias),
                    dict.ltr.txt, and fairseq's logits and greedy transcripts of tests/data/speech
  hubert-base.pt    random `hubert` pretraining (group norm, label embeddings, final_proj); its cfg
                    pickled as omegaconf objects, as fairseq did before March 2021
  hubert-bn.pt      random `hubert` with a batch-normed positional convolution and no post_extract_proj
  wav2vec2-base.pt  random `wav2vec2` pretraining (quantizer, project_q, final_proj)
  wav2vec2-ctc/     random `wav2vec_ctc` fine-tuning of it, with its dict.ltr.txt
  reference.npz     the input waveform and each model's output (fairseq's), by file name
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file

from fairseq import checkpoint_utils, tasks
from fairseq.data import data_utils
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.models.hubert.hubert import HubertConfig
from fairseq.models.hubert.hubert_asr import HubertCtcConfig
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

# fairseq's loader predates torch 2.6's weights_only default and unpickles its Dictionary objects:
# let it, for the files this script has just written.
_torch_load = torch.load
torch.load = lambda *args, **kwargs: _torch_load(*args, **{**kwargs, "weights_only": False})



@dataclass
class _HubertCtcConfig(HubertCtcConfig):
    """fairseq's HubertEncoder reads cfg.autoregressive, which only its seq2seq config declares (a bug of
    fairseq 0.12): the CTC config gets the field, False, so that fairseq can build and reload the model."""

    autoregressive: bool = False


MODEL_DATACLASS_REGISTRY["hubert_ctc"] = _HubertCtcConfig

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "data" / "fairseq"
TINY_CTC = REPO / "hubert_export" / "data" / "tiny-ctc"
SPEECH = REPO / "tests" / "data" / "speech"
LETTERS = "|ABCDEFGHIJKLMNOPQRSTUVWXYZ'"  # tiny-ctc's vocab.json order after the 4 specials


def write_dictionary(directory: Path, symbols: str, name: str = "dict.ltr.txt") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("".join(f"{s} {1000 - i}\n" for i, s in enumerate(symbols)))


def trainer_state(cfg, model, task, *, as_omegaconf: bool = False) -> dict:
    """The dict fairseq's Trainer.state_dict() saves (cfg as a plain container since March 2021)."""
    return {
        "args": None,
        # omegaconf objects (interpolations unresolved) as before March 2021, a plain container after
        "cfg": (OmegaConf.create(OmegaConf.to_container(cfg, enum_to_str=True)) if as_omegaconf
                else OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)),
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "CtcCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 1.5}, "num_updates": 10}],
        "task_state": task.state_dict(),
        "extra_state": {"metrics": {}, "previous_training_time": 1.0,
                        "train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True}},
        "last_optimizer_state": None,
    }


def save_and_reload(state: dict, path: Path, data_dir: Path):
    checkpoint_utils.torch_persistent_save(state, str(path))
    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(data_dir)})
    return models[0].eval()


def named(dataclass_config, name: str):
    """A structured config with fairseq's registered name in `_name`, as fairseq's hydra entry point makes it."""
    node = OmegaConf.structured(dataclass_config)
    node._name = name
    return node


def full_cfg(model_node, task_node):
    return OmegaConf.create({"common": {"seed": 1, "tpu": False}, "distributed_training": {"ddp_backend": "legacy_ddp"},
                             "model": model_node, "task": task_node})


def fairseq_input(waveform: np.ndarray, normalize: bool) -> torch.Tensor:
    """What fairseq's audio datasets feed the model: float32, layer-normed over the clip when normalize."""
    x = torch.from_numpy(waveform).float()
    if normalize:
        x = F.layer_norm(x, x.shape)
    return x[None]


def pretrained_features(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        result = model.extract_features(x, padding_mask=None, mask=False)
    features = result["x"] if isinstance(result, dict) else result[0]  # wav2vec2 returns a dict, HuBERT a tuple
    return features.numpy()


def ctc_logits(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = model(source=x, padding_mask=None)
        logits = model.get_logits(out)  # T x B x V
    return logits.transpose(0, 1).numpy()


def greedy_letters(logits: np.ndarray, dictionary) -> str:
    """fairseq's greedy CTC decoding: argmax, merge repeats, drop the blank (<s>), letter post-processing."""
    ids = torch.from_numpy(logits.argmax(-1))
    ids = torch.unique_consecutive(ids)
    ids = ids[ids != dictionary.bos()]
    return data_utils.post_process(dictionary.string(ids), "letter")


# ---------------------------------------------------------------------------------------------- models
def hubert_ctc_from_tiny_ctc(outputs: dict) -> None:
    """The shipped trained model as a fairseq hubert_ctc checkpoint: fairseq must transcribe as it does."""
    hf_config = json.loads((TINY_CTC / "config.json").read_text())
    vocab = json.loads((TINY_CTC / "vocab.json").read_text())
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][4:] == list(LETTERS)
    directory = OUT / "hubert-ctc"
    write_dictionary(directory, LETTERS)
    write_dictionary(directory, [str(i) for i in range(8)], "dict.km.txt")
    conv = list(zip(hf_config["conv_dim"], hf_config["conv_kernel"], hf_config["conv_stride"]))
    assert conv == [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
    pretraining = HubertConfig(
        extractor_mode="layer_norm", encoder_layers=hf_config["num_hidden_layers"],
        encoder_embed_dim=hf_config["hidden_size"], encoder_ffn_embed_dim=hf_config["intermediate_size"],
        encoder_attention_heads=hf_config["num_attention_heads"], layer_norm_first=True, conv_bias=True,
        conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] * 2",
        conv_pos=hf_config["num_conv_pos_embeddings"], conv_pos_groups=hf_config["num_conv_pos_embedding_groups"],
        label_rate=50, feature_grad_mult=0.1)
    pretraining_task = HubertPretrainingConfig(data=str(directory), label_dir=str(directory), labels=["km"],
                                               normalize=True, label_rate=50)
    w2v_args = full_cfg(named(pretraining, "hubert"), named(pretraining_task, "hubert_pretraining"))
    task_cfg = named(HubertPretrainingConfig(
        data=str(directory), label_dir=str(directory), labels=["ltr"], fine_tuning=True, normalize=True),
        "hubert_pretraining")
    model_cfg = named(_HubertCtcConfig(w2v_path="/nonexistent/hubert_pretrained.pt", w2v_args=w2v_args,
                                                     normalize=True, data=str(directory), apply_mask=True,
                                                     mask_prob=0.5, final_dropout=0.0, layerdrop=0.1), "hubert_ctc")
    cfg = full_cfg(model_cfg, task_cfg)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    # tiny-ctc's weights under fairseq's names (written here, read back by fairseq's strict loader)
    hf = load_file(str(TINY_CTC / "model.safetensors"))
    fs = {}
    parts = {"attention.k_proj": "self_attn.k_proj", "attention.v_proj": "self_attn.v_proj",
             "attention.q_proj": "self_attn.q_proj", "attention.out_proj": "self_attn.out_proj",
             "layer_norm": "self_attn_layer_norm", "feed_forward.intermediate_dense": "fc1",
             "feed_forward.output_dense": "fc2", "final_layer_norm": "final_layer_norm"}
    for key, tensor in hf.items():
        name = key.replace("hubert.", "w2v_encoder.w2v_model.", 1).replace("lm_head.", "w2v_encoder.proj.")
        name = name.replace("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv.0.weight_g")
        name = name.replace("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv.0.weight_v")
        name = name.replace("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias")
        if ".feature_extractor." in name:
            name = name.replace(".conv.", ".0.").replace(".layer_norm.", ".2.1.")
        name = name.replace("feature_projection.layer_norm", "layer_norm").replace(
            "feature_projection.projection", "post_extract_proj").replace("masked_spec_embed", "mask_emb")
        if ".encoder.layers." in name:
            head, rest = name.split(".encoder.layers.")
            index, rest = rest.split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            name = f"{head}.encoder.layers.{index}.{parts[module]}.{leaf}"
        fs[name] = tensor
    # A fine-tuned HuBERT keeps its pretraining's cluster embeddings (unused by CTC): keep fairseq's.
    fs["w2v_encoder.w2v_model.label_embs_concat"] = model.state_dict()["w2v_encoder.w2v_model.label_embs_concat"]
    model.load_state_dict(fs, strict=True)
    state = trainer_state(cfg, model, task)
    model = save_and_reload(state, directory / "checkpoint_best.pt", directory)
    dictionary = task.target_dictionary
    transcripts = {}
    for clip in sorted(SPEECH.glob("*.flac")):
        waveform, rate = sf.read(clip, dtype="float32")
        assert rate == 16_000
        x = fairseq_input(waveform, normalize=True)
        logits = ctc_logits(model, x)
        transcripts[clip.stem] = greedy_letters(logits[0], dictionary)
        if clip.stem in ("utt00", "utt01"):
            outputs[f"hubert-ctc/{clip.stem}/input"] = x.numpy()
            outputs[f"hubert-ctc/{clip.stem}/logits"] = logits
    (directory / "fairseq_transcripts.json").write_text(json.dumps(transcripts, indent=2) + "\n")
    (directory / "dict.km.txt").unlink()


def hubert_pretrained(outputs: dict, x: torch.Tensor) -> None:
    """Random HuBERT pretraining checkpoints; their cfg as omegaconf objects (hubert-base) or plain data."""
    for name, kwargs, as_omegaconf in (
        ("hubert-base", dict(encoder_embed_dim=48, conv_pos=16), True),
        ("hubert-bn", dict(encoder_embed_dim=32, conv_pos=15, conv_pos_batch_norm=True, activation_fn="gelu_accurate"),
         False),
    ):
        work = OUT / "work" / name
        write_dictionary(work, [str(i) for i in range(12)], "dict.km.txt")
        model_cfg = named(HubertConfig(
            conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 2", encoder_layers=2, encoder_ffn_embed_dim=64,
            encoder_attention_heads=4, conv_pos_groups=4, label_rate=50, final_dim=16, **kwargs), "hubert")
        task_cfg = named(HubertPretrainingConfig(data=str(work), label_dir=str(work), labels=["km"],
                                             label_rate=50, normalize=False), "hubert_pretraining")
        cfg = full_cfg(model_cfg, task_cfg)
        torch.manual_seed(len(name))
        task = tasks.setup_task(cfg.task)
        model = task.build_model(cfg.model)
        with torch.no_grad():  # fairseq initialises biases and norms to constants: make every weight count
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
            for buffer_name, buffer in model.named_buffers():
                if "running_var" in buffer_name:
                    buffer.uniform_(0.5, 2.0)
                elif "running_mean" in buffer_name:
                    buffer.normal_(0, 0.1)
        model = save_and_reload(trainer_state(cfg, model, task, as_omegaconf=as_omegaconf), OUT / f"{name}.pt", work)
        outputs[f"{name}/features"] = pretrained_features(model, x)


def wav2vec2(outputs: dict, x: torch.Tensor) -> None:
    """A random wav2vec 2.0 pretraining checkpoint and a random CTC fine-tuning of it."""
    work = OUT / "work" / "wav2vec2"
    work.mkdir(parents=True, exist_ok=True)
    pretraining = Wav2Vec2Config(
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 2", encoder_layers=2, encoder_embed_dim=48,
        encoder_ffn_embed_dim=64, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, final_dim=16,
        latent_vars=8, latent_groups=2, quantize_targets=True, extractor_mode="default")
    task_cfg = named(AudioPretrainingConfig(data=str(work), normalize=False), "audio_pretraining")
    cfg = full_cfg(named(pretraining, "wav2vec2"), task_cfg)
    torch.manual_seed(3)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model = save_and_reload(trainer_state(cfg, model, task), OUT / "wav2vec2-base.pt", work)
    outputs["wav2vec2-base/features"] = pretrained_features(model, x)

    directory = OUT / "wav2vec2-ctc"
    symbols = "|EOTAHNSRI"
    write_dictionary(directory, symbols)
    ft_task = named(AudioFinetuningConfig(data=str(directory), labels="ltr", normalize=False), "audio_finetuning")
    ctc_cfg = named(Wav2Vec2CtcConfig(w2v_path="/nonexistent/wav2vec_small.pt", w2v_args=cfg,
                                                     normalize=False, data=str(directory), mask_prob=0.65,
                                                     mask_channel_prob=0.25, mask_channel_length=4), "wav2vec_ctc")
    ft_cfg = full_cfg(ctc_cfg, ft_task)
    torch.manual_seed(4)
    task = tasks.setup_task(ft_cfg.task)
    ctc = task.build_model(ft_cfg.model)
    with torch.no_grad():
        for parameter in ctc.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    ctc = save_and_reload(trainer_state(ft_cfg, ctc, task), directory / "checkpoint_last.pt", directory)
    outputs["wav2vec2-ctc/logits"] = ctc_logits(ctc, x)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    waveform = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(8000))
    x = torch.from_numpy(waveform.astype(np.float32))[None]
    outputs["input"] = x.numpy()
    hubert_ctc_from_tiny_ctc(outputs)
    hubert_pretrained(outputs, x)
    wav2vec2(outputs, x)
    np.savez_compressed(OUT / "reference.npz", **outputs)
    import shutil

    shutil.rmtree(OUT / "work")
    print("\n".join(sorted(str(p.relative_to(REPO)) for p in OUT.rglob("*") if p.is_file())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
