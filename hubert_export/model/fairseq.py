"""fairseq checkpoints (`.pt`) imported without fairseq: a Hugging Face checkpoint directory out.

Most HuBERT-family checkpoints are fairseq training checkpoints: a pickle holding the model's
state dict and the training config (`cfg`, an omegaconf tree, or `args`, an argparse Namespace
in old ones). Reading them with `torch.load` runs whatever the pickle asks for, and fairseq's own
loader needs fairseq installed. This module reads them with neither, top to bottom:

  1. the restricted unpickler: torch's weights-only unpickler, allowed exactly the classes a
     fairseq checkpoint needs (omegaconf's containers and nodes, argparse.Namespace, fairseq's
     Dictionary and enums), each mapped to an inert stand-in that holds data and has no
     behaviour; types that are only named (typing.Any, builtins, fairseq's config dataclasses in
     omegaconf's metadata) become names that refuse to be called; anything else is refused by
     name, so a pickle that would run code never does;
  2. the safe evaluator for `conv_feature_layers` (a Python expression in the config, which
     fairseq passes to `eval`): integers, tuples, lists, `+` and `*`, nothing else;
  3. the config: our `HubertConfig` / `Wav2Vec2Config` from the checkpoint's own fields; fields
     that change the computation and that this model cannot do are refused by name;
  4. the key map: fairseq's parameter names to ours (transformers' conversion scripts were the
     reference read), every tensor used exactly once;
  5. the writer: config.json, model.safetensors, preprocessor_config.json and, for CTC models, the
     vocabulary from fairseq's `dict.ltr.txt`, written to a temporary directory and renamed; and
     the cache that `--model file.pt` resolves through (hub.resolve_model).

Supported: HuBERT and wav2vec 2.0 pretrained models (`_name: hubert` / `wav2vec2`), their CTC
fine-tunings (`hubert_ctc` / `wav2vec_ctc`: `w2v_encoder.w2v_model.*` + `w2v_encoder.proj`), and
ContentVec checkpoints whose layout is HuBERT's (the "legacy" ones, `_name: hubert`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubert_export.errors import HubertExportError, InternalError
from hubert_export.model.config import HubertConfig, Wav2Vec2Config

log = logging.getLogger(__name__)

DICTIONARY_NAME = "dict.ltr.txt"  # fairseq's letter dictionary, beside a fine-tuned checkpoint
IMPORT_RECORD_NAME = "fairseq_import.json"  # what was imported from where, beside config.json

# ================================================================================ 1. unpickler


class _StandIn:
    """An inert object that a pickle's BUILD fills with its state; it has no methods to run."""

    qualified_name = ""


def _stand_in_class(qualified_name: str) -> type[_StandIn]:
    return type(qualified_name.rsplit(".", 1)[1], (_StandIn,), {"qualified_name": qualified_name})


# omegaconf's containers and nodes (2.0, which fairseq pinned, to 2.3): state dicts with
# `_content` (containers) or `_val` (nodes) and `_metadata` (ignored).
_OMEGACONF_CLASSES = (
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
    "omegaconf.nodes.AnyNode", "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode", "omegaconf.nodes.BooleanNode", "omegaconf.nodes.EnumNode",
    "omegaconf.nodes.BytesNode", "omegaconf.nodes.PathNode", "omegaconf.nodes.UnionNode",
    "omegaconf.nodes.ValueNode", "omegaconf.nodes.InterpolationResultNode",
    "omegaconf.base.Metadata", "omegaconf.base.ContainerMetadata",
)
# fairseq's Dictionary is pickled in `task_state` (a fine-tuning's target dictionary): its symbols.
_STAND_INS = {name: _stand_in_class(name)
              for name in (*_OMEGACONF_CLASSES, "argparse.Namespace", "fairseq.data.dictionary.Dictionary")}


class _TypeReference:
    """What a type named in omegaconf's metadata (`typing.Any`, `dict`, a fairseq config dataclass)
    becomes: a name. A pickle that calls it or builds an instance of it is refused, naming it."""

    def __new__(cls, *args: Any) -> Any:
        if isinstance(cls, _TypeReference):  # NEWOBJ on a reference: `reference.__new__(reference, ...)`
            raise pickle.UnpicklingError(f"refused call of {cls.name}")
        return super().__new__(cls)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> Any:  # REDUCE
        raise pickle.UnpicklingError(f"refused call of {self.name}")


def _plain_dict(*_args: Any) -> dict:
    """collections.defaultdict (omegaconf's flag caches) as a plain dict: its factory is not kept."""
    return {}


def _enum_value(value: Any) -> Any:
    """A fairseq enum member (`ChoiceEnum`) as its value: the members are strings."""
    return value


