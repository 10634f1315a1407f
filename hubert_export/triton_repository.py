"""`hubert-export serve --model-repository OUT`: artifacts laid out for users' own Triton servers.

Each artifact becomes `OUT/NAME/` in the layout of Triton's official back ends, which run the model
file itself (no front end, no chunking, no CTC decoding: clients send `input_values`, and
`attention_mask` where the artifact takes one, already normalised, and decode the logits):

    OUT/NAME/config.pbtxt          built from the manifest: I/O names, dtypes, dims, batching, instances
    OUT/NAME/1/<model files>       the artifact's model files, unchanged (default_model_filename names them)
    OUT/NAME/hubert-export/        manifest.json and the tokenizer/config files, to decode and to check

| target | Triton back end |
| --- | --- |
| onnx | `onnxruntime` (platform onnxruntime_onnx) |
| openvino | `openvino` |
| tensorrt | `tensorrt_plan` (the engine runs only on the GPU and TensorRT it was built for) |

LiteRT and ExecuTorch artifacts have no official Triton back end: serve those with `hubert-export serve`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from hubert_export.errors import HubertExportError

# target -> (the config's back end line, instance kind)
TRITON_BACKENDS = {
    "onnx": ('backend: "onnxruntime"\nplatform: "onnxruntime_onnx"', "KIND_CPU"),
    "openvino": ('backend: "openvino"', "KIND_CPU"),
    "tensorrt": ('platform: "tensorrt_plan"', "KIND_GPU"),
}
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


@dataclass(frozen=True)
class RepositoryOptions:
    max_batch: int = 16  # capped by the artifact's own largest batch
    max_queue_delay_ms: float = 2.0
    instances: int = 1


def model_config(artifact, name: str, options: RepositoryOptions = RepositoryOptions()) -> str:
    """The config.pbtxt (protobuf text format, Triton's ModelConfig) of one artifact."""
    from hubert_export.serve import output_dims

    manifest = artifact.manifest
    if artifact.target not in TRITON_BACKENDS:
        raise HubertExportError(f"artifact {artifact.path} is a {artifact.target} artifact, which no official Triton "
                                f"back end runs ({', '.join(TRITON_BACKENDS)} do): serve it with "
                                "`hubert-export serve` instead")
    if manifest.io is None:
        raise HubertExportError(f"artifact {artifact.path} was built before the manifest recorded its inputs and "
                                "outputs: rebuild it")
    backend, kind = TRITON_BACKENDS[artifact.target]
    contract = artifact.input_contract
    window = contract.window
    # A fixed-shape artifact takes one batch: Triton must not batch it (max_batch_size 0, full dims).
    batched = window is None
    max_batch = min(options.max_batch, contract.max.batch) if batched else 0
    lines = [f'name: "{name}"', backend, f"max_batch_size: {max_batch}",
             f'default_model_filename: "{artifact.model_files[0].name}"']
    for kind_name, tensors in (("input", manifest.io.inputs), ("output", manifest.io.outputs)):
        if kind_name == "input":
            tensors = [t for t in tensors if t.name in contract.input_names]
        for tensor in tensors:
            if tensor.dtype not in TRITON_DTYPES:
                raise HubertExportError(f"{tensor.name} has dtype {tensor.dtype}, which this writer does not map to "
                                        "Triton's: report it")
            shape = list(tensor.shape)
            if not batched:
                dims = [window.batch if d == "batch" else window.samples if d == "samples" else d for d in shape]
                dims = [d if isinstance(d, int) else -1 for d in dims]
            else:
                dims = list(output_dims(shape))
            lines.append(f"{kind_name} [\n  {{\n    name: \"{tensor.name}\"\n    data_type: {TRITON_DTYPES[tensor.dtype]}\n"
                         f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}\n]")
    if batched and max_batch > 1:
        # Requests of different lengths are not batched together (Triton batches equal shapes only),
        # which is what models without an attention mask need: their output changes with padding.
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(options.max_queue_delay_ms * 1000)}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {kind}\n  }}\n]")
    lines.append(f'parameters {{\n  key: "hubert_export_task"\n  value: {{ string_value: "{manifest.task}" }}\n}}')
    return "\n".join(lines) + "\n"


def write_model_repository(artifacts: list[str | Path], out: str | Path, *, names: list[str] | None = None,
                           options: RepositoryOptions = RepositoryOptions()) -> list[Path]:
    """Write each artifact (hashes verified first) as a model of the Triton repository `out`; returns
    the model directories. An existing model directory of the same name is replaced."""
    from hubert_export.artifact import MANIFEST_NAME, METADATA_FILES, Artifact
    from hubert_export.serve import check_batching_options, model_names

    check_batching_options(options.max_batch, options.max_queue_delay_ms, options.instances)
    paths = [Path(a) for a in artifacts]
    chosen = model_names(paths, names)
    opened = []
    for path in paths:  # every artifact checked before anything is written
        artifact = Artifact.open(path)
        artifact.verify_files()
        opened.append(artifact)
    configs = [model_config(a, n, options) for a, n in zip(opened, chosen)]
    out = Path(out)
    written = []
    for artifact, name, config in zip(opened, chosen, configs):
        model_dir = out / name
        staging = out / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "1").mkdir(parents=True)
        for file in artifact.model_files:
            shutil.copy2(file, staging / "1" / file.name)
        (staging / "hubert-export").mkdir()
        for meta in (MANIFEST_NAME, *METADATA_FILES):  # the artifact's own list: config, front end, tokenizer
            if (artifact.path / meta).is_file():
                shutil.copy2(artifact.path / meta, staging / "hubert-export" / meta)
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        shutil.rmtree(model_dir, ignore_errors=True)
        staging.rename(model_dir)  # a half-written model never sits where Triton would load it
        written.append(model_dir)
    return written
