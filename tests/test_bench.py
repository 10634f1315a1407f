"""The benchmark harness itself: percentiles, the bench.json schema, reports, the CLI. No timing assertions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hubert_export.bench import SCHEMA_VERSION, Subject, artifact_subject, markdown, percentile, run_benchmark, \
    write_results
from hubert_export.cli import main
from hubert_export.flops import count_flops
from hubert_export.model import HubertConfig


def test_percentile_hand_checked():
    # Linear between order statistics: position (n - 1) * q / 100 in the sorted values.
    assert percentile([4, 1, 3, 2], 50) == 2.5  # position 1.5: halfway between 2 and 3
    assert percentile([4, 1, 3, 2], 90) == pytest.approx(3.7)  # position 2.7: 3 + 0.7 * (4 - 3)
    assert percentile([4, 1, 3, 2], 0) == 1 and percentile([4, 1, 3, 2], 100) == 4
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 101])
def test_percentile_matches_numpy(n):
    values = list(np.random.default_rng(n).exponential(size=n))
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12, abs=0)


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
    assert json.loads((tmp_path / "bench.json").read_text())["schema_version"] == SCHEMA_VERSION
    table = (tmp_path / "bench.md").read_text()
    assert table == markdown(json.loads((tmp_path / "bench.json").read_text()))
    assert "| tiny-onnx | 0.02 s | 1 | skipped:" in table and "| eager | 0.1 s | 2 |" in table
    pytest.importorskip("matplotlib")
    pngs = {p.name for p in written if p.suffix == ".png"}
    assert pngs == {"latency.png", "accuracy_vs_speedup.png"}
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)


def test_cli(onnx_artifact, tmp_path, capsys):
    code = main(["bench", str(onnx_artifact), "--lengths", "0.1", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--no-memory", "--ceiling-size", "64", "--output", str(tmp_path), "--quiet"])
    assert code == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [m["subject"] for m in data["measurements"]] == [onnx_artifact.name]
    assert data["subjects"][0]["memory"] is None and data["settings"]["baseline"] is None
    assert f"| {onnx_artifact.name} | 0.1 s | 1 |" in capsys.readouterr().out


def test_cli_bad_input(tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--no-memory"]) == 2
    assert "not a hubert-export artifact" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(tmp_path), "--lengths", "0,1"])
    assert exit_info.value.code == 2