# fairseq keeps its enums here; an enum member in a pickle is (class, value), read as the value.
_ENUM_MODULES = ("fairseq.dataclass.constants.",)
# Other fairseq names (the config dataclasses omegaconf's metadata names) are allowed as references only.
_REFERENCE_MODULES = ("fairseq.",)
_TYPE_NAMES = ("typing.Any", "builtins.dict", "builtins.list", "builtins.object", "builtins.str", "builtins.int",
               "builtins.float", "builtins.bool", "builtins.bytes", "builtins.tuple", "pathlib.Path")


def _allowed_globals(enum_names: list[str], reference_names: list[str]) -> list[tuple[Any, str]]:
    allowed: list[tuple[Any, str]] = [(cls, name) for name, cls in _STAND_INS.items()]
    allowed += [(_TypeReference(name), name) for name in (*_TYPE_NAMES, *reference_names)]
    allowed.append((_plain_dict, "collections.defaultdict"))
    allowed += [(_enum_value, name) for name in enum_names]
    return allowed


def _refused_global(exc: BaseException) -> str | None:
    """The class or function a pickle asked for that the weights-only unpickler refused."""
    text = str(exc)
    for pattern in (r"GLOBAL ([\w.]+)", r"unrecognized function <[^>]*?([\w.]+)[ >']",
                    r"but got <class '([\w.]+)'>"):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return None


def read_fairseq_checkpoint(path: Path) -> dict[str, Any]:
    """A fairseq checkpoint as plain data: `cfg` or `args` as dicts, `model` as a dict of tensors.

    Nothing from fairseq or omegaconf is imported: their classes become stand-ins. A class or
    function outside the allowed list (a pickle that would run code) is refused, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise HubertExportError(f"{path} does not exist: pass a fairseq checkpoint file (.pt)")
    enum_names: list[str] = []
    reference_names: list[str] = []
    while True:
        try:
            with torch.serialization.safe_globals(_allowed_globals(enum_names, reference_names)):
                raw = _torch_load(path)
            break
        except pickle.UnpicklingError as exc:
            called = re.search(r"refused call of ([\w.]+)", str(exc))
            name = called.group(1) if called else _refused_global(exc)
            if name and "." not in name:  # torch names builtins bare ("exec"): find the full name
                name = next((g for g in _globals_in(path) if g.rsplit(".", 1)[-1] == name), name)
            # a fairseq name met for the first time: allow it (an enum as its value, anything else as
            # an inert reference that refuses to be called) and read again; unknown names are final
            if name and not called and len(enum_names) + len(reference_names) < 64:
                if name.startswith(_ENUM_MODULES) and name not in enum_names:
                    enum_names.append(name)
                    continue
                if name.startswith(_REFERENCE_MODULES) and name not in reference_names + list(_STAND_INS):
                    reference_names.append(name)
                    continue
            if name is None:
                raise _unreadable(path, str(exc).split("WeightsUnpickler error:")[-1]) from None
            raise HubertExportError(
                f"{path} was refused: it needs {name}, which is not plain data (a pickle that would run code, "
                "or a checkpoint that is not fairseq's); nothing in it was run: use the checkpoint from its "
                "original source") from None
        except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
            # TypeError, AttributeError: a pickle that builds an allowed stand-in the wrong way
            raise _unreadable(path, str(exc)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise HubertExportError(
            f"{path} is not a fairseq training checkpoint (no 'model' state dict): pass the .pt file fairseq "
            "wrote, or a Hugging Face checkpoint directory")
    checkpoint = {key: _plain(raw.get(key)) for key in ("cfg", "args", "task_state")}
    checkpoint["model"] = raw["model"]
    bad = [key for key, value in raw["model"].items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise HubertExportError(f"{path}: the model state holds non-tensors ({', '.join(map(str, bad[:5]))}): "
                                "pass a fairseq model checkpoint")
    return checkpoint


def _unreadable(path: Path, detail: str) -> HubertExportError:
    first = next((line.strip() for line in detail.splitlines() if line.strip()), "unknown format")[:200]
    return HubertExportError(f"{path} is not a readable PyTorch checkpoint ({first}); nothing in it was run: the "
                             "file is truncated or corrupt, or not a checkpoint: download it again")


def _globals_in(path: Path) -> list[str]:
    """The globals a (zip-format) checkpoint's pickle names, read without running it; [] for other formats."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a legacy or damaged file: the refusal keeps torch's own name
        return []


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format


def _plain(value: Any) -> Any:
    """Stand-ins to plain data: containers to dicts and lists, nodes to their values."""
    if isinstance(value, _StandIn):
        state = vars(value)
        if value.qualified_name in ("argparse.Namespace", "fairseq.data.dictionary.Dictionary"):
            return {str(k): _plain(v) for k, v in state.items()}
        if value.qualified_name.startswith("omegaconf.base."):
            return None  # metadata: types and flags, no values
        if "_content" in state:
            return _plain(state["_content"])
        return _plain(state.get("_val"))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, _TypeReference):
        return None
    return value


