"""transformers' eager model as a benchmark subject: the usual starting point users compare against.

Outside the package (transformers is only a test and benchmark dependency). A subject opens it
through `hubert_export.bench.Subject(opener="benchmarks/baselines.py:open_transformers")`, also in
the fresh process that measures its memory.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
import transformers  # imported with the module: before the memory probe's baseline

from hubert_export.bench import Subject, config_and_task
from hubert_export.runner import Runner

OPENER = f"{Path(__file__).resolve()}:open_transformers"


def transformers_subject(name: str, checkpoint: str | Path) -> Subject:
    return Subject(name, "transformers", str(checkpoint), opener=OPENER)


def open_transformers(subject: Subject, threads: int | None = None) -> Runner:
    if threads:
        import torch

        torch.set_num_threads(threads)
    config, task = config_and_task(subject)
    return TransformersRunner(subject.path, task, config.model_type)


class TransformersRunner(Runner):
    """transformers' own eager model (default attention implementation): the usual starting point."""

    def __init__(self, checkpoint: str | Path, task: str, model_type: str = "hubert") -> None:
        from hubert_export.tasks import FAMILIES

        spec = FAMILIES[model_type].task(task)
        self.checkpoint = checkpoint
        # Our model classes carry transformers' names.
        self.class_name = spec.model_class.__name__
        self.name = "transformers"
        self.input_names = ["input_values"]
        self.output_names = spec.output_names

    def _activate(self) -> None:
        self.model = getattr(transformers, self.class_name).from_pretrained(self.checkpoint).eval()

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(inputs["input_values"])))
        return {name: getattr(out, name).float().numpy() for name in self.output_names}

    def _deactivate(self) -> None:
        self.model = None
