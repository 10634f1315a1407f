"""Train the tiny HuBERT CTC model that ships as hubert-export's default model and accuracy fixture.

The speech is synthesised with espeak-ng: random 3-6 word sentences over a small English
vocabulary, spoken by several voices at random speed and pitch. Three disjoint sentence sets are
drawn: training, dev (early stopping) and test. The test sentences are new combinations of the
same words (no test sentence is a training or dev sentence); they are written, with the INT8
calibration clips, as 16 kHz FLAC into the repository. Everything else is cached in --work-dir.

Training and evaluation use the package's own front end (load_audio + prepare_batch), model
(HubertForCTC) and tokenizer (CTCTokenizer), so the shipped model sees at inference exactly the
preprocessing it was trained on.

    python scripts/train_tiny_ctc.py                  # ~20 min on one CPU thread (4500 steps)
    python scripts/train_tiny_ctc.py --max-minutes 5 --out /tmp/tiny-ctc --no-fixtures
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from hubert_export.audio import FeatureExtractorConfig, load_audio, prepare_batch
from hubert_export.corpus import read_transcripts
from hubert_export.metrics import character_error_rate, word_error_rate
from hubert_export.model import HubertConfig, HubertForCTC
from hubert_export.model.feature_encoder import frame_lengths
from hubert_export.tokenizer import CTCTokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "hubert_export" / "data" / "tiny-ctc"
DEFAULT_CALIBRATION = REPO / "hubert_export" / "data" / "calibration"
DEFAULT_TEST = REPO / "tests" / "data" / "speech"

WORDS = """
THE A AND IS IT TO OF IN ON WE YOU SHE HE THEY MY YOUR BIG SMALL RED BLUE GREEN BLACK WHITE OLD NEW
QUICK SLOW HAPPY DOG CAT BIRD FISH HOUSE CAR TREE BOOK BOX WATER DOOR ROAD CITY NIGHT DAY MORNING
SUN MOON RUN JUMP SEE HAVE LIKE WANT FIND OPEN READ WALK SING PLAY GIVE MAKE NOT VERY ZERO ONE TWO
THREE FOUR FIVE SEVEN TEN DON'T IT'S NOW TODAY UNDER OVER WITH
""".split()
VOICES = ["en-us", "en-us+f3", "en-us+m3", "en-us+f2", "en", "en+m5", "en+f4", "en-gb-x-rp+m1"]
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["'"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "|"]  # <pad> (id 0) is the CTC blank

PREPROCESSOR = {  # as facebook/hubert-large-ls960-ft: per-utterance normalisation, attention mask
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "Wav2Vec2Processor",
    "return_attention_mask": True,
    "sampling_rate": 16000,
}


def model_config(vocab_size: int) -> HubertConfig:
    # The large layout (LayerNorm after every conv, pre-LN transformer) because it is padding-
    # invariant with an attention mask and trains stably from scratch; the standard conv
    # kernels/strides keep the 320-sample hop and 400-sample receptive field of real HuBERT.
    return HubertConfig(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=384, conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=True, feat_extract_norm="layer",
        do_stable_layer_norm=True, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
        hidden_dropout=0.1, activation_dropout=0.0, attention_dropout=0.1, final_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05, mask_time_length=5,
        mask_time_min_masks=1, ctc_loss_reduction="mean", ctc_zero_infinity=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


# ------------------------------------------------------------------------------------------ data
def draw_sentences(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    sentences = []
    while len(sentences) < count:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))
        if text not in taken:
            taken.add(text)
            sentences.append(text)
    return sentences


def synthesise(text: str, voice: str, speed: int, pitch: int, cache: Path) -> np.ndarray:
    """espeak-ng speech as float32 16 kHz, through the package's loader (which resamples 22.05 kHz)."""
    key = hashlib.sha1(f"{text}|{voice}|{speed}|{pitch}".encode()).hexdigest()[:16]
    wav = cache / f"{key}.wav"
    if not wav.is_file():
        tmp = wav.with_suffix(".tmp.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(tmp),
                        text.lower()], check=True, capture_output=True)
        tmp.replace(wav)
    return load_audio(wav)