# =========================================================================== 2. safe evaluator

_MAX_SPEC_ITEMS = 4096  # far more convolutions than any model has; bounds `[(1,1,1)] * 10**9`


def eval_layer_spec(text: str) -> list[tuple[int, ...]]:
    """fairseq's `conv_feature_layers` ("[(512,10,5)] + [(512,3,2)] * 4 + ...") without `eval`.

    Integers, tuples, lists, `+` and `*`; anything else (a name, a call, an attribute) is an error.
    """
    def bad(why: str) -> HubertExportError:
        return HubertExportError(f"conv_feature_layers {text!r} is not a list of (dim, kernel, stride) "
                                 f"tuples ({why}): the checkpoint's config is damaged")

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            items = [value(e) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                if type(left) is not type(right):
                    raise bad(f"cannot add {type(left).__name__} and {type(right).__name__}")
                result = left + right
            else:
                if isinstance(left, int) and isinstance(right, int):
                    result = left * right
                else:
                    sequence, count = (left, right) if isinstance(right, int) else (right, left)
                    if not isinstance(count, int) or isinstance(sequence, int) or not 0 <= count <= _MAX_SPEC_ITEMS:
                        raise bad("a list may only be repeated a small whole number of times")
                    result = sequence * count
            if not isinstance(result, int) and len(result) > _MAX_SPEC_ITEMS:
                raise bad("too many items")
            return result
        raise bad(f"{type(node).__name__} is not allowed: only integers, tuples, lists, + and *")

    if not isinstance(text, str) or len(text) > 10_000:
        raise bad("not a short string")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise bad("not an expression") from None
    layers = value(tree.body)
    if not isinstance(layers, list) or not layers or not all(
            isinstance(t, tuple) and len(t) == 3 and all(isinstance(v, int) and v > 0 for v in t) for t in layers):
        raise bad("expected a non-empty list of three positive integers each")
    return layers


# ==================================================================================== 3. config

HUBERT_NAMES = ("hubert",)
WAV2VEC2_NAMES = ("wav2vec2",)
CTC_NAMES = ("hubert_ctc", "wav2vec_ctc")

# Model names that are fairseq relatives with a different network, and what differs.
_UNSUPPORTED_MODELS = {
    "contentvec": "ContentVec's full checkpoints condition the last layers on a speaker embedding; its legacy "
                  "checkpoints (checkpoint_best_legacy_*.pt, `_name: hubert`) have HuBERT's layout and import",
    "data2vec_audio": "data2vec's positional embedding is a stack of layer-normed convolutions",
    "wav2vec": "wav2vec 1.0 is a convolutional model with no transformer",
    "wav2vec2_seq2seq": "a sequence-to-sequence decoder after the encoder", "hubert_seq2seq": "a sequence-to-sequence decoder",
    "wav2vec2_laser": "a sentence-embedding head", "data2vec_multi": "data2vec 2.0's multi-modal encoder",
}

# fairseq's activation names -> transformers'. fairseq's "gelu" is the exact (erf) GELU,
# "gelu_accurate" the tanh approximation (transformers' gelu_new), "swish" x*sigmoid(x).
_ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new", "relu": "relu", "tanh": "tanh",
                "linear": "linear", "swish": "swish"}
_EXTRACTOR_MODES = {"default": "group", "layer_norm": "layer"}
_DEFAULT_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"

# Fields read from the config (everything else is training bookkeeping, ignored):
# the pretrained model's architecture ...
ARCHITECTURE_FIELDS = ("conv_feature_layers", "extractor_mode", "conv_bias", "encoder_layers", "encoder_embed_dim",
                       "encoder_ffn_embed_dim", "encoder_attention_heads", "activation_fn", "layer_norm_first",
                       "conv_pos", "conv_pos_groups", "conv_pos_batch_norm")
# ... the task's input normalisation (`normalize`), and training fields carried into config.json
# for fine-tuning with transformers (they do not change inference): dropouts, layerdrop,
# SpecAugment (mask_*), feature_grad_mult (which only scales gradients, so it is not written).


@dataclass
class FairseqModel:
    """What a fairseq checkpoint holds, in this package's terms."""

    name: str  # fairseq's model name (`_name` / `arch`): hubert, wav2vec2, hubert_ctc, wav2vec_ctc
    config: HubertConfig
    ctc: bool
    normalize: bool
    sampling_rate: int
    state: dict[str, torch.Tensor]  # fairseq's parameter names
    vocabulary: list[str] | None = None  # the CTC head's output symbols, fairseq's order
    ignored: list[str] = field(default_factory=list)  # pretraining-only weights, not imported

    @property
    def family(self) -> str:
        return self.config.model_type


