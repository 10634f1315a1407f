"""Golden outputs: the parity gate re-run with neither torch nor the checkpoint.

A build stores its parity cases' inputs and the eager model's outputs on them in the artifact
(`golden.npz`, compressed), as Polygraphy saves its comparison runs. `check_golden` (the CLI's
`check ARTIFACT --golden`) then compares the back end's outputs with those stored ones, on the
deployment target itself (a Jetson, an ARM board, a CI runner without torch) with only the back
end's runtime: the same cases, the same metrics and thresholds as the full check, hence the same
verdict.

    golden.npz               case<i>.input.<name> and case<i>.output.<name> arrays
    manifest.json "golden"   {file, cases: [{name, sample_lengths, reference_texts}], input_names,
                             output_names, thresholds, reference, bytes (uncompressed)} or, when not
                             stored, {skipped: why, bytes}

Sizes (`estimate_golden_bytes`, uncompressed float32; deflate gains little on noise-like floats;
the attention mask is not stored but rebuilt from the sample lengths), hubert-large (1024 wide,
24 layers, 32-symbol CTC head):

    cases                                      feature-extraction   ctc
    built-in (137,711 samples, 425 frames)     2.3 MB               0.6 MB
    built-in, all hidden states                45.7 MB              44.0 MB
    one 60 s utterance (--data)                16.1 MB              4.2 MB
    one 60 s utterance, all hidden states      323 MB               311 MB
    static shape 16 x 60 s (OpenVINO)          258 MB               68 MB

`verification.golden: auto` (the default) stores them up to `verification.golden_max_mb` (64 MB):
the built-in cases always; beyond the limit (four 60 s data cases of hubert-large, a 60 s case
with hidden states) they are skipped, as the build log and the manifest say; `always` and `never`
do as they say.

Nothing here imports torch (tests/test_golden.py checks it, in a virtual environment without it).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hubert_export import artifact as artifacts
from hubert_export.errors import HubertExportError
from hubert_export.model.config import HubertConfig
from hubert_export.parity import ParityCase, ParityReport
from hubert_export.recipes import Recipe
from hubert_export.runner import Runner
from hubert_export.verification import ParityCheck

GOLDEN_NAME = "golden.npz"
log = logging.getLogger(__name__)


def _digest(inputs: dict[str, np.ndarray]) -> str:
    """Identifies one case's inputs (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class RecordingRunner(Runner):
    """Runs another runner and keeps every (inputs, outputs) pair: the build's eager reference,
    recorded while the parity check runs, so the golden outputs cost no second forward pass."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.name = inner.name
        self.input_names = inner.input_names
        self.output_names = inner.output_names
        self.records: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    def _activate(self) -> None:
        self.inner.activate()

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.inner.infer(inputs)
        self.records.append((dict(inputs), outputs))
        return outputs

    def _deactivate(self) -> None:
        self.inner.deactivate()


class GoldenRunner(Runner):
    """The stored reference: returns, for a case's inputs, the outputs the eager model gave at build time."""

    def __init__(self, input_names: list[str], output_names: list[str],
                 records: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> None:
        self.name = "golden"
        self.input_names = input_names
        self.output_names = output_names
        self._outputs = {_digest(inputs): outputs for inputs, outputs in records}

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = _digest({k: v for k, v in inputs.items() if k in self.input_names})
        if key not in self._outputs:
            raise HubertExportError("these inputs are not among the golden cases stored at build time: "
                                    "check --golden runs the stored cases only")
        return self._outputs[key]


def estimate_golden_bytes(config: HubertConfig, task: str, shapes: list[tuple[int, int]], *,
                          output_hidden_states: bool = False) -> int:
    """Uncompressed size of the golden arrays of cases of these (batch, samples) shapes: float32
    input_values and outputs, padded batches stored whole (no attention mask: it is rebuilt from
    the sample lengths)."""
    total = 0
    for batch, samples in shapes:
        total += batch * samples * 4
        frames = config.num_frames(samples)
        if task == "sequence-classification":
            total += batch * config.num_labels * 4
        else:
            width = config.vocab_size if task == "ctc" else config.hidden_size
            total += batch * frames * width * 4
        if output_hidden_states:
            total += batch * (config.num_hidden_layers + 1) * frames * config.hidden_size * 4
    return total


def write_golden(directory: Path, cases: list[ParityCase], recorder: RecordingRunner,
                 thresholds: dict[str, float], recipe: Recipe) -> dict[str, Any]:
    """Store the cases' inputs and the recorded reference outputs in `directory` as the recipe's
    `verification.golden` says; returns the manifest's `golden` section."""
    if len(recorder.records) != len(cases):
        raise ValueError(f"recorded {len(recorder.records)} reference runs for {len(cases)} cases")
    arrays: dict[str, np.ndarray] = {}
    for i, (inputs, outputs) in enumerate(recorder.records):
        # The attention mask is not stored: it is ones over each item's samples (prepare_batch), and
        # the sample lengths are in the manifest; as int64 it would be two thirds of the file.
        arrays.update({f"case{i}.input.{name}": value for name, value in inputs.items()
                       if name in recorder.input_names and name != "attention_mask"})
        arrays.update({f"case{i}.output.{name}": value for name, value in outputs.items()})
    size = sum(a.nbytes for a in arrays.values())
    policy, limit_mb = recipe.verification.golden, recipe.verification.golden_max_mb
    if policy == "never" or (policy == "auto" and size > limit_mb * 1e6):
        why = ("verification.golden: never" if policy == "never" else
               f"{size / 1e6:.1f} MB exceeds verification.golden_max_mb {limit_mb:g} (set golden: always to keep them)")
        log.info(f"golden outputs not stored: {why}")
        return {"skipped": why, "bytes": size}
    np.savez_compressed(directory / GOLDEN_NAME, **arrays)
    log.info(f"golden outputs stored: {GOLDEN_NAME}, {size / 1e6:.2f} MB uncompressed, "
             f"{(directory / GOLDEN_NAME).stat().st_size / 1e6:.2f} MB on disk")
    return {
        "file": GOLDEN_NAME, "bytes": size, "reference": recorder.name, "thresholds": thresholds,
        "input_names": list(recorder.input_names), "output_names": list(recorder.output_names),
        "cases": [{"name": c.name, "sample_lengths": c.sample_lengths, "reference_texts": c.reference_texts}
                  for c in cases],
    }


def attention_mask(sample_lengths: list[int], samples: int) -> np.ndarray:
    """The mask prepare_batch gives a batch of these lengths padded to `samples`."""
    return (np.arange(samples)[None, :] < np.asarray(sample_lengths)[:, None]).astype(np.int64)


def _load(artifact: artifacts.Artifact) -> tuple[dict[str, Any], list[ParityCase], GoldenRunner]:
    section = artifact.manifest.golden
    if not isinstance(section, dict) or "file" not in section:
        why = section.get("skipped") if isinstance(section, dict) else "built before golden outputs existed"
        raise HubertExportError(f"artifact {artifact.path} has no golden outputs ({why}): run the full check "
                                "(hubert-export check without --golden), or rebuild with verification.golden: always")
    try:
        with np.load(artifact.path / section["file"], allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        cases, records = [], []
        for i, case in enumerate(section["cases"]):
            inputs = {n: arrays[f"case{i}.input.{n}"] for n in section["input_names"] if n != "attention_mask"}
            if "attention_mask" in section["input_names"]:
                inputs["attention_mask"] = attention_mask(case["sample_lengths"], inputs["input_values"].shape[1])
            outputs = {n: arrays[f"case{i}.output.{n}"] for n in section["output_names"]}
            cases.append(ParityCase(case["name"], inputs, list(case["sample_lengths"]), case.get("reference_texts")))
            records.append((inputs, outputs))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise HubertExportError(f"artifact {artifact.path}: its golden outputs are damaged ({type(exc).__name__}: "
                                f"{str(exc)[:120]}): rebuild the artifact") from None
    return section, cases, GoldenRunner(list(section["input_names"]), list(section["output_names"]), records)


def check_golden(artifact_dir: str | Path, *, junit: str | Path | None = None,
                 latency_repeats: int = 3) -> ParityReport:
    """Re-run an artifact's parity gate against the outputs stored at build time: no torch, no checkpoint.

    The files are verified against the manifest first (a modified model file is refused), then the
    back end runs the stored cases and is held to the thresholds the build used. Writes nothing
    into the artifact; `ParityReport.write` puts the reports where the caller wants them.
    """
    artifact = artifacts.Artifact.open(artifact_dir)
    log.info(f"verifying the files of {artifact.path}")
    artifact.verify_files()
    section, cases, reference = _load(artifact)
    report, _ = ParityCheck(cases, reference, dict(section["thresholds"])).run(artifact, latency_repeats=latency_repeats)
    if junit:
        Path(junit).write_text(report.to_junit())
    return report

