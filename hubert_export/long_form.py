"""Long-form parity: recordings checked the way they are served, in overlapping chunks.

`check --data CORPUS --chunk-seconds S --overlap-seconds O` runs every utterance of the corpus
through the artifact exactly as `transcribe` runs a recording (chunks on the frame grid, the whole
recording's normalisation, the central frames of each chunk stitched) and compares the stitched
frame logits with the eager model's on the whole utterance, which is what a user who never chunks
would get. The comparison is the parity harness's own (`parity.compare_case` and `summarize`):
frame argmax agreement, logits error, and the CER/WER of the chunked transcripts against the whole
utterance's (the drift chunking adds), gated by `LONG_FORM_THRESHOLDS`. The utterances are not
cut to the artifact's shape range: chunking is what makes them fit.

What chunk and overlap cost is measured by `benchmarks/long_form.py` (5-minute recordings joined
from the test clips); `transcribe`'s defaults come from that table (docs/long-form.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubert_export.audio import ArrayStream, FeatureExtractorConfig
from hubert_export.errors import HubertExportError
from hubert_export.parity import CaseOutcome, ParityCase, ParityReport, batch_case, compare_case, summarize

log = logging.getLogger(__name__)

# Gates of chunked against whole-utterance output, from benchmarks/results/long-form.md (the eager
# model against itself on 5-minute recordings): at transcribe's default (30 s chunks, 2 s overlap)
# the shipped model keeps 0.991 of the frames (CER drift 0.028, WER 0.120) and the reference model,
# trained on short clips, 0.943 (0.114, 0.432); with 10 s chunks the reference model is at 0.895
# (0.205, 0.565). The FP32 gate passes every chunking from
# 10 s up on both and fails what broken stitching does (frames lost or shifted at every seam); the
# precision's own drift comes on top for FP16 and INT8. Token edit rate is not measured there, so it
# does not gate.
LONG_FORM_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"min_argmax_agreement": 0.85, "max_cer": 0.25, "max_wer": 0.65},
    "fp16": {"min_argmax_agreement": 0.85, "max_cer": 0.25, "max_wer": 0.65},
    "int8": {"min_argmax_agreement": 0.80, "max_cer": 0.30, "max_wer": 0.70},
}


@dataclass(frozen=True)
class LongFormOptions:
    """How the check chunks each utterance: as `transcribe --chunk-seconds --overlap-seconds`."""

    chunk_seconds: float
    overlap_seconds: float
    batch_size: int = 1

    def __post_init__(self) -> None:
        from hubert_export.transcribe import _check_options

        _check_options(self.chunk_seconds, self.overlap_seconds, self.batch_size)

    def to_dict(self) -> dict[str, float]:
        return {"chunk_seconds": self.chunk_seconds, "overlap_seconds": self.overlap_seconds,
                "batch_size": self.batch_size}


def whole_utterance(reference: Any, waveform: Any, name: str, text: str | None,
                    fe: FeatureExtractorConfig) -> tuple[ParityCase, dict[str, Any]]:
    """The utterance as one parity case, and `reference`'s outputs on all of it at once."""
    with_mask = "attention_mask" in reference.input_names
    case = batch_case(f"{name} (chunked)", [waveform], fe, with_mask, [text])
    return case, reference.infer({k: v for k, v in case.inputs.items() if k in reference.input_names})


def chunked_outcome(transcriber: Any, case: ParityCase, whole: dict[str, Any], waveform: Any,
                    options: LongFormOptions, *, config: Any, tokenizer: Any) -> CaseOutcome:
    """`transcriber` (a transcribe.Transcriber) run on the utterance in chunks, its stitched logits
    compared with `whole` (the outputs on the whole utterance) as one parity case."""
    return compare_case(case, {"logits": whole["logits"]}, {"logits": stitched(transcriber, waveform, case.name, options)},
                        output_names=["logits"], config=config, task="ctc", tokenizer=tokenizer)