def _sections(checkpoint: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, task config) of a checkpoint or of a fine-tuned model's `w2v_args`."""
    cfg, args = checkpoint.get("cfg"), checkpoint.get("args")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"], cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    if isinstance(args, dict):  # pre-hydra fairseq: one flat Namespace
        return {"_name": args.get("arch"), **args}, args
    raise HubertExportError(f"{where} carries no model config (neither cfg.model nor args): it is not a fairseq "
                            "training checkpoint, or its config was stripped; pass the original .pt file")


def _resolve(value: Any, roots: list[dict[str, Any]]) -> Any:
    """An omegaconf interpolation left in the pickle (`${task.normalize}`), looked up in the config."""
    if not (isinstance(value, str) and value.startswith("${") and value.endswith("}")):
        return value
    for root in roots:
        node: Any = root
        for part in value[2:-1].split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return _resolve(node, roots)
    return None


def _refuse_unsupported(model: dict[str, Any], name: str, source: Path) -> None:
    """Fields that change the computation in ways this model does not: refused by name."""
    def refuse(field_name: str, value: Any, what: str) -> None:
        raise HubertExportError(
            f"{source}: {field_name}={value!r} ({what}) is not supported: hubert-export imports fairseq HuBERT and "
            "wav2vec 2.0 checkpoints with the standard transformer encoder")

    layer_type = model.get("layer_type", "transformer")
    if layer_type not in (None, "transformer"):
        refuse("layer_type", layer_type, "conformer or adapter layers instead of transformer layers")
    if (model.get("pos_conv_depth") or 1) > 1:
        refuse("pos_conv_depth", model["pos_conv_depth"], "a stack of positional convolutions, as data2vec has")
    if (model.get("crop_seq_to_multiple") or 1) != 1:
        refuse("crop_seq_to_multiple", model["crop_seq_to_multiple"], "features cropped to a multiple of frames")
    if model.get("conv_pos_batch_norm") and name in WAV2VEC2_NAMES:
        refuse("conv_pos_batch_norm", True, "a batch-normed positional convolution, in a wav2vec 2.0 model")
    activation = model.get("activation_fn", "gelu")
    if activation not in _ACTIVATIONS:
        refuse("activation_fn", activation, "an activation transformers' models do not have")
    mode = model.get("extractor_mode", "default")
    if mode not in _EXTRACTOR_MODES:
        refuse("extractor_mode", mode, "a feature encoder normalisation other than group or layer norm")


