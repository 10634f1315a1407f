"""One parity check, whoever runs it: the cases, where their reference outputs come from, the thresholds.

    ParityCheck(cases, reference, thresholds).run(artifact)  -> (ParityReport, per-case outcomes)

The build and `check` take the reference outputs from the eager model (`build.py` makes the cases
and the eager runner), `check --golden` from the outputs the build stored (`golden.py`), and a
corpus check on Ray runs this same check for the built-in cases on a worker (`distributed.py`,
whose corpus utterances are compared one by one with `parity.compare_case` as they stream in).
Everything after the reference is shared: the artifact's runner (through its window when it was
built for one shape), the comparisons, the report, the checking machine's ISA and the latency.

Torch-free: `check --golden` runs it on deployment targets without torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hubert_export import artifact as artifacts
from hubert_export.backends import load_runner
from hubert_export.model.config import load_config
from hubert_export.parity import CaseOutcome, ParityCase, ParityReport, run_cases, summarize
from hubert_export.runner import Runner, median_latency

log = logging.getLogger(__name__)


@dataclass
class ParityCheck:
    cases: list[ParityCase]
    reference: Runner  # the eager model, the stored golden outputs, or a recorder around the eager model
    thresholds: dict[str, float]
    normalize: bool = True  # how transcripts are scored against reference texts (parity.summarize)

    def run(self, artifact: artifacts.Artifact, *, latency_repeats: int = 0) -> tuple[ParityReport, list[CaseOutcome]]:
        """Run the artifact on every case against the reference, gate the outcomes, then time
        `latency_repeats` runs at the shape the artifact is built for (its opt shape)."""
        config = load_config(artifact.path)
        tokenizer = artifact.tokenizer()
        contract = artifact.input_contract
        log.info(f"parity check: {len(self.cases)} cases against {self.reference.name}")
        # A fixed-shape artifact runs each case through its window, as transcribe runs audio.
        with self.reference, load_runner(artifact) as candidate:
            outcomes = run_cases(self.reference, candidate, self.cases, config=config, task=artifact.task,
                                 tokenizer=tokenizer)
            report = summarize(outcomes, target=artifact.target, precision=artifact.precision, task=artifact.task,
                               thresholds=self.thresholds, tokenizer=tokenizer, normalize=self.normalize)
            note_machine(report, artifact)
            if latency_repeats > 0:
                opt = contract.opt
                log.info(f"latency: {latency_repeats} runs at batch {opt.batch} x {opt.samples} samples")
                report.latency = median_latency(candidate, candidate.input_names, opt.batch, opt.samples,
                                                latency_repeats)
        return report, outcomes


def note_machine(report: ParityReport, artifact: artifacts.Artifact) -> None:
    """Record in `report` the CPU that checked the artifact and its INT8 layer count, and say so when
    the artifact's INT8 arithmetic was meant for another kind of CPU (the verdict is this one's)."""
    from hubert_export.isa import check_section

    report.isa = check_section(artifact.precision, artifact.deployment_isa)
    report.int8_layers = artifact.int8_layers
    if report.isa["note"]:
        log.warning(report.isa["note"])
