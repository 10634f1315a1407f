"""The benchmark harness itself: percentiles, the bench.json schema, reports, the CLI. No timing assertions."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hubert_export.bench import SCHEMA_VERSION, Subject, _summarise, artifact_subject, markdown, run_benchmark, \
    write_results
from hubert_export.cli import main
from hubert_export.flops import count_flops
from hubert_export.plots import plot
from hubert_export.model import HubertConfig


def _benchmarks_module(name: str):
    """A module of the repository's benchmarks/ folder (scripts beside the package, not in it)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_percentiles_interpolate_linearly_between_runs():
    """p50/p90/p99 are numpy's linear interpolation between order statistics, checked by hand."""
    row = {"runs_s": [4.0, 1.0, 3.0, 2.0], "batch": 1, "seconds": 1.0, "gflop": 1.0}
    _summarise(row, ceiling_gflops=1.0, base=None)
    assert row["p50_s"] == 2.5  # position 1.5: halfway between 2 and 3
    assert row["p90_s"] == pytest.approx(3.7)  # position 2.7: 3 + 0.7 * (4 - 3)
    assert row["p99_s"] == pytest.approx(3.97)
    single = {"runs_s": [7.0], "batch": 1, "seconds": 1.0, "gflop": 1.0}
    _summarise(single, ceiling_gflops=1.0, base=None)
    assert single["p50_s"] == single["p99_s"] == 7.0


@pytest.fixture(scope="module")
def results(onnx_artifact, ctc_checkpoint):
    subjects = [artifact_subject(onnx_artifact, "tiny-onnx"), Subject("eager", "eager", str(ctc_checkpoint))]
    threads = torch.get_num_threads()  # threads=1 sets torch's global count for the eager subject
    try:
        # 0.02 s = 320 samples is below the artifact's minimum (400): skipped there, measured on eager.
        return run_benchmark(subjects, lengths=(0.02, 0.1), batches=(1, 2), repeats=2, warmup=0, threads=1,
                             baseline="eager", memory=True, ceiling_size=128)
    finally:
        torch.set_num_threads(threads)


def test_schema(results):
    assert results["schema_version"] == SCHEMA_VERSION
    assert set(results) >= {"created_utc", "machine", "settings", "ceiling", "subjects", "measurements", "notes"}
    assert {"isa", "flags"} <= set(results["machine"]["cpu"])  # every figure names the CPU's INT8-relevant flags
    assert results["settings"] == {"lengths_s": [0.02, 0.1], "batches": [1, 2], "repeats": 2, "warmup": 0,
                                   "threads": 1, "sample_rate": 16_000, "baseline": "eager"}
    assert results["ceiling"]["size"] == 128 and results["ceiling"]["gflops"] > 0
    assert len(results["ceiling"]["runs_s"]) == 5

    artifact, eager = results["subjects"]
    assert artifact["name"] == "tiny-onnx" and artifact["kind"] == "artifact" and artifact["error"] is None
    assert (artifact["target"], artifact["precision"], artifact["task"]) == ("onnx", "fp32", "ctc")
    assert artifact["size_bytes"] > 0 and artifact["load_seconds"] >= 0
    assert artifact["accuracy"]["passed"] is True
    assert artifact["accuracy"]["headline"]["metric"] == "1 - argmax_agreement"
    assert 0 <= artifact["accuracy"]["headline"]["value"] <= 1
    assert eager["kind"] == "eager" and eager["accuracy"] is None
    for record in (artifact, eager):
        memory = record["memory"]
        assert memory["peak_rss_bytes"] >= memory["baseline_rss_bytes"] > 0
        assert memory["peak_above_baseline_bytes"] == memory["peak_rss_bytes"] - memory["baseline_rss_bytes"]
        assert (memory["batch"], memory["samples"]) == (2, 1600)  # the largest shape both accept

    rows = {(m["subject"], m["seconds"], m["batch"]): m for m in results["measurements"]}
    assert len(rows) == 2 * 2 * 2
    skipped = rows[("tiny-onnx", 0.02, 1)]
    assert "shape range" in skipped["skipped"] and skipped["p50_s"] is None and skipped["runs_s"] == []
    config = HubertConfig.from_pretrained(results["subjects"][1]["path"])
    for (name, seconds, batch), m in rows.items():
        if m["skipped"]:
            continue
        assert len(m["runs_s"]) == 2 and all(t > 0 for t in m["runs_s"])
        assert m["p50_s"] == pytest.approx(float(np.median(m["runs_s"])))
        assert min(m["runs_s"]) <= m["p50_s"] <= m["p90_s"] <= m["p99_s"] <= max(m["runs_s"])
        assert m["gflop"] == pytest.approx(count_flops(config, m["samples"], batch)["total"] / 1e9)
        assert m["throughput_audio_s_per_s"] == pytest.approx(batch * seconds / m["p50_s"])
        assert m["real_time_factor"] == pytest.approx(1 / m["throughput_audio_s_per_s"])
        assert m["ceiling_share"] == pytest.approx(m["gflop"] / m["p50_s"] / results["ceiling"]["gflops"])
        base = rows[("eager", seconds, batch)]
        assert m["speedup"] == pytest.approx(base["p50_s"] / m["p50_s"])
    # The artifact computes what the eager model computes (FP32: tight).
    agreement = rows[("tiny-onnx", 0.1, 2)]["vs_baseline"]
    assert agreement["max_abs_error"] < 1e-4 and agreement["argmax_agreement"] == 1.0
    json.dumps(results)  # plain JSON types only


