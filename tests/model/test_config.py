import json

import pytest

from hubert_export import HubertConfig, HubertExportError


def test_defaults_and_fields_match_transformers():
    transformers = pytest.importorskip("transformers")
    reference = transformers.HubertConfig().to_dict()
    ours = HubertConfig().to_dict()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_layer_norm",
                "feat_proj_dropout", "final_dropout", "layerdrop", "initializer_range", "layer_norm_eps",
                "feat_extract_norm", "feat_extract_activation", "conv_dim", "conv_stride", "conv_kernel",
                "conv_bias", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "conv_pos_batch_norm",
                "do_stable_layer_norm", "apply_spec_augment", "mask_time_prob", "mask_time_length",
                "mask_time_min_masks", "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks",
                "ctc_loss_reduction", "ctc_zero_infinity", "use_weighted_layer_sum", "classifier_proj_size",
                "pad_token_id", "bos_token_id", "eos_token_id", "num_feat_extract_layers"):
        assert ours[key] == (list(reference[key]) if isinstance(reference[key], tuple) else reference[key]), key
    assert HubertConfig().id2label == reference["id2label"]


def test_round_trip_keeps_unknown_keys(tmp_path):
    config = HubertConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4, "num_conv_pos_embedding_groups": 4,
                                     "some_future_field": {"a": 1}, "transformers_version": "9.9"})
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["some_future_field"] == {"a": 1} and data["transformers_version"] == "9.9"
    again = HubertConfig.from_pretrained(tmp_path)
    assert again == config


def test_transformers_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    HubertConfig(hidden_size=48, num_attention_heads=3, num_conv_pos_embedding_groups=3,
                 id2label={0: "no", 1: "yes", 2: "maybe"}).save_pretrained(tmp_path)
    reference = transformers.HubertConfig.from_pretrained(tmp_path)
    assert reference.hidden_size == 48 and reference.num_labels == 3 and reference.id2label[2] == "maybe"


def test_num_labels_without_id2label():
    assert HubertConfig.from_dict({"num_labels": 5}).num_labels == 5


@pytest.mark.parametrize("fields, message", [
    ({"conv_dim": [512, 512], "conv_stride": [5], "conv_kernel": [10, 3]}, "same non-zero length"),
    ({"hidden_size": 100, "num_attention_heads": 12}, "divisible by num_attention_heads"),
    ({"hidden_size": 96, "num_attention_heads": 12, "num_conv_pos_embedding_groups": 7},
     "divisible by num_conv_pos_embedding_groups"),
    ({"hidden_act": "swishy"}, "unknown activation hidden_act"),
    ({"feat_extract_activation": "nope"}, "unknown activation feat_extract_activation"),
    ({"feat_extract_norm": "batch"}, "feat_extract_norm"),
    ({"hidden_dropout": 1.5}, "hidden_dropout"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"ctc_loss_reduction": "max"}, "ctc_loss_reduction"),
    ({"conv_stride": [5, 2, 2, 2, 2, 2, -2]}, "conv_stride"),
    ({"model_type": "wav2vec2"}, "not 'hubert'"),
    ({"hidden_size": "big"}, "hidden_size"),
])
def test_invalid_configs_are_clear_errors(fields, message):
    with pytest.raises(HubertExportError, match=message) as info:
        HubertConfig.from_dict(fields)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_config_json(tmp_path):
    with pytest.raises(HubertExportError, match="no config.json"):
        HubertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HubertExportError, match="not valid JSON"):
        HubertConfig.from_pretrained(tmp_path)


def test_frame_arithmetic():
    config = HubertConfig()
    assert config.receptive_field == 400
    assert config.inputs_to_logits_ratio == 320
    assert config.num_frames(400) == 1 and config.num_frames(16000) == 49 and config.num_frames(399) == 0


def test_wav2vec2_defaults_match_transformers_and_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    from hubert_export import Wav2Vec2Config, load_config

    reference, ours = transformers.Wav2Vec2Config().to_dict(), Wav2Vec2Config().to_dict()
    shared = [k for k in ours if k in reference and k not in ("transformers_version", "architectures")]
    assert len(shared) > 40 and "add_adapter" in shared and "adapter_attn_dim" in shared
    for key in shared:  # as config.json has them (tuples as lists, label ids as strings)
        assert json.loads(json.dumps(ours[key])) == json.loads(json.dumps(reference[key])), key
    # wav2vec2's config.json has neither of HuBERT's feature-projection switches.
    assert "feat_proj_layer_norm" not in ours and "conv_pos_batch_norm" not in ours
    transformers.Wav2Vec2Config(hidden_size=48, num_attention_heads=3, num_conv_pos_embedding_groups=3,
                                num_codevectors_per_group=7).save_pretrained(tmp_path)
    config = load_config(tmp_path)
    assert type(config) is Wav2Vec2Config and config.hidden_size == 48
    assert config.extra["num_codevectors_per_group"] == 7  # pretraining fields are kept, unread
    config.save_pretrained(tmp_path / "again")
    assert transformers.Wav2Vec2Config.from_pretrained(tmp_path / "again").num_codevectors_per_group == 7
    assert type(load_config(tmp_path / "again")) is Wav2Vec2Config


@pytest.mark.parametrize("model_type, reason", [
    ("data2vec-audio", "positional embedding is a stack of 5 layer-normed convolutions"),
    ("wavlm", "gated relative position bias"),
    ("unispeech-sat", None),
])
def test_other_model_types_are_refused_naming_the_supported_families(tmp_path, model_type, reason):
    from hubert_export import load_config

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 64}))
    with pytest.raises(HubertExportError) as info:
        load_config(tmp_path)
    message = str(info.value)
    assert message.startswith(f"model_type {model_type!r} is not supported")
    assert "exports hubert and wav2vec2 checkpoints" in message and "\n" not in message
    assert reason is None or reason in message


def test_config_without_model_type_is_hubert(tmp_path):
    from hubert_export import load_config

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4,
                                                      "num_conv_pos_embedding_groups": 4}))
    assert type(load_config(tmp_path)) is HubertConfig