def fairseq_model(checkpoint: dict[str, Any], source: Path, dictionary: Path | None = None) -> FairseqModel:
    """The config (and the CTC vocabulary) of a checkpoint read by `read_fairseq_checkpoint`."""
    top_model, top_task = _sections(checkpoint, str(source))
    name = str(top_model.get("_name") or "")
    ctc = name in CTC_NAMES
    if ctc:
        if (top_model.get("blank_weight") or 0) != 0:
            raise HubertExportError(
                f"{source}: blank_weight={top_model['blank_weight']!r} (a constant added to the CTC blank's logit) "
                "is not supported: export a checkpoint fine-tuned with blank_weight 0")
        w2v_args = top_model.get("w2v_args")
        if not isinstance(w2v_args, dict):
            raise HubertExportError(
                f"{source} does not carry its pretrained model's config (w2v_args is empty; fairseq would read it "
                f"from w2v_path={top_model.get('w2v_path')!r}): not supported, pass a checkpoint saved with w2v_args")
        # a whole pretraining config (model, task, ...), or a flat Namespace in pre-hydra checkpoints
        wrapped = {"cfg": w2v_args} if isinstance(w2v_args.get("model"), dict) else {"args": w2v_args}
        encoder, encoder_task = _sections(wrapped, f"{source} (w2v_args)")
        top_roots = [checkpoint.get("cfg") or checkpoint.get("args") or {}, w2v_args]
        encoder_roots = top_roots[::-1]
        train = top_model  # fine-tuning's dropouts and masking override the pretraining's
    else:
        encoder, encoder_task, train = top_model, top_task, top_model
        top_roots = encoder_roots = [checkpoint.get("cfg") or checkpoint.get("args") or {}]
    encoder_name = str(encoder.get("_name") or "")
    if encoder_name not in HUBERT_NAMES + WAV2VEC2_NAMES:
        why = _UNSUPPORTED_MODELS.get(encoder_name, "not a HuBERT or wav2vec 2.0 model")
        raise HubertExportError(
            f"{source}: fairseq model {repr(encoder_name or name) if encoder_name or name else '(no _name or arch)'} "
            f"is not supported ({why}): "
            "hubert-export imports hubert, wav2vec2, hubert_ctc and wav2vec_ctc checkpoints")
    _refuse_unsupported(encoder, encoder_name, source)

    def get(section: dict[str, Any], key: str, default: Any) -> Any:
        # an interpolation resolves in the config tree the section belongs to
        roots = encoder_roots if section is encoder or section is encoder_task else top_roots
        value = _resolve(section.get(key), roots)
        return default if value is None else value

    layers = eval_layer_spec(get(encoder, "conv_feature_layers", _DEFAULT_CONV_LAYERS))
    conv_dim, conv_kernel, conv_stride = (tuple(t[i] for t in layers) for i in range(3))
    mask_prob = float(get(train, "mask_prob", 0.0))
    mask_channel_prob = float(get(train, "mask_channel_prob", 0.0))
    kwargs: dict[str, Any] = dict(
        hidden_size=int(get(encoder, "encoder_embed_dim", 768)),
        num_hidden_layers=int(get(encoder, "encoder_layers", 12)),
        num_attention_heads=int(get(encoder, "encoder_attention_heads", 12)),
        intermediate_size=int(get(encoder, "encoder_ffn_embed_dim", 3072)),
        hidden_act=_ACTIVATIONS[get(encoder, "activation_fn", "gelu")],
        feat_extract_norm=_EXTRACTOR_MODES[get(encoder, "extractor_mode", "default")],
        feat_extract_activation="gelu",  # fairseq's feature encoder always uses nn.GELU
        conv_dim=conv_dim, conv_kernel=conv_kernel, conv_stride=conv_stride,
        conv_bias=bool(get(encoder, "conv_bias", False)),
        do_stable_layer_norm=bool(get(encoder, "layer_norm_first", False)),
        num_conv_pos_embeddings=int(get(encoder, "conv_pos", 128)),
        num_conv_pos_embedding_groups=int(get(encoder, "conv_pos_groups", 16)),
        layer_norm_eps=1e-5,  # fairseq's LayerNorm default
        hidden_dropout=float(get(train, "dropout", 0.1)),
        attention_dropout=float(get(train, "attention_dropout", 0.1)),
        activation_dropout=float(get(train, "activation_dropout", 0.0)),
        feat_proj_dropout=float(get(train, "dropout_input", 0.0)),
        final_dropout=float(get(train, "final_dropout", 0.0)),
        layerdrop=float(get(train, "layerdrop" if ctc else "encoder_layerdrop", 0.0)),
        apply_spec_augment=bool(get(train, "apply_mask", True)) if ctc else True,
        mask_time_prob=mask_prob, mask_time_length=int(get(train, "mask_length", 10)),
        mask_feature_prob=mask_channel_prob, mask_feature_length=int(get(train, "mask_channel_length", 10)),
    )
    if encoder_name in HUBERT_NAMES:
        kwargs["conv_pos_batch_norm"] = bool(get(encoder, "conv_pos_batch_norm", False))
    vocabulary = None
    if ctc:
        vocabulary = _ctc_vocabulary(checkpoint, source, dictionary)
        # fairseq's CTC blank is the dictionary's <s> (index 0): transformers names it <pad> and
        # uses pad_token_id as the blank, so ids stay where they are and only the names move.
        kwargs.update(vocab_size=len(vocabulary), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      ctc_zero_infinity=True, ctc_loss_reduction="sum")
    config_class = HubertConfig if encoder_name in HUBERT_NAMES else Wav2Vec2Config
    architecture = ("HubertForCTC" if ctc else "HubertModel") if config_class is HubertConfig else (
        "Wav2Vec2ForCTC" if ctc else "Wav2Vec2Model")
    try:
        config = config_class(**kwargs, architectures=[architecture])
    except (TypeError, ValueError) as exc:
        raise HubertExportError(f"{source}: the checkpoint's config does not make a valid model ({exc})") from None
    normalize = get(top_model, "normalize", None) if ctc else None
    if normalize is None:
        normalize = get(top_task, "normalize", None)
    if normalize is None:
        normalize = get(encoder_task, "normalize", False)
    sampling_rate = int(get(encoder_task, "sample_rate", 16_000))
    return FairseqModel(name=name or encoder_name, config=config, ctc=ctc, normalize=bool(normalize),
                        sampling_rate=sampling_rate, state=checkpoint["model"], vocabulary=vocabulary)


def _ctc_vocabulary(checkpoint: dict[str, Any], source: Path, dictionary: Path | None) -> list[str]:
    """The CTC head's symbols: `dictionary`, else dict.ltr.txt beside the checkpoint, else the target
    dictionary fairseq pickled in the checkpoint's task_state (what the model was fine-tuned with)."""
    path = dictionary or _dictionary_beside(source)
    if path is not None:
        return read_dictionary(path)
    task_state = checkpoint.get("task_state") or {}
    stored = task_state.get("target_dictionary") if isinstance(task_state, dict) else None
    symbols = stored.get("symbols") if isinstance(stored, dict) else None
    if isinstance(symbols, list) and symbols[:4] == list(FAIRSEQ_SPECIALS) and all(isinstance(s, str) for s in symbols):
        return symbols
    raise HubertExportError(
        f"{source} is a fine-tuned CTC checkpoint and there is no {DICTIONARY_NAME} beside it (nor a target "
        "dictionary in its task_state): put the fine-tuning's letter dictionary there, or pass it with --dict")