def make_set(rng: random.Random, sentences: list[str], cache: Path) -> list[tuple[str, np.ndarray]]:
    items = []
    for text in sentences:
        voice, speed, pitch = rng.choice(VOICES), rng.randint(140, 190), rng.randint(30, 70)
        items.append((text, synthesise(text, voice, speed, pitch, cache)))
    return items


def write_clips(items: list[tuple[str, np.ndarray]], directory: Path, prefix: str, tsv: bool) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    lines = []
    for index, (text, waveform) in enumerate(items):
        stem = f"{prefix}{index:02d}"
        sf.write(directory / f"{stem}.flac", waveform, 16000, subtype="PCM_16")
        lines.append(f"{stem}\t{text}\n")
    if tsv:
        (directory / "transcripts.tsv").write_text("".join(lines), encoding="utf-8")


# ------------------------------------------------------------------------------------- training
def length_batches(lengths: list[int], max_samples: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by similar length, each batch at most `max_samples` padded samples."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current = [], []
    for index in order:
        if current and (len(current) + 1) * lengths[index] > max_samples:
            batches.append(current)
            current = []
        current.append(index)
    batches.append(current)
    rng.shuffle(batches)
    return batches


def to_tensors(waveforms: list[np.ndarray], texts: list[str], tokenizer: CTCTokenizer,
               fe: FeatureExtractorConfig) -> dict[str, torch.Tensor]:
    batch = {k: torch.from_numpy(v) for k, v in prepare_batch(waveforms, fe).items()}
    ids = [tokenizer.encode(t) for t in texts]
    labels = torch.full((len(ids), max(map(len, ids))), -100, dtype=torch.long)
    for row, seq in zip(labels, ids):
        row[: len(seq)] = torch.tensor(seq)
    batch["labels"] = labels
    return batch


@torch.no_grad()
def transcribe(model: HubertForCTC, waveforms: list[np.ndarray], tokenizer: CTCTokenizer,
               fe: FeatureExtractorConfig) -> list[str]:
    """Greedy transcripts, one utterance per forward pass (what the accuracy test does)."""
    model.eval()
    texts = []
    for waveform in waveforms:
        batch = prepare_batch([waveform], fe)
        logits = model(torch.from_numpy(batch["input_values"]),
                       torch.from_numpy(batch["attention_mask"])).logits
        texts.extend(tokenizer.greedy_decode(logits.numpy()))
    return texts


def augment(waveform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Random leading silence shifts words against the 320-sample frame grid; light noise at
    # 25-45 dB SNR stops the model from keying on espeak's digitally silent gaps.
    lead = np.zeros(int(rng.integers(0, 1600)), dtype=np.float32)
    out = np.concatenate([lead, waveform])
    snr_db = rng.uniform(25, 45)
    noise_std = np.sqrt(np.mean(waveform**2) / 10 ** (snr_db / 10))
    return (out + rng.normal(0, noise_std, out.shape)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--test-dir", type=Path, default=DEFAULT_TEST)
    parser.add_argument("--calibration-dir", type=Path, default=DEFAULT_CALIBRATION)
    parser.add_argument("--no-fixtures", action="store_true",
                        help="do not (re)write the committed test and calibration clips")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "hubert-export-tiny-ctc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-sentences", type=int, default=1500)
    parser.add_argument("--max-minutes", type=float, default=25.0, help="wall-time cap; the schedule normally ends first")
    parser.add_argument("--max-steps", type=int, default=4500, help="the learning-rate schedule's length")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-seconds", type=float, default=20.0)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--target-cer", type=float, default=0.02, help="stop once the dev CER is below this")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # the machine is shared; one thread is also deterministic
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    np_rng = np.random.default_rng(args.seed)
    cache = args.work_dir / "audio"
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {message}", flush=True)

    # Test sentences are drawn first so that they stay the same whatever --train-sentences is.
    taken: set[str] = set()
    test_sentences = draw_sentences(rng, 20, taken)
    calibration_sentences = draw_sentences(rng, 20, taken)
    dev_sentences = draw_sentences(rng, 60, taken)
    train_sentences = draw_sentences(rng, args.train_sentences, taken)
    log("synthesising speech with espeak-ng ...")
    test = make_set(rng, test_sentences, cache)
    calibration = make_set(rng, calibration_sentences, cache)
    dev = make_set(rng, dev_sentences, cache)
    # Calibration sentences are unseen too, but nothing is measured on them: they train as well.
    train = make_set(rng, train_sentences, cache) + calibration
    hours = sum(len(w) for _, w in train) / 16000 / 3600
    log(f"{len(train)} training clips ({hours:.2f} h), {len(dev)} dev, {len(test)} test")

    if not args.no_fixtures:
        write_clips(test, args.test_dir, "utt", tsv=True)
        write_clips(calibration, args.calibration_dir, "calib", tsv=False)
    # Evaluate on what was committed (16-bit FLAC read back by load_audio), as the tests do.
    test_dir = args.test_dir if not args.no_fixtures else args.work_dir / "test"
    if args.no_fixtures:
        write_clips(test, test_dir, "utt", tsv=True)

    vocab = {token: i for i, token in enumerate(SPECIALS + LETTERS)}
    tokenizer = CTCTokenizer(vocab)
    fe = FeatureExtractorConfig(**{k: v for k, v in PREPROCESSOR.items()
                                   if k in ("sampling_rate", "do_normalize", "return_attention_mask",
                                            "padding_value", "feature_size")})
    config = model_config(len(vocab))
    model = HubertForCTC(config)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params / 1e6:.2f} M parameters")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_conv" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_conv" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    warmup = min(300, args.max_steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, args.max_steps - warmup))
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    dev_waves, dev_texts = [w for _, w in dev], [t for t, _ in dev]
    best_cer, best_state, step, running = float("inf"), None, 0, []
    deadline = start + 60 * args.max_minutes
    done = False
    while not done:
        batches = length_batches([len(w) for _, w in train], int(args.batch_seconds * 16000), rng)
        for indices in batches:
            model.train()
            batch = to_tensors([augment(train[i][1], np_rng) for i in indices],
                               [train[i][0] for i in indices], tokenizer, fe)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = model(batch["input_values"], batch["attention_mask"], labels=batch["labels"]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            running.append(loss.item())
            step += 1
            out_of_time = time.perf_counter() > deadline or step >= args.max_steps
            if step % args.eval_every == 0 or out_of_time:
                cer = character_error_rate(transcribe(model, dev_waves, tokenizer, fe), dev_texts)
                log(f"step {step:5d}  lr {lr_at(step):.2e}  loss {np.mean(running):.3f}  dev CER {cer:.2%}")
                running = []
                if cer <= best_cer:
                    best_cer = cer
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
                if cer < args.target_cer or out_of_time:
                    done = True
                    break
    train_minutes = (time.perf_counter() - start) / 60
    model.load_state_dict(best_state)
    model.eval()

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save(args.out)
    (args.out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")

    # Final numbers from the saved checkpoint and the committed FLAC test clips.
    shipped = HubertForCTC.from_pretrained(args.out)
    references = read_transcripts(test_dir)
    stems = sorted(references)
    hyps = transcribe(shipped, [load_audio(test_dir / f"{s}.flac") for s in stems],
                      CTCTokenizer.from_dir(args.out), FeatureExtractorConfig.from_dir(args.out))
    refs = [references[s] for s in stems]
    cer, wer = character_error_rate(hyps, refs), word_error_rate(hyps, refs)
    for stem, hyp, ref in zip(stems, hyps, refs):
        if hyp != ref:
            log(f"{stem}: REF {ref!r}  HYP {hyp!r}")
    size = (args.out / "model.safetensors").stat().st_size
    log(f"test CER {cer:.2%}  WER {wer:.2%}  (best dev CER {best_cer:.2%}, {step} steps, "
        f"{train_minutes:.1f} min, model.safetensors {size / 1e6:.2f} MB)")
    write_training_md(args, config, params, size, step, train_minutes, hours, len(train), best_cer, cer, wer)
    return 0


def write_training_md(args: argparse.Namespace, config: HubertConfig, params: int, size: int, steps: int,
                      minutes: float, hours: float, num_train: int, dev_cer: float, cer: float, wer: float) -> None:
    text = f"""# tiny-ctc: how this model was made

A {params / 1e6:.2f} M-parameter HuBERT CTC model (`HubertForCTC`, Hugging Face layout, float32
`model.safetensors` of {size / 1e6:.2f} MB) trained from scratch to recognise English speech
synthesised by espeak-ng. It is hubert-export's default model and the fixture of the accuracy tests;
it is not a general speech recogniser: it knows {len(WORDS)} words and espeak-ng's voices.

Reproduce (from the repository root, one CPU thread):

    python scripts/train_tiny_ctc.py --seed {args.seed} --max-minutes {args.max_minutes:g} --max-steps {args.max_steps}

## Data

- Vocabulary: {len(WORDS)} common English words: {" ".join(WORDS)}.
- Sentences: 3-6 words drawn uniformly at random from the vocabulary.
- Speech: `espeak-ng -v VOICE -s SPEED -p PITCH`, VOICE from {", ".join(VOICES)}, SPEED 140-190
  words/min, PITCH 30-70, read (22.05 kHz) and resampled to 16 kHz by `hubert_export.audio.load_audio`.
- Training: {num_train} clips ({hours:.2f} h), each with random leading silence (0-0.1 s) and white
  noise at 25-45 dB SNR; SpecAugment time masking (p={config.mask_time_prob}, length {config.mask_time_length}).
- Dev (early stopping): 60 further sentences. Test: the 20 clips in `tests/data/speech/`. Dev and test
  sentences are new combinations of the same words: none of them occurs in the training set.
- The 20 INT8 calibration clips in `hubert_export/data/calibration/` are further sentences of the same
  kind (also used for training; nothing is measured on them).

## Model

Large-HuBERT layout at small width: 7 convolutions of {config.conv_dim[0]} channels with the standard
kernels {list(config.conv_kernel)} and strides {list(config.conv_stride)} (320-sample hop, 400-sample
receptive field), LayerNorm after each (`feat_extract_norm="layer"`), pre-LN transformer
(`do_stable_layer_norm`) of {config.num_hidden_layers} layers, hidden {config.hidden_size},
{config.num_attention_heads} heads, feed-forward {config.intermediate_size}, positional conv of kernel
{config.num_conv_pos_embeddings} in {config.num_conv_pos_embedding_groups} groups. Vocabulary: `<pad>`
(id 0, the CTC blank), `<s>`, `</s>`, `<unk>`, `|` (word delimiter), A-Z and the apostrophe.
Preprocessing as facebook/hubert-large-ls960-ft: per-utterance zero-mean unit-variance
normalisation and an attention mask (`return_attention_mask: true`).

## Training

`hubert_export.HubertForCTC` with CTC loss (mean reduction, zero_infinity), AdamW (lr {args.lr:g},
betas 0.9/0.98, weight decay 0.01), linear warm-up then cosine decay over {args.max_steps} steps, batches
of similar-length clips up to {args.batch_seconds:g} s of padded audio, gradient clipping at 5,
seed {args.seed}, `torch.set_num_threads(1)`. Stopped after {steps} steps ({minutes:.1f} min wall time
including synthesis, on a shared CPU); the checkpoint with the best dev CER ({dev_cer:.2%}) is kept.

## Measured accuracy

Greedy CTC decoding of the 20 held-out test clips with the eager model, one clip per forward pass,
through `hubert_export.audio` and `hubert_export.tokenizer.CTCTokenizer`:

| metric | value |
|---|---|
| CER | {cer:.2%} |
| WER | {wer:.2%} |
"""
    (args.out / "TRAINING.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
