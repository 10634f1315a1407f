"""Corpus checks and build matrices on Ray (hubert_export/distributed.py), on a local Ray of 2 CPUs.

The figures of a corpus check on Ray are compared with those of the single-process check of the
same artifact and corpus (`check_artifact`), which is the reference: equal, figure for figure,
at batch size 1; equal transcripts and near figures in padded batches.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hubert_export import cli
from hubert_export.build import DEFAULT_MODEL_DIR, check_artifact, export_artifact
from hubert_export.errors import HubertExportError
from hubert_export.recipes import default_recipe

from .test_build import _perturbed_copy

SPEECH_DIR = Path(__file__).parent / "data" / "speech"
CLIPS = ["utt00", "utt03", "utt05", "utt08", "utt11", "utt14"]  # 1.1 to 2.4 s


def _figures(report) -> dict:
    """A report's content without its wall times (which no two runs share)."""
    data = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    for case in data["cases"]:
        case.pop("seconds_reference")
        case.pop("seconds_candidate")
    return data


def _single(artifact: Path, corpus: Path, **options):
    """The single-process check, with the intra-op threads of the Ray workers (one each: their CPUs):
    float sums split over another number of threads round differently in the last bits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return check_artifact(artifact, data_dir=corpus, latency_repeats=0, **options)
    finally:
        torch.set_num_threads(threads)


def _junit_cases(xml: str) -> list[tuple]:
    root = ET.fromstring(xml)
    return [(case.get("classname"), case.get("name"), [f.get("message") for f in case.findall("failure")])
            for case in root.iter("testcase")]


# ------------------------------------------------------------------------------------------ no Ray needed
def test_without_ray_the_flag_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code = cli.main(["check", str(tmp_path), "--data", str(SPEECH_DIR), "--ray"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "hubert-export: error: --ray needs Ray, an optional extra: pip install 'hubert-export[ray]'\n"
    code = cli.main(["build", "--matrix", "recipes/ci-gate.yaml", "--ray"])
    assert code == 2 and capsys.readouterr().err == err


def test_ray_options_without_ray_and_several_artifacts_are_refused(tmp_path, capsys):
    code = cli.main(["check", str(tmp_path), "--workers", "2", "--results-dir", str(tmp_path)])
    assert code == 2 and "--workers, --results-dir configure a check on Ray: add --ray" in capsys.readouterr().err
    code = cli.main(["check", str(tmp_path), str(tmp_path / "b")])
    assert code == 2 and "check takes one artifact (2 given)" in capsys.readouterr().err


def test_length_buckets_pad_less_than_corpus_order():
    from hubert_export.distributed import padding_fraction, plan_batches

    lengths = [16_000, 48_000, 17_000, 47_000, 30_000, 31_000, 400]
    assert plan_batches(lengths, 2, bucketing=False) == [[0, 1], [2, 3], [4, 5], [6]]
    assert plan_batches(lengths, 2, bucketing=True) == [[6, 0], [2, 4], [5, 3], [1]]  # by length, ties by position
    lengths = lengths[:6]
    in_order, bucketed = plan_batches(lengths, 2, bucketing=False), plan_batches(lengths, 2, bucketing=True)
    # corpus order pairs 16k with 48k: 32k + 30k + 1k of padding in 96k + 94k + 62k samples run
    assert padding_fraction(lengths, in_order) == pytest.approx(63_000 / 252_000)
    assert padding_fraction(lengths, bucketed) == pytest.approx(3_000 / 192_000)
    assert padding_fraction(lengths, plan_batches(lengths, 1, bucketing=True)) == 0


def test_payloads_between_stages_round_trip_without_pickle():
    import numpy as np

    from hubert_export.distributed import pack_payload, unpack_payload

    value = {"groups": [{"ids": ["a", "b"], "lengths": [400, 1234], "texts": ["HI", None], "seconds": 0.25,
                         "inputs": {"input_values": np.arange(6, dtype=np.float32).reshape(2, 3),
                                    "attention_mask": np.ones((2, 3), dtype=np.int64)}}],
             "encoded": b"RIFF\x00", "count": np.int64(3)}
    back = unpack_payload(pack_payload(value))
    group = back["groups"][0]
    assert group["ids"] == ["a", "b"] and group["texts"] == ["HI", None] and group["seconds"] == 0.25
    for name, array in value["groups"][0]["inputs"].items():
        assert group["inputs"][name].dtype == array.dtype and np.array_equal(group["inputs"][name], array)
    assert back["encoded"] == b"RIFF\x00" and back["count"] == 3


def test_results_file_drops_a_torn_line_keeps_ids_once_and_refuses_another_run(tmp_path):
    from hubert_export.distributed import ResultsFile

    path = tmp_path / "a.jsonl"
    results = ResultsFile(path, {"corpus": "c", "batch_size": 1})
    assert results.add({"id": "u1", "index": 0}) and results.add({"id": "u2", "index": 1})
    assert not results.add({"id": "u1", "index": 0})  # never twice
    results.close()
    with open(path, "a") as f:
        f.write('{"id": "u3", "ind')  # a run killed mid-write
    again = ResultsFile(path, {"corpus": "c", "batch_size": 1})
    assert again.resumed == 2 and set(again.records) == {"u1", "u2"}
    assert again.add({"id": "u3", "index": 2})
    again.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    with pytest.raises(HubertExportError, match=r"a.jsonl holds results of another check .*: pass another --results-dir"):
        ResultsFile(path, {"corpus": "c", "batch_size": 4})


# ------------------------------------------------------------------------------------------ on a local Ray
@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs, started once for the Ray tests (this module: no other uses Ray) and
    stopped after them, so its processes do not share the cores with the rest of the suite.
    Its workers inherit this process's environment (PYTHONPATH: this checkout)."""
    ray = pytest.importorskip("ray", reason="the Ray tests need the [ray] extra")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    print(f"local Ray started in {time.perf_counter() - started:.1f} s")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray-artifacts") / "tiny-onnx"
    result = export_artifact(DEFAULT_MODEL_DIR, out, default_recipe("onnx"), latency_repeats=0)
    assert result.passed, result.report.failures
    return out