def _dictionary_beside(source: Path) -> Path | None:
    path = source.parent / DICTIONARY_NAME
    return path if path.is_file() else None


FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's Dictionary puts these first


def read_dictionary(path: Path) -> list[str]:
    """The symbols of a fairseq `Dictionary` file (`SYMBOL COUNT [#fairseq:overwrite]` per line), in id order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HubertExportError(f"cannot read the dictionary {path} ({exc}): pass fairseq's dict.ltr.txt") from None
    symbols = list(FAIRSEQ_SPECIALS)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rstrip().rsplit(" ", 2)
        overwrite = len(parts) == 3 and parts[2] == "#fairseq:overwrite"
        if overwrite:
            parts = parts[:2]
        elif len(parts) == 3:
            parts = [" ".join(parts[:2]), parts[2]]
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise HubertExportError(f"{path}:{number}: {line!r} is not 'SYMBOL COUNT': pass fairseq's dict.ltr.txt")
        symbol = parts[0]
        if symbol in symbols and not overwrite:
            raise HubertExportError(f"{path}:{number}: {symbol!r} appears twice (fairseq refuses this too without "
                                    "#fairseq:overwrite): fix the dictionary")
        if symbol not in symbols:
            symbols.append(symbol)
    if "<ctc_blank>" in symbols:
        raise HubertExportError(f"{path} has a <ctc_blank> symbol (a blank other than <s>): not supported")
    return symbols


def vocab_json(symbols: list[str]) -> dict[str, int]:
    """transformers' vocab.json for fairseq's symbols: <s> (the blank) and <pad> swap names."""
    names = list(symbols)
    names[0], names[1] = "<pad>", "<s>"
    return {name: index for index, name in enumerate(names)}


# =================================================================================== 4. key map

_CONV = re.compile(r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)")
_GROUP_NORM = re.compile(r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)")
_LAYER_NORM = re.compile(r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)")
_POS_CONV_WEIGHT_NORM = re.compile(r"encoder\.pos_conv\.0\.(bias|weight_g|weight_v|parametrizations\.weight\.original[01])")
_POS_CONV_BATCH_NORM = re.compile(r"encoder\.pos_conv\.0\.(weight|bias|running_mean|running_var|num_batches_tracked)")
_POS_CONV_AFTER_BATCH_NORM = re.compile(r"encoder\.pos_conv\.1\.(weight|bias)")
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(self_attn\.[kvq]_proj|self_attn\.out_proj|self_attn_layer_norm|fc1|fc2|"
                    r"final_layer_norm)\.(weight|bias)")
_LAYER_PARTS = {"self_attn.k_proj": "attention.k_proj", "self_attn.v_proj": "attention.v_proj",
                "self_attn.q_proj": "attention.q_proj", "self_attn.out_proj": "attention.out_proj",
                "self_attn_layer_norm": "layer_norm", "fc1": "feed_forward.intermediate_dense",
                "fc2": "feed_forward.output_dense", "final_layer_norm": "final_layer_norm"}
_WEIGHT_NORM_NAMES = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
# The pretraining objective's modules (HuBERT's cluster prediction, wav2vec 2.0's quantizer and
# contrastive projections): inference does not use them, transformers' models do not have them.
PRETRAINING_ONLY = re.compile(r"(final_proj|label_embs_concat|target_glu|quantizer|input_quantizer|project_q|"
                              r"project_inp)(\.|$)")
ENCODER_PREFIX = "w2v_encoder.w2v_model."  # where a fine-tuned model keeps the pretrained one
CTC_HEAD_PREFIX = "w2v_encoder.proj."


def _canonical_name(key: str, config: HubertConfig) -> str | None:
    """Our backbone's name for a fairseq encoder parameter (no prefix); None for no such parameter."""
    if m := _CONV.fullmatch(key):
        return f"feature_extractor.conv_layers.{m[1]}.conv.{m[2]}"
    if config.feat_extract_norm == "group" and (m := _GROUP_NORM.fullmatch(key)):
        return f"feature_extractor.conv_layers.{m[1]}.layer_norm.{m[2]}"
    if config.feat_extract_norm == "layer" and (m := _LAYER_NORM.fullmatch(key)):
        return f"feature_extractor.conv_layers.{m[1]}.layer_norm.{m[2]}"
    if key in ("layer_norm.weight", "layer_norm.bias"):
        return "feature_projection." + key
    if key in ("post_extract_proj.weight", "post_extract_proj.bias"):
        return "feature_projection.projection." + key.rsplit(".", 1)[1]
    if key == "mask_emb":
        return "masked_spec_embed"
    if config.conv_pos_batch_norm:
        if m := _POS_CONV_BATCH_NORM.fullmatch(key):
            return f"encoder.pos_conv_embed.batch_norm.{m[1]}"
        if m := _POS_CONV_AFTER_BATCH_NORM.fullmatch(key):
            return f"encoder.pos_conv_embed.conv.{m[1]}"
    elif m := _POS_CONV_WEIGHT_NORM.fullmatch(key):
        return f"encoder.pos_conv_embed.conv.{_WEIGHT_NORM_NAMES.get(m[1], m[1])}"
    if key in ("encoder.layer_norm.weight", "encoder.layer_norm.bias"):
        return key
    if m := _LAYER.fullmatch(key):
        return f"encoder.layers.{m[1]}.{_LAYER_PARTS[m[2]]}.{m[3]}"
    return None