def stitched(transcriber: Any, waveform: Any, name: str, options: LongFormOptions) -> Any:
    """The stitched frame logits (1, frames, vocab) of `transcriber` run on `waveform` in chunks."""
    return transcriber.run(ArrayStream(waveform, name), chunk_seconds=options.chunk_seconds,
                           overlap_seconds=options.overlap_seconds, batch_size=options.batch_size,
                           keep_logits=True).logits[None]


@dataclass
class LongFormReport:
    """Both comparisons of the chunked artifact: with the eager model run in the same chunks (the
    artifact is right as it is served) and with the eager model on whole utterances (the drift the
    chunking adds, `LONG_FORM_THRESHOLDS`)."""

    options: LongFormOptions
    served: ParityReport
    drift: ParityReport

    def failures(self) -> list[str]:
        return ([f"long-form, against eager in the same chunks: {f}" for f in self.served.failures]
                + [f"long-form, against eager on whole utterances: {f}" for f in self.drift.failures])

    def to_dict(self) -> dict[str, Any]:
        return {**self.options.to_dict(), "served": self.served.to_dict(), "drift": self.drift.to_dict()}

    def to_markdown(self) -> str:
        heading = (f"Long-form: every --data utterance in {self.options.chunk_seconds:g} s chunks overlapping "
                   f"{self.options.overlap_seconds:g} s, as transcribe runs it")
        return "\n".join([f"## {heading}", "", "### Against the eager model in the same chunks", "",
                          self.served.to_markdown(), "### Against the eager model on whole utterances", "",
                          self.drift.to_markdown()])


def check_long_form(artifact_dir: str | Path, checkpoint_dir: str | Path, model: Any, utterances: list[Any],
                    options: LongFormOptions, *, thresholds: dict[str, float], normalize: bool = True) -> LongFormReport:
    """The long-form report of a CTC artifact on `utterances` (corpus.Utterance): `model` is the eager
    model of `checkpoint_dir`, already loaded; the artifact's files are verified by the caller
    (`build.verify_artifact` does, before it loads `model`). `thresholds` gate the artifact against
    the eager model in the same chunks (the check's own), `LONG_FORM_THRESHOLDS` the drift from
    whole utterances."""
    from hubert_export.artifact import Artifact
    from hubert_export.runner import EagerRunner
    from hubert_export.tasks import family_of
    from hubert_export.transcribe import Transcriber

    artifact = Artifact.open(artifact_dir)
    served, drift = [], []
    with Transcriber(artifact_dir, verified=True) as chunked_artifact, \
            Transcriber(checkpoint_dir, model=model) as chunked_eager:
        config, fe, tokenizer, contract = (chunked_artifact.config, chunked_artifact.fe, chunked_artifact.tokenizer,
                                           chunked_artifact.contract)
        task = family_of(config).task("ctc")
        with EagerRunner(model, task, with_attention_mask=contract.attention_mask) as eager:
            for i, utterance in enumerate(utterances, 1):
                waveform = utterance.load(fe.sampling_rate)
                log.info(f"long-form {i}/{len(utterances)}: {utterance.id} ({len(waveform) / fe.sampling_rate:.1f} s) "
                         f"in {options.chunk_seconds:g} s chunks, {options.overlap_seconds:g} s overlap")
                case, whole = whole_utterance(eager, waveform, utterance.id, utterance.text, fe)
                candidate = {"logits": stitched(chunked_artifact, waveform, case.name, options)}
                for outcomes, reference in ((drift, whole),
                                            (served, {"logits": stitched(chunked_eager, waveform, case.name, options)})):
                    outcomes.append(compare_case(case, reference, candidate, output_names=["logits"], config=config,
                                                 task="ctc", tokenizer=tokenizer))
    report = {name: summarize(outcomes, target=artifact.target, precision=artifact.precision, task="ctc",
                              thresholds=gates, tokenizer=tokenizer, normalize=normalize)
              for name, outcomes, gates in (("served", served, thresholds),
                                            ("drift", drift, LONG_FORM_THRESHOLDS[artifact.precision]))}
    return LongFormReport(options, report["served"], report["drift"])