def test_reports(results, tmp_path):
    written = write_results(json.loads(json.dumps(results)), tmp_path)
    assert written == [tmp_path / "bench.json", tmp_path / "bench.md"]
    assert json.loads((tmp_path / "bench.json").read_text())["schema_version"] == SCHEMA_VERSION
    table = (tmp_path / "bench.md").read_text()
    assert table == markdown(json.loads((tmp_path / "bench.json").read_text()))
    assert "| tiny-onnx | 0.02 s | 1 | skipped:" in table and "| eager | 0.1 s | 2 |" in table
    pytest.importorskip("matplotlib")
    pngs, note = plot(json.loads(json.dumps(results)), tmp_path)
    assert note is None and {p.name for p in pngs} == {"latency.png", "accuracy_vs_speedup.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_cli(onnx_artifact, tmp_path, capsys):
    code = main(["bench", str(onnx_artifact), "--lengths", "0.1", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--no-memory", "--ceiling-size", "64", "--output", str(tmp_path), "--quiet"])
    assert code == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [m["subject"] for m in data["measurements"]] == [onnx_artifact.name]
    assert data["subjects"][0]["memory"] is None and data["settings"]["baseline"] is None
    out = capsys.readouterr().out
    assert f"| {onnx_artifact.name} | 0.1 s | 1 |" in out
    # --output draws the plots where matplotlib (the [bench] extra) is installed, and says how to get them elsewhere
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "latency.png" in out
    else:
        assert "pip install hubert-export[bench]" in out and not (tmp_path / "latency.png").exists()


def test_cli_without_matplotlib_says_how_to_get_the_plots(onnx_artifact, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code = main(["bench", str(onnx_artifact), "--lengths", "0.1", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--no-memory", "--ceiling-size", "64", "--output", str(tmp_path), "--quiet"])
    assert code == 0 and "plots skipped: matplotlib is not installed (pip install hubert-export[bench])" in \
        capsys.readouterr().out
    assert (tmp_path / "bench.json").is_file() and not list(tmp_path.glob("*.png"))


def test_cli_bad_input(tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--no-memory"]) == 2
    assert "not a hubert-export artifact" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(tmp_path), "--lengths", "0,1"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("checkpoint, class_name", [("ctc_checkpoint", "HubertForCTC"),
                                                     ("wav2vec2_ctc_checkpoint", "Wav2Vec2ForCTC")])
def test_transformers_baseline_opens_through_its_opener(checkpoint, class_name, request):
    """benchmarks/baselines.py: transformers' eager model as a subject, opened like any other."""
    pytest.importorskip("transformers")
    from hubert_export.bench import open_subject

    checkpoint = request.getfixturevalue(checkpoint)
    baselines = _benchmarks_module("baselines")
    subject = baselines.transformers_subject("transformers-eager", checkpoint)
    eager = Subject("eager", "eager", str(checkpoint))
    x = {"input_values": np.random.default_rng(0).standard_normal((1, 4000)).astype(np.float32)}
    with open_subject(subject) as theirs, open_subject(eager) as ours:
        assert theirs.class_name == class_name and type(ours.model).__name__ == class_name
        assert theirs.load_seconds is not None and theirs.load_seconds >= 0
        np.testing.assert_allclose(theirs.infer(x)["logits"], ours.infer(x)["logits"], atol=1e-4)


def test_cli_prints_an_int8_artifacts_layer_count_and_isa(ctc_checkpoint, tmp_path, capsys):
    from hubert_export.artifact import Artifact
    from hubert_export.build import export_artifact
    from hubert_export.recipes import default_recipe

    recipe = default_recipe("onnx", "int8").with_overrides(**{"calibration.method": "dynamic"})
    export_artifact(ctc_checkpoint, tmp_path / "int8", recipe, latency_repeats=0)
    artifact = Artifact.open(tmp_path / "int8")
    assert artifact.int8_layers > 0
    code = main(["bench", str(tmp_path / "int8"), "--lengths", "0.1", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--no-memory", "--ceiling-size", "64", "--quiet"])
    assert code == 0
    assert f"int8 ({artifact.int8_layers} INT8 layers, for {artifact.deployment_isa})" in capsys.readouterr().out