def canonical_state(model: FairseqModel, expected: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """fairseq's state dict under our model's names, checked against `expected` (our model's state).

    Every fairseq tensor is used exactly once or named in the error; pretraining-only tensors are
    set aside in `model.ignored`. A missing `post_extract_proj` (fairseq omits it when the
    convolutions' width equals the encoder's) becomes the identity, which is what fairseq computes.
    """
    backbone = "hubert." if model.ctc else ""
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    surplus: list[str] = []
    for key, tensor in model.state.items():
        if model.ctc and key.startswith(CTC_HEAD_PREFIX):
            name: str | None = "lm_head." + key[len(CTC_HEAD_PREFIX):]
        elif model.ctc and not key.startswith(ENCODER_PREFIX):
            name = None
        else:
            inner = key[len(ENCODER_PREFIX):] if model.ctc else key
            if PRETRAINING_ONLY.match(inner) or (inner == "mask_emb" and "masked_spec_embed" not in {
                    k[len(backbone):] for k in expected}):
                model.ignored.append(key)
                continue
            name = _canonical_name(inner, model.config)
            name = backbone + name if name is not None else None
        if name is None or name not in expected:
            surplus.append(key)
            continue
        if name in mapped:
            raise HubertExportError(f"{source}: {origin[name]} and {key} both map to {name}: the checkpoint is damaged")
        mapped[name], origin[name] = tensor, key
    if surplus:
        raise HubertExportError(
            f"{source}: {len(surplus)} weight(s) that a {model.name} model with this config does not have: "
            f"{_describe(surplus)}: the checkpoint's architecture differs from its config, or is not supported")
    projection = backbone + "feature_projection.projection."
    if projection + "weight" not in mapped and model.config.conv_dim[-1] == model.config.hidden_size:
        width = model.config.hidden_size
        mapped[projection + "weight"] = torch.eye(width)
        mapped[projection + "bias"] = torch.zeros(width)
    missing = [k for k in expected if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        prefix = ENCODER_PREFIX if model.ctc else ""
        raise HubertExportError(
            f"{source}: {len(missing)} weight(s) missing for a {model.name} model with this config: "
            f"{_describe(missing)} (under {prefix or 'the top level'} in fairseq's names): the checkpoint is "
            "truncated, or its architecture is not supported")
    for name, tensor in mapped.items():
        if name == "lm_head.weight" and tensor.shape[0] != expected[name].shape[0]:
            raise HubertExportError(
                f"{source}: the dictionary has {expected[name].shape[0]} symbols (fairseq's 4 specials included) but "
                f"the CTC head has {tensor.shape[0]} outputs: pass the dictionary the model was fine-tuned with (--dict)")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise HubertExportError(
                f"{source}: {origin.get(name, name)} has shape {tuple(tensor.shape)}, the config implies "
                f"{tuple(expected[name].shape)} for {name}: the checkpoint's weights and config disagree")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in mapped.items()}


def _describe(keys: list[str], limit: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def build_model(model: FairseqModel, source: Path) -> torch.nn.Module:
    """Our model (HubertModel, HubertForCTC or the wav2vec2 classes) holding the checkpoint's weights."""
    from hubert_export.model import HubertForCTC, HubertModel, Wav2Vec2ForCTC, Wav2Vec2Model

    classes = {("hubert", False): HubertModel, ("hubert", True): HubertForCTC,
               ("wav2vec2", False): Wav2Vec2Model, ("wav2vec2", True): Wav2Vec2ForCTC}
    with torch.device("meta"):
        network = classes[model.family, model.ctc](model.config)
    state = canonical_state(model, network.state_dict(), source)
    network.load_state_dict(state, strict=False, assign=True)
    for name, buffer in network.named_buffers():  # num_batches_tracked, when fairseq had none
        if buffer.is_meta:
            parent, _, leaf = name.rpartition(".")
            network.get_submodule(parent).register_buffer(leaf, torch.zeros((), dtype=buffer.dtype))
    unset = [name for name, tensor in network.state_dict().items() if tensor.is_meta]
    if unset:  # canonical_state checked every name: this would be a bug of the key map
        raise InternalError(f"the fairseq import left {_describe(unset)} unset: please report it")
    return network.eval()


# ===================================================================================== 5. write


def import_fairseq_checkpoint(checkpoint: str | Path, output_dir: str | Path, *, dictionary: str | Path | None = None,
                              checkpoint_sha256: str | None = None) -> Path:
    """Write a fairseq `.pt` checkpoint as a Hugging Face checkpoint directory at `output_dir`.

    config.json, model.safetensors and preprocessor_config.json (the task's `normalize`); for a CTC
    model also vocab.json and tokenizer_config.json from fairseq's dictionary (`dict.ltr.txt`
    beside the checkpoint, or `dictionary`); and fairseq_import.json (source, hash, what was left
    out). Written to a temporary directory beside `output_dir`, then renamed: a failure leaves nothing.
    `checkpoint_sha256`: the checkpoint's hash when the caller has it (the file is not read again).
    """
    from hubert_export.artifact import sha256_file

    source, output_dir = Path(checkpoint), Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise HubertExportError(f"{output_dir} already exists and is not empty: remove it or pick another directory")
    raw = read_fairseq_checkpoint(source)
    model = fairseq_model(raw, source, Path(dictionary) if dictionary is not None else None)
    network = build_model(model, source)
    if model.ignored:
        log.warning(f"not importing {len(model.ignored)} pretraining-only weight(s) ({_describe(model.ignored, 3)}): "
                    "inference does not use them")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.importing-", dir=output_dir.parent))
    try:
        network.save_pretrained(staging)
        _write_json(staging / "preprocessor_config.json", {
            "do_normalize": model.normalize, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "padding_side": "right", "padding_value": 0.0, "return_attention_mask": model.config.feat_extract_norm == "layer",
            "sampling_rate": model.sampling_rate})
        if model.vocabulary is not None:
            from hubert_export.tokenizer import CTCTokenizer

            CTCTokenizer(vocab_json(model.vocabulary)).save(staging)
        _write_json(staging / IMPORT_RECORD_NAME, {
            "source": str(source.resolve()), "sha256": checkpoint_sha256 or sha256_file(source), "fairseq_model": model.name,
            "dictionary": _dictionary_source(source, dictionary) if model.ctc else None,
            "pretraining_only_weights_left_out": sorted(model.ignored)})
        if output_dir.is_dir():
            output_dir.rmdir()  # empty (checked above)
        os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(f"imported {source} ({model.name}, {model.family}{' CTC' if model.ctc else ''}) into {output_dir}")
    return output_dir


def _dictionary_source(source: Path, dictionary: str | Path | None) -> str:
    path = Path(dictionary) if dictionary is not None else _dictionary_beside(source)
    return str(path.resolve()) if path is not None else "task_state (the checkpoint's own target dictionary)"


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def fairseq_cache_dir() -> Path:
    """Where `--model file.pt` keeps its imports: $HUBERT_EXPORT_CACHE/fairseq, or ~/.cache/hubert-export/fairseq."""
    root = os.environ.get("HUBERT_EXPORT_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hubert-export"
    return Path(root).expanduser() / "fairseq"


def imported_checkpoint_dir(checkpoint: str | Path) -> Path:
    """The Hugging Face checkpoint directory of a fairseq `.pt` file, imported once into the cache.

    Keyed by the sha256 of the checkpoint (and of the dict.ltr.txt beside it), so a changed file
    is imported again and an artifact's manifest, which records this directory, keeps pointing at
    the weights it was built from.
    """
    from hubert_export.artifact import sha256_file

    source = Path(checkpoint)
    checkpoint_sha256 = sha256_file(source)
    digest = hashlib.sha256(checkpoint_sha256.encode())
    dictionary = source.parent / DICTIONARY_NAME
    if dictionary.is_file():
        digest.update(sha256_file(dictionary).encode())
    target = fairseq_cache_dir() / f"{source.stem}-{digest.hexdigest()[:16]}"
    if (target / IMPORT_RECORD_NAME).is_file():
        return target
    log.info(f"importing fairseq checkpoint {source} into {target}")
    try:
        return import_fairseq_checkpoint(source, target, checkpoint_sha256=checkpoint_sha256)
    except (HubertExportError, OSError):
        if (target / IMPORT_RECORD_NAME).is_file():  # another process imported it meanwhile
            return target
        raise
