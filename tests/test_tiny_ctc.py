"""The shipped tiny CTC model: it recognises its held-out speech, and transformers reads it identically.

The model, calibration clips and held-out clips are made by scripts/train_tiny_ctc.py (see
hubert_export/data/tiny-ctc/TRAINING.md for the measured numbers these bounds sit above).
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hubert_export import HubertConfig, HubertForCTC
from hubert_export.audio import FeatureExtractorConfig, load_audio, prepare_batch
from hubert_export.corpus import read_transcripts
from hubert_export.build import BUILTIN_CALIBRATION_DIR, DEFAULT_MODEL_DIR
from hubert_export.metrics import character_error_rate, word_error_rate
from hubert_export.tokenizer import CTCTokenizer

REPO = Path(__file__).resolve().parents[1]
SPEECH_DIR = Path(__file__).parent / "data" / "speech"
# Measured with the eager model when the checkpoint was trained (TRAINING.md): CER 2.75%, WER 10.0%.
MAX_CER = 0.06
MAX_WER = 0.18


@pytest.fixture(scope="module")
def model() -> HubertForCTC:
    return HubertForCTC.from_pretrained(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def speech() -> tuple[list[str], list[np.ndarray], list[str]]:
    references = read_transcripts(SPEECH_DIR)
    stems = sorted(references)
    return stems, [load_audio(SPEECH_DIR / f"{s}.flac") for s in stems], [references[s] for s in stems]


def test_shipped_files_describe_a_small_ctc_model():
    config = HubertConfig.from_pretrained(DEFAULT_MODEL_DIR)
    tokenizer = CTCTokenizer.from_dir(DEFAULT_MODEL_DIR)
    features = FeatureExtractorConfig.from_dir(DEFAULT_MODEL_DIR)
    assert config.architectures == ["HubertForCTC"]
    assert config.vocab_size == tokenizer.vocab_size and config.pad_token_id == tokenizer.pad_token_id == 0
    assert config.inputs_to_logits_ratio == 320 and config.receptive_field == 400
    assert features.sampling_rate == 16000 and features.do_normalize and features.return_attention_mask
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 5_000_000
    assert "CER" in (DEFAULT_MODEL_DIR / "TRAINING.md").read_text()


def test_recognises_held_out_speech(model, speech):
    stems, waveforms, refs = speech
    assert len(stems) >= 15
    tokenizer = CTCTokenizer.from_dir(DEFAULT_MODEL_DIR)
    features = FeatureExtractorConfig.from_dir(DEFAULT_MODEL_DIR)
    hyps = []
    with torch.no_grad():
        for waveform in waveforms:
            batch = prepare_batch([waveform], features)
            logits = model(torch.from_numpy(batch["input_values"]), torch.from_numpy(batch["attention_mask"])).logits
            hyps.extend(tokenizer.greedy_decode(logits.numpy()))
    cer, wer = character_error_rate(hyps, refs), word_error_rate(hyps, refs)
    assert cer < MAX_CER, f"CER {cer:.2%}: {list(zip(refs, hyps))}"
    assert wer < MAX_WER, f"WER {wer:.2%}"


def test_held_out_sentences_are_not_training_sentences(speech):
    # Redraw the script's sentence lists (text only, no synthesis) with its default seed and sizes.
    spec = importlib.util.spec_from_file_location("train_tiny_ctc", REPO / "scripts" / "train_tiny_ctc.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rng, taken = random.Random(0), set()
    test = script.draw_sentences(rng, 20, taken)
    calibration = script.draw_sentences(rng, 20, taken)
    dev = script.draw_sentences(rng, 60, taken)
    train = script.draw_sentences(rng, 1500, taken)
    _, _, refs = speech
    assert refs == test
    assert not set(refs) & set(train + calibration + dev)
    assert set(" ".join(refs).split()) <= set(script.WORDS)


def test_transformers_reads_the_checkpoint_identically(model, speech):
    transformers = pytest.importorskip("transformers", reason="transformers is the test-only reference")
    reference = transformers.HubertForCTC.from_pretrained(DEFAULT_MODEL_DIR).eval()
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(DEFAULT_MODEL_DIR)
    hf_tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    _, waveforms, _ = speech
    clips = waveforms[:3]  # different lengths: exercises padding and the attention mask
    ours_in = prepare_batch(clips, FeatureExtractorConfig.from_dir(DEFAULT_MODEL_DIR))
    theirs_in = extractor(clips, sampling_rate=16000, padding=True, return_tensors="pt")
    np.testing.assert_array_equal(ours_in["input_values"], theirs_in["input_values"].numpy())
    np.testing.assert_array_equal(ours_in["attention_mask"], theirs_in["attention_mask"].numpy())
    with torch.no_grad():
        ours = model(torch.from_numpy(ours_in["input_values"]), torch.from_numpy(ours_in["attention_mask"])).logits
        theirs = reference(theirs_in["input_values"], attention_mask=theirs_in["attention_mask"]).logits
    # Trained logits reach ~25 in magnitude and float32 rounding differs by ~1e-6 of that scale,
    # so the bound is 1e-5 of the largest logit (about 2.5e-4 absolute).
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    ids = ours.argmax(-1)[0]
    assert CTCTokenizer.from_dir(DEFAULT_MODEL_DIR).decode_ids(ids.numpy()) == hf_tokenizer.decode(ids.tolist())


def test_builtin_calibration_clips_are_short_16k_mono_flac():
    clips = sorted(BUILTIN_CALIBRATION_DIR.glob("*.flac"))
    assert 16 <= len(clips) <= 24
    for clip in clips:
        info = sf.info(str(clip))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert 0.5 < info.duration < 6.0
