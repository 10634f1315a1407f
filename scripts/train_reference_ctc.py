"""Train the base-geometry reference HuBERT CTC model: the INT8 accuracy fixture with the real encoder.

The shipped tiny model's feature encoder has 32 channels; real checkpoints (hubert-base-ls960,
hubert-large-ls960-ft, wav2vec2-base-960h) have 512, and that encoder is where INT8 goes wrong.
This model has the base layout exactly (7 convolutions of 512 channels, kernels 10,3,3,3,3,2,2,
strides 5,2,2,2,2,2,2, no conv bias, group norm after the first conv, post-LN transformer) and a
transformer small enough to train on a 2-core CPU.

The speech is synthesised with espeak-ng: 3-10 word sentences over a ~400-word English vocabulary,
16 voices x variants, random speed and pitch, with noise (10-40 dB SNR, white or brown),
synthetic room reverberation and random gain applied on the fly. Training resumes: every
--checkpoint-every steps the latest weights (FP16) and the schedule position are written to
--resume-dir, atomically, so training can run in several sittings (each sitting starts a fresh
AdamW whose learning rate ramps back to the schedule over --rewarm steps). The best-dev-CER
weights are written as FP16 safetensors (which load as FP32) with TRAINING.md.

    nice -n 19 python scripts/train_reference_ctc.py --max-minutes 150     # one sitting
    python scripts/train_reference_ctc.py --device cuda --data-workers 6     # where a GPU is lent
    python scripts/train_reference_ctc.py --evaluate-only                    # numbers for TRAINING.md
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import uniform_filter1d
from scipy.signal import fftconvolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny_ctc import (  # noqa: E402  (the tiny model's data helpers are shared, not copied)
    LETTERS, SPECIALS, length_batches, synthesise, to_tensors, write_clips,
)

from hubert_export.audio import FeatureExtractorConfig, load_audio, prepare_batch  # noqa: E402
from hubert_export.corpus import read_transcripts  # noqa: E402
from hubert_export.metrics import character_error_rate, word_error_rate  # noqa: E402
from hubert_export.model import HubertConfig, HubertForCTC  # noqa: E402
from hubert_export.tokenizer import CTCTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "reference-ctc"
DEFAULT_RESUME = DEFAULT_OUT / "resume"
DEFAULT_TEST = REPO / "tests" / "data" / "reference-speech"

WORDS = """
A ABOUT ABOVE ACROSS ACT ADD AFTER AGAIN AGAINST AGE AGO AIR ALL ALMOST ALONE ALONG ALREADY ALSO
ALWAYS AM AMONG AN AND ANIMAL ANOTHER ANSWER ANY ANYTHING APPLE ARE AREA ARM AROUND ART AS ASK AT
AWAY BABY BACK BAD BAG BALL BANK BASE BE BEAR BEAUTIFUL BECAUSE BECOME BED BEEN BEFORE BEGIN BEHIND
BELIEVE BELOW BEST BETTER BETWEEN BIG BIRD BLACK BLUE BOAT BODY BOOK BOTH BOTTOM BOX BOY BREAD BREAK
BRING BROTHER BROWN BUILD BUS BUSY BUT BUY BY CALL CAME CAN CAR CARE CARRY CASE CAT CATCH CENTER
CHAIR CHANGE CHECK CHILD CHILDREN CITY CLASS CLEAN CLEAR CLOSE COLD COLOR COME COMPANY COULD COUNT
COUNTRY COURSE COVER CROSS CUP CUT DARK DAUGHTER DAY DEEP DID DIFFERENT DINNER DO DOCTOR DOES DOG
DON'T DOOR DOWN DRAW DREAM DRESS DRINK DRIVE DRY DURING EACH EAR EARLY EARTH EAST EASY EAT EDGE EGG
EIGHT EITHER ELSE END ENGLISH ENOUGH EVEN EVENING EVER EVERY EXAMPLE EYE FACE FACT FALL FAMILY FAR
FARM FAST FATHER FEEL FEET FEW FIELD FIGHT FILL FINAL FIND FINE FIRE FIRST FISH FIVE FLOOR FLY
FOLLOW FOOD FOOT FOR FOREST FORM FOUR FREE FRIEND FROM FRONT FRUIT FULL FUN GAME GARDEN GAVE GET
GIRL GIVE GLASS GO GOLD GONE GOOD GOT GREAT GREEN GROUND GROUP GROW HAD HAIR HALF HAND HAPPEN HAPPY
HARD HAS HAT HAVE HE HEAD HEAR HEART HEAVY HELLO HELP HER HERE HIGH HILL HIM HIS HISTORY HOLD HOME
HOPE HORSE HOT HOUR HOUSE HOW HUNDRED I I'M IDEA IF IMPORTANT IN INSIDE INTO IS ISLAND IT IT'S ITS
JUMP JUST KEEP KEY KIND KING KITCHEN KNEW KNOW LAND LARGE LAST LATE LAUGH LEAD LEARN LEAVE LEFT LEG
LESS LET LETTER LIFE LIGHT LIKE LINE LIST LISTEN LITTLE LIVE LONG LOOK LOST LOT LOUD LOVE LOW MACHINE
MADE MAKE MAN MANY MAP MARK MATTER MAY ME MEAN MEET MILK MIND MINUTE MISS MONEY MONTH MOON MORE
MORNING MOST MOTHER MOUNTAIN MOUTH MOVE MUCH MUSIC MUST MY NAME NEAR NEED NEVER NEW NEXT NIGHT NINE
NO NORTH NOT NOTE NOTHING NOW NUMBER OCEAN OF OFF OFTEN OH OLD ON ONCE ONE ONLY OPEN OR ORDER OTHER
OUR OUT OVER OWN PAGE PAPER PARK PART PASS PEOPLE PERHAPS PERSON PICTURE PIECE PLACE PLAN PLANT
PLAY PLEASE POINT POOR POWER PRESS PRETTY PROBLEM PULL PUSH PUT QUESTION QUICK QUIET RAIN RAN READ
READY REAL RED REMEMBER REST RICH RIGHT RIVER ROAD ROCK ROOM ROUND RUN SAID SAME SAT SAW SAY SCHOOL
SEA SECOND SEE SEEM SELL SEND SENTENCE SEVEN SHALL SHE SHIP SHOP SHORT SHOULD SHOW SIDE SIMPLE SING
SISTER SIT SIX SIZE SKY SLEEP SLOW SMALL SNOW SO SOME SOMETHING SON SONG SOON SOUND SOUTH SPEAK
SPRING STAND STAR START STATE STAY STEP STILL STONE STOP STORY STREET STRONG STUDY SUCH SUMMER SUN
SURE SWIM TABLE TAKE TALK TALL TEACHER TELL TEN THAN THANK THAT THE THEIR THEM THEN THERE THESE THEY
THING THINK THIRD THIS THOSE THOUGHT THREE THROUGH TIME TO TODAY TOGETHER TOLD TOO TOOK TOP TOWARD
TOWN TRAIN TREE TRUE TRY TURN TWO UNDER UNTIL UP US USE VERY VOICE WAIT WALK WALL WANT WARM WAS
WASH WATCH WATER WAY WE WEEK WELL WENT WERE WEST WHAT WHEEL WHEN WHERE WHICH WHILE WHITE WHO WHOLE
WHY WILL WIND WINDOW WINTER WITH WITHOUT WOMAN WOOD WORD WORK WORLD WOULD WRITE WRONG YEAR YELLOW
YES YET YOU YOUNG YOUR ZERO
""".split()
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt"]
PREPROCESSOR = {  # as facebook/hubert-base-ls960 and wav2vec2-base-960h: group norm, no attention mask
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "Wav2Vec2Processor",
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


def model_config(vocab_size: int) -> HubertConfig:
    # The base layout exactly, at a transformer width that trains on two cores: the feature
    # encoder (4.2 M of the parameters, most of the multiply-adds) is hubert-base's.
    return HubertConfig(
        vocab_size=vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=1024, conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False, feat_extract_norm="group",
        do_stable_layer_norm=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
        hidden_dropout=0.1, activation_dropout=0.0, attention_dropout=0.1, final_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05, mask_time_length=5,
        mask_time_min_masks=1, ctc_loss_reduction="mean", ctc_zero_infinity=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


# ------------------------------------------------------------------------------------------ data
def make_set(rng: random.Random, sentences: list[str], cache: Path, workers: int) -> list[tuple[str, np.ndarray]]:
    """Synthesise sentences (`workers` espeak-ng processes at once); voices drawn in order, so reproducible."""
    settings = [(text, rng.choice(ACCENTS) + rng.choice(VARIANTS), rng.randint(120, 210), rng.randint(20, 80))
                for text in sentences]
    with ThreadPoolExecutor(workers) as pool:
        waves = list(pool.map(lambda s: synthesise(*s, cache), settings))
    return [(text, wave) for (text, *_), wave in zip(settings, waves)]


def room_impulse(rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: exponentially decaying noise, RT60 0.15-0.7 s, with a direct path."""
    rt60 = rng.uniform(0.15, 0.7)
    n = int(16000 * rt60)
    t = np.arange(n) / 16000
    ir = rng.normal(0, 1, n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0 / rng.uniform(0.2, 0.8)  # direct-to-reverberant ratio
    return (ir / np.sqrt(np.sum(ir**2))).astype(np.float32)


def augment(waveform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = waveform
    if rng.random() < 0.4:
        out = fftconvolve(out, room_impulse(rng))[: len(out) + 1600].astype(np.float32)
    lead, tail = int(rng.integers(0, 4800)), int(rng.integers(0, 1600))
    out = np.concatenate([np.zeros(lead, np.float32), out, np.zeros(tail, np.float32)])
    snr_db = rng.uniform(10, 40)
    noise = rng.normal(0, 1, out.shape)
    if rng.random() < 0.5:  # brown noise: most of its energy where speech is, the harder case
        noise = np.cumsum(noise)
        noise -= uniform_filter1d(noise, 401, mode="constant")  # = np.convolve(ones(401)/401, "same"), O(n)
    power = np.mean(waveform**2)
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / max(np.mean(noise**2), 1e-12))
    return ((out + noise) * rng.uniform(0.1, 2.0)).astype(np.float32)


# ------------------------------------------------------------------------------------- training
@torch.no_grad()
def transcribe(model: HubertForCTC, waveforms: list[np.ndarray], tokenizer: CTCTokenizer,
               fe: FeatureExtractorConfig) -> list[str]:
    model.eval()
    device = next(model.parameters()).device
    texts = []
    for waveform in waveforms:
        batch = prepare_batch([waveform], fe)
        logits = model(torch.from_numpy(batch["input_values"]).to(device)).logits.cpu()
        texts.extend(tokenizer.greedy_decode(logits.float().numpy()))
    return texts


def save_fp16(model: HubertForCTC, directory: Path, extra: dict[str, str] | None = None) -> None:
    """save_pretrained, then the weights rewritten in FP16 (half the size; they load as FP32)."""
    from safetensors.torch import load_file, save_file

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    copy.deepcopy(model).cpu().save_pretrained(tmp)
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(tmp / "model.safetensors").items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    directory.mkdir(parents=True, exist_ok=True)
    for path in tmp.iterdir():
        os.replace(path, directory / path.name)
    tmp.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--resume-dir", type=Path, default=DEFAULT_RESUME)
    parser.add_argument("--test-dir", type=Path, default=DEFAULT_TEST)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "hubert-export-reference-ctc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-sentences", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent (same recipe, faster)")
    parser.add_argument("--synth-workers", type=int, default=2, help="espeak-ng processes at once")
    parser.add_argument("--data-workers", type=int, default=1,
                        help="threads preparing augmented batches ahead of the training step")
    parser.add_argument("--max-minutes", type=float, default=150.0, help="wall-time cap for this sitting")
    parser.add_argument("--max-steps", type=int, default=10000, help="the learning-rate schedule's length")
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--rewarm", type=int, default=150, help="steps to ramp a resumed sitting's fresh AdamW")
    parser.add_argument("--batch-seconds", type=float, default=20.0)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 (bf16 autocast needs AVX512-BF16/AMX to help)")
    parser.add_argument("--evaluate-only", action="store_true", help="score the shipped model on the test clips")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    cache = args.work_dir / "audio"
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - start) / 60:6.1f} min] {message}", flush=True)

    vocab = {token: i for i, token in enumerate(SPECIALS + LETTERS)}
    tokenizer = CTCTokenizer(vocab)
    fe = FeatureExtractorConfig(do_normalize=True, return_attention_mask=False)
    if args.evaluate_only:
        cer, wer = evaluate(args.out, args.test_dir, log)
        log(f"test CER {cer:.2%}  WER {wer:.2%}")
        return 0

    # Test sentences are drawn first so that they stay the same whatever --train-sentences is.
    taken: set[str] = set()
    test_sentences = draw_sentences_between(rng, 40, taken)
    dev_sentences = draw_sentences_between(rng, 80, taken)
    train_sentences = draw_sentences_between(rng, args.train_sentences, taken)
    log("synthesising speech with espeak-ng ...")
    test = make_set(rng, test_sentences, cache, args.synth_workers)
    dev = make_set(rng, dev_sentences, cache, args.synth_workers)
    train = make_set(rng, train_sentences, cache, args.synth_workers)
    hours = sum(len(w) for _, w in train) / 16000 / 3600
    log(f"{len(train)} training clips ({hours:.2f} h), {len(dev)} dev, {len(test)} test")
    # Held-out clips as a user would record them: the same noise and rooms as training.
    aug_rng = np.random.default_rng(args.seed + 1)
    test = [(t, augment(w, aug_rng)) for t, w in test]
    dev = [(t, augment(w, aug_rng)) for t, w in dev]
    if not (args.test_dir / "transcripts.tsv").is_file():
        write_clips(test, args.test_dir, "ref", tsv=True)

    config = model_config(len(vocab))
    model = HubertForCTC(config)
    state = {"step": 0, "best_dev_cer": None, "sittings": [], "train_hours": hours, "seed": args.seed}
    state_file = args.resume_dir / "training_state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        model = HubertForCTC.from_pretrained(args.resume_dir)
        log(f"resumed at step {state['step']} (best dev CER so far {state['best_dev_cer']})")
    device = torch.device(args.device)
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params / 1e6:.2f} M parameters")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_conv" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_conv" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    first_step = state["step"]

    def lr_at(step: int) -> float:
        if step < args.warmup:
            scheduled = args.lr * (step + 1) / args.warmup
        else:
            progress = min(1.0, (step - args.warmup) / max(1, args.max_steps - args.warmup))
            scheduled = args.lr * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * progress)))
        if first_step > 0:  # a fresh AdamW has no second-moment estimate yet: ramp it back in
            scheduled *= min(1.0, (step - first_step + 1) / args.rewarm)
        return scheduled

    # Per-sitting randomness: a resumed sitting draws new batches and augmentation.
    batch_rng = random.Random(args.seed * 1000 + first_step)
    torch.manual_seed(args.seed * 1000 + first_step)
    dev_waves, dev_texts = [w for _, w in dev], [t for t, _ in dev]
    step, running = first_step, []
    deadline = start + 60 * args.max_minutes
    sitting_start = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.no_bf16)
    prepared = 0  # batches prepared this sitting: each gets its own augmentation generator, so any
    # number of --data-workers gives the same batches in the same order

    def prepare(indices: list[int], number: int) -> dict[str, torch.Tensor]:
        np_rng = np.random.default_rng([args.seed, first_step, number])
        return to_tensors([augment(train[i][1], np_rng) for i in indices],
                          [train[i][0] for i in indices], tokenizer, fe)

    pool = ThreadPoolExecutor(args.data_workers)
    done = step >= args.max_steps
    while not done:
        epoch = length_batches([len(w) for _, w in train], int(args.batch_seconds * 16000), batch_rng)
        ahead = [pool.submit(prepare, indices, prepared + k) for k, indices in enumerate(epoch[: 2 * args.data_workers])]
        prepared += len(ahead)
        for position in range(len(epoch)):
            batch = {k: v.to(device, non_blocking=True) for k, v in ahead.pop(0).result().items()}
            if position + len(ahead) + 1 < len(epoch):
                ahead.append(pool.submit(prepare, epoch[position + len(ahead) + 1], prepared))
                prepared += 1
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            with autocast:
                loss = model(batch["input_values"], labels=batch["labels"]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running.append(loss.item())
            step += 1
            out_of_time = time.perf_counter() > deadline or step >= args.max_steps
            if step % args.eval_every == 0 or out_of_time:
                cer = character_error_rate(transcribe(model, dev_waves, tokenizer, fe), dev_texts)
                log(f"step {step:5d}  lr {lr_at(step):.2e}  loss {np.mean(running):.3f}  dev CER {cer:.2%}  "
                    f"({(time.perf_counter() - sitting_start) / (step - first_step):.2f} s/step)")
                running = []
                if state["best_dev_cer"] is None or cer <= state["best_dev_cer"]:
                    state["best_dev_cer"] = cer
                    state["best_step"] = step
                    save_fp16(model, args.out, {
                        "vocab.json": json.dumps(vocab, indent=2) + "\n",
                        "preprocessor_config.json": json.dumps(PREPROCESSOR, indent=2) + "\n",
                    })
            if step % args.checkpoint_every == 0 or out_of_time:
                state["step"] = step
                save_fp16(model, args.resume_dir, {"training_state.json": json.dumps(state, indent=2) + "\n"})
            if out_of_time:
                done = True
                break
    pool.shutdown(cancel_futures=True)
    minutes = (time.perf_counter() - sitting_start) / 60
    state["sittings"].append({"from_step": first_step, "to_step": step, "minutes": round(minutes, 1),
                              "threads": args.threads, "bf16": not args.no_bf16,
                              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"})
    state["step"] = step
    save_fp16(model, args.resume_dir, {"training_state.json": json.dumps(state, indent=2) + "\n"})
    log(f"sitting done: steps {first_step}-{step} in {minutes:.1f} min; best dev CER {state['best_dev_cer']:.2%} "
        f"at step {state.get('best_step')}")
    return 0


def draw_sentences_between(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """3-10 word sentences over WORDS (the tiny model's helper draws 3-6 over its own list)."""
    sentences = []
    while len(sentences) < count:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
        if text not in taken:
            taken.add(text)
            sentences.append(text)
    return sentences


def evaluate(model_dir: Path, test_dir: Path, log) -> tuple[float, float]:
    model = HubertForCTC.from_pretrained(model_dir)
    references = read_transcripts(test_dir)
    stems = sorted(references)
    hyps = transcribe(model, [load_audio(test_dir / f"{s}.flac") for s in stems],
                      CTCTokenizer.from_dir(model_dir), FeatureExtractorConfig.from_dir(model_dir))
    refs = [references[s] for s in stems]
    for stem, hyp, ref in zip(stems, hyps, refs):
        if hyp != ref:
            log(f"{stem}: REF {ref!r}  HYP {hyp!r}")
    return character_error_rate(hyps, refs), word_error_rate(hyps, refs)


if __name__ == "__main__":
    sys.exit(main())