@pytest.fixture(scope="module")
def nemo_corpus(tmp_path_factory) -> Path:
    """Six clips listed in a NeMo JSON Lines manifest (paths relative to it), transcripts beside."""
    folder = tmp_path_factory.mktemp("ray-corpus")
    texts = dict(line.split("\t") for line in (SPEECH_DIR / "transcripts.tsv").read_text().splitlines())
    lines = []
    for clip in CLIPS:
        shutil.copy(SPEECH_DIR / f"{clip}.flac", folder / f"{clip}.flac")
        lines.append(json.dumps({"audio_filepath": f"{clip}.flac", "text": texts[clip].lower()}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


@pytest.fixture(scope="module")
def full_run(local_ray, shipped_onnx, nemo_corpus, tmp_path_factory):
    """`check --ray` through the command line, on a passing artifact and a drifted copy of it."""
    root = tmp_path_factory.mktemp("ray-full")
    drifted = _perturbed_copy(shipped_onnx, root / "drifted")
    argv = ["check", str(shipped_onnx), str(drifted), "--data", str(nemo_corpus), "--ray", "--quiet",
            "--cpus-per-worker", "0.5", "--latency-repeats", "0", "--results-dir", str(root / "results"),
            "--report-dir", str(root / "reports"), "--junit", str(root / "parity.xml")]
    started = time.perf_counter()
    code = cli.main(argv)
    print(f"check --ray of 2 artifacts x {len(CLIPS)} utterances: {time.perf_counter() - started:.1f} s")
    return {"code": code, "root": root, "artifacts": [shipped_onnx, drifted]}


def test_corpus_check_on_ray_gives_the_single_process_figures(full_run, nemo_corpus, capsys):
    root = full_run["root"]
    suites = ET.parse(root / "parity.xml").getroot()
    assert suites.tag == "testsuites" and len(suites) == 2
    for artifact, suite in zip(full_run["artifacts"], suites):
        single_dir = root / f"single-{artifact.name}"
        single = _single(artifact, nemo_corpus, report_dir=single_dir, junit=root / f"single-{artifact.name}.xml")
        on_ray = json.loads((root / "reports" / artifact.name / "parity.json").read_text())
        assert _figures(on_ray) == _figures(single)  # every metric, failure, transcript and CER/WER
        assert [c["name"] for c in on_ray["cases"]][-len(CLIPS):] == CLIPS  # corpus order
        assert _junit_cases(ET.tostring(suite, encoding="unicode")) == \
            _junit_cases((root / f"single-{artifact.name}.xml").read_text())
    assert on_ray["passed"] is False and single.failures  # the drifted copy fails, on Ray as alone
    assert full_run["code"] == 1  # one artifact failed: the single check's exit code for it
    ground_truth = json.loads((root / "reports" / "tiny-onnx" / "parity.json").read_text())["ground_truth"]
    assert ground_truth["utterances"] == len(CLIPS)
    summary = json.loads((root / "reports" / "ray-check.json").read_text())
    assert summary["computed"] == len(CLIPS) and summary["padding_fraction"] == 0.0
    lines = (root / "results" / next(p.name for p in (root / "results").glob("tiny-onnx-*.jsonl"))).read_text()
    assert len(lines.splitlines()) == 1 + len(CLIPS)  # the header, one line per utterance


def test_interrupted_run_resumes_without_double_counting(full_run, shipped_onnx, nemo_corpus, tmp_path):
    from hubert_export.distributed import check_corpus

    results = tmp_path / "results"
    results.mkdir()
    full = next((full_run["root"] / "results").glob("tiny-onnx-*.jsonl"))
    lines = full.read_text().splitlines(keepends=True)
    # As a killed run leaves it: the header, two utterances, half a third line.
    (results / full.name).write_text("".join(lines[:3]) + lines[3][:25])
    result = check_corpus([shipped_onnx], nemo_corpus, results_dir=results, latency_repeats=0,
                          report_dir=tmp_path / "reports")
    assert result.resumed == {"tiny-onnx": 2} and result.computed == len(CLIPS) - 2
    written = [json.loads(line) for line in (results / full.name).read_text().splitlines()[1:]]
    assert sorted(r["id"] for r in written) == sorted(CLIPS)  # each once
    single = _single(shipped_onnx, nemo_corpus)
    assert _figures(result.reports["tiny-onnx"]) == _figures(single)

    again = check_corpus([shipped_onnx], nemo_corpus, results_dir=results, latency_repeats=0)
    assert again.computed == 0 and again.resumed == {"tiny-onnx": len(CLIPS)}
    assert _figures(again.reports["tiny-onnx"]) == _figures(single)


def test_a_worker_killed_mid_run_is_retried_and_the_totals_are_right(local_ray, shipped_onnx, nemo_corpus, tmp_path):
    from hubert_export.distributed import check_corpus

    marker = tmp_path / "crashed"
    from .hooks import CrashingArtifactWorker

    env = {"HUBERT_EXPORT_CRASH_MARKER": str(marker),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = check_corpus([shipped_onnx], nemo_corpus, results_dir=tmp_path / "results", latency_repeats=0,
                          runtime_env={"env_vars": env}, worker_class=CrashingArtifactWorker)
    assert marker.exists()  # an artifact worker exited on its second batch; Ray restarted it and retried that
    assert result.computed == len(CLIPS)
    records = [json.loads(line) for line in next((tmp_path / "results").glob("*.jsonl")).read_text().splitlines()[1:]]
    assert sorted(r["id"] for r in records) == sorted(CLIPS)
    single = _single(shipped_onnx, nemo_corpus)
    assert _figures(result.reports["tiny-onnx"]) == _figures(single)


@pytest.mark.slow  # 15 s: CI keeps the Ray tests near 90 s; the planning is tested above without Ray
def test_length_buckets_in_padded_batches(local_ray, shipped_onnx, nemo_corpus, tmp_path):
    from hubert_export.distributed import check_corpus

    result = check_corpus([shipped_onnx], nemo_corpus, batch_size=3, results_dir=tmp_path / "results",
                          latency_repeats=0)
    assert result.batches == 2 and 0 < result.padding_fraction < 0.25
    single = _single(shipped_onnx, nemo_corpus)
    report = result.reports["tiny-onnx"]
    assert report.passed and report.ground_truth == single.ground_truth  # the same transcripts
    on_ray = {c.name: c for c in report.cases}
    for case in single.cases:  # each utterance compared on its own frames, so padding is not counted
        assert on_ray[case.name].shape == case.shape
        assert on_ray[case.name].metrics["argmax_agreement"] == pytest.approx(case.metrics["argmax_agreement"], abs=0.02)
        assert on_ray[case.name].metrics["max_abs_error"] < 1e-3


@pytest.mark.slow  # 35 s: a second driver process joins the session's Ray
def test_a_driver_killed_mid_run_resumes_from_its_results(local_ray, shipped_onnx, nemo_corpus, tmp_path):
    """A real interruption: `check --ray ADDRESS` in another process joins this Ray, is held after
    its first batch (tests/hooks.py) and killed; the same command then finishes the corpus."""
    from hubert_export.distributed import check_corpus

    address = local_ray.get_runtime_context().gcs_address
    results = tmp_path / "results"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "tests.hooks", "hold-after-first-results", str(tmp_path / "never"), "--",
               "check", str(shipped_onnx), "--data", str(nemo_corpus),
               "--ray", address, "--results-dir", str(results), "--latency-repeats", "0"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            files = list(results.glob("*.jsonl"))
            if files and len(files[0].read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # held: nothing more is written
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    written = files[0].read_text().splitlines()
    assert len(written) == 2  # the header and the first utterance
    result = check_corpus([shipped_onnx], nemo_corpus, results_dir=results, latency_repeats=0)
    assert result.resumed == {"tiny-onnx": 1} and result.computed == len(CLIPS) - 1
    single = _single(shipped_onnx, nemo_corpus)
    assert _figures(result.reports["tiny-onnx"]) == _figures(single)


@pytest.mark.slow  # 15 s: a fresh actor pool
def test_bad_audio_on_a_worker_is_one_line_naming_the_manifest_line(local_ray, shipped_onnx, nemo_corpus, tmp_path):
    from hubert_export.distributed import check_corpus

    corpus = tmp_path / "corpus"
    shutil.copytree(nemo_corpus.parent, corpus)
    (corpus / "utt05.flac").write_bytes(b"not audio")
    with pytest.raises(HubertExportError) as info:
        check_corpus([shipped_onnx], corpus / "manifest.jsonl", results_dir=tmp_path / "results", latency_repeats=0)
    assert str(info.value).startswith(f"cannot read audio of {corpus / 'manifest.jsonl'} line 3 (")
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    # a checkpoint that is not there names the driver's path, not a worker's copy
    with pytest.raises(HubertExportError, match=f"checkpoint {SPEECH_DIR} has no config.json"):
        check_corpus([shipped_onnx], None, reference=SPEECH_DIR, latency_repeats=0)


def test_a_matrix_without_ray_builds_one_after_another_and_goes_on_after_an_error(tmp_path, capsys):
    from hubert_export.artifact import Artifact

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "first.yaml").write_text("target: onnx\nprecision: fp32\n")
    (recipes / "second.yaml").write_text("target: onnx\nprecision: fp32\nthresholds: {max_abs_error: 1.0e-12}\n")
    (tmp_path / "out" / "taken").mkdir(parents=True)
    (tmp_path / "out" / "taken" / "notes.txt").write_text("someone else's")
    (recipes / "taken.yaml").write_text("target: onnx\nprecision: fp32\n")
    code = cli.main(["build", "--matrix", *(str(recipes / f"{n}.yaml") for n in ("first", "taken", "second")),
                     "--output", str(tmp_path / "out"), "--latency-repeats", "0", "--quiet"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "| PASS |" in rows["first"] and "| FAIL |" in rows["second"] and "exists" in rows["taken"]
    assert code != 0 and Artifact.open(tmp_path / "out" / "first").precision == "fp32"
    assert [p.name for p in (tmp_path / "out" / "taken").iterdir()] == ["notes.txt"]  # left alone


def test_a_matrix_of_two_recipes_builds_both(local_ray, tmp_path, capsys):
    from hubert_export.artifact import Artifact

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "fp32.yaml").write_text("target: onnx\nprecision: fp32\n")
    (recipes / "int8.yaml").write_text("target: onnx\nprecision: int8\ncalibration: {subset_size: 4}\n")
    started = time.perf_counter()
    code = cli.main(["build", "--matrix", str(recipes / "fp32.yaml"), str(recipes / "int8.yaml"),
                     "--output", str(tmp_path / "out"), "--ray", "--latency-repeats", "0", "--quiet"])
    print(f"matrix of 2 on Ray: {time.perf_counter() - started:.1f} s")
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| fp32") or line.startswith("| int8")]
    assert len(rows) == 2 and all("| PASS |" in row for row in rows)
    for name, precision in (("fp32", "fp32"), ("int8", "int8")):
        artifact = Artifact.open(tmp_path / "out" / name)
        artifact.verify_files()  # came back through the object store whole
        assert artifact.precision == precision
        assert artifact.manifest.source.checkpoint == str(DEFAULT_MODEL_DIR.resolve())
    assert check_artifact(tmp_path / "out" / "fp32", latency_repeats=0).passed  # found its checkpoint

    # Occupied outputs are refused before any build; the table says so for each.
    code = cli.main(["build", "--matrix", str(recipes / "fp32.yaml"), "--output", str(tmp_path / "out"),
                     "--ray", "--quiet"])
    out = capsys.readouterr().out
    assert code == 2 and "| ERROR |" in out and "already exists and is not empty" in out
