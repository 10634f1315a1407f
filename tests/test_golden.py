"""Golden outputs and a check that leaves the artifact alone: `check --golden` without torch, the
same verdict as the full check, reports outside the artifact, a read-only artifact unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hubert_export import cli
from hubert_export.artifact import Artifact
from hubert_export.build import check_artifact, export_artifact
from hubert_export.golden import GOLDEN_NAME, check_golden, estimate_golden_bytes
from hubert_export.model.config import HubertConfig
from hubert_export.recipes import default_recipe

from .conftest import run_without_torch as _without_torch
from .test_build import _perturbed_copy

REPO = Path(__file__).resolve().parent.parent
# The modules `check --golden` runs: none may import torch.
GOLDEN_PATH_MODULES = ("hubert_export", "hubert_export.cli", "hubert_export.artifact", "hubert_export.parity",
                       "hubert_export.recipes", "hubert_export.golden", "hubert_export.tokenizer",
                       "hubert_export.runner", "hubert_export.backends.onnxruntime",
                       "hubert_export.backends.openvino")
BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is blocked: this process stands for a machine without torch")
sys.meta_path.insert(0, _NoTorch())
"""


def _snapshot(directory: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under `directory`: its sha256 (files), mode and mtime."""
    entries = {}
    for path in sorted(directory.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        info = path.stat()
        entries[path.relative_to(directory).as_posix()] = (digest, info.st_mode, info.st_mtime_ns)
    return entries


def _metrics(report) -> list[tuple[str, dict[str, float]]]:
    return [(case.name, case.metrics) for case in report.cases]


# ------------------------------------------------------------------------------------------ build side
def test_build_hashes_its_reports_and_golden_outputs(onnx_artifact):
    manifest = json.loads((onnx_artifact / "manifest.json").read_text())
    files = set(manifest["files"])
    on_disk = {p.relative_to(onnx_artifact).as_posix() for p in onnx_artifact.rglob("*") if p.is_file()}
    assert files == on_disk - {"manifest.json"}  # every file hashed, the reports and golden.npz included
    assert {"parity.json", "parity.md", GOLDEN_NAME} <= files
    Artifact.open(onnx_artifact).verify_files()
    golden = manifest["golden"]
    assert [c["name"] for c in golden["cases"]] == [c["name"] for c in
                                                    json.loads((onnx_artifact / "parity.json").read_text())["cases"]]
    assert golden["thresholds"] == manifest["parity"]["thresholds"] and golden["reference"] == "eager-float32"


def test_golden_size_is_what_the_shapes_say(onnx_artifact):
    manifest = json.loads((onnx_artifact / "manifest.json").read_text())
    config = HubertConfig.from_pretrained(onnx_artifact)
    shapes = [tuple(c["shape"]) for c in json.loads((onnx_artifact / "parity.json").read_text())["cases"]]
    with np.load(onnx_artifact / GOLDEN_NAME) as stored:
        stored_bytes = sum(stored[k].nbytes for k in stored.files)
    assert manifest["golden"]["bytes"] == stored_bytes == estimate_golden_bytes(config, "ctc", shapes)


def test_golden_policy_never_and_size_limit(ctc_checkpoint, tmp_path, capsys):
    for name, overrides, stored in [
        ("never", {"verification.golden": "never"}, False),
        ("small-limit", {"verification.golden_max_mb": 0.01}, False),
        ("always", {"verification.golden": "always", "verification.golden_max_mb": 0.01}, True),
    ]:
        recipe = default_recipe("onnx").with_overrides(**{"shapes.max.samples": 20_000, **overrides})
        export_artifact(ctc_checkpoint, tmp_path / name, recipe, latency_repeats=0)
        section = Artifact.open(tmp_path / name).manifest.golden
        assert (tmp_path / name / GOLDEN_NAME).is_file() == stored == ("file" in section), name
        if not stored:
            assert ("never" if name == "never" else "exceeds verification.golden_max_mb 0.01") in section["skipped"]
            code = cli.main(["check", str(tmp_path / name), "--golden", "--quiet"])
            err = capsys.readouterr().err
            assert code == 2 and "has no golden outputs" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------ check side
def test_golden_verdict_agrees_with_the_full_check(onnx_artifact, tmp_path):
    full, golden = check_artifact(onnx_artifact, latency_repeats=0), check_golden(onnx_artifact, latency_repeats=0)
    assert full.passed and golden.passed
    assert [n for n, _ in _metrics(golden)] == [n for n, _ in _metrics(full)]
    for (_, g), (_, f) in zip(_metrics(golden), _metrics(full)):
        assert g.keys() == f.keys() and all(g[k] == pytest.approx(f[k], rel=1e-9, abs=1e-12) for k in g)

    drifted = _perturbed_copy(onnx_artifact, tmp_path / "drifted")  # re-hashed: only the numbers tell
    full, golden = check_artifact(drifted, latency_repeats=0), check_golden(drifted, latency_repeats=0)
    assert not full.passed and not golden.passed
    assert golden.failures == full.failures


def test_check_leaves_a_read_only_artifact_untouched(onnx_artifact, tmp_path, capsys):
    artifact = tmp_path / "read-only"
    shutil.copytree(onnx_artifact, artifact)
    for path in [*artifact.rglob("*"), artifact]:  # write bits cleared, as on a read-only mount
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _snapshot(artifact)
    try:
        reports = tmp_path / "reports"
        code = cli.main(["check", str(artifact), "--report-dir", str(reports), "--quiet", "--latency-repeats", "1"])
        out = capsys.readouterr().out
        assert code == 0 and f"reports {reports / 'parity.json'}" in out
        assert json.loads((reports / "parity.json").read_text())["passed"] is True
        assert "Verdict: **PASS**" in (reports / "parity.md").read_text()

        code = cli.main(["check", str(artifact), "--golden", "--quiet"])  # default: a new temporary directory
        out = capsys.readouterr().out
        assert code == 0
        printed = Path(out.split("reports ")[1].split(",")[0])
        assert printed.parent != artifact and json.loads(printed.read_text())["passed"] is True
        shutil.rmtree(printed.parent)
        assert _snapshot(artifact) == before  # every file's hash, mode and mtime, and no new entry
    finally:
        for path in [artifact, *artifact.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_golden_and_data_or_reference_do_not_mix(onnx_artifact, capsys):
    code = cli.main(["check", str(onnx_artifact), "--golden", "--reference", str(onnx_artifact), "--quiet"])
    assert code == 2 and "drop --reference" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ without torch
def test_golden_path_imports_no_torch(onnx_artifact, tmp_path):
    script = BLOCK_TORCH + f"""
import importlib, sys
for name in {GOLDEN_PATH_MODULES!r}:
    importlib.import_module(name)
from hubert_export.cli import main
code = main(["check", {str(onnx_artifact)!r}, "--golden", "--quiet", "--report-dir", {str(tmp_path)!r}])
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
sys.exit(code)
"""
    result = _without_torch(sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is True


def test_golden_check_in_a_venv_without_torch(torchless_python, onnx_artifact, tmp_path):
    reports = tmp_path / "reports"
    result = _without_torch(torchless_python, "-m", "hubert_export.cli", "check", str(onnx_artifact), "--golden",
                            "--report-dir", str(reports), "--latency-repeats", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("parity PASS")
    full = check_artifact(onnx_artifact, latency_repeats=0)
    golden = json.loads((reports / "parity.json").read_text())
    assert golden["passed"] == full.passed and [c["name"] for c in golden["cases"]] == [c.name for c in full.cases]

    drifted = _perturbed_copy(onnx_artifact, tmp_path / "drifted")  # numerically different, hashes re-recorded
    result = _without_torch(torchless_python, "-m", "hubert_export.cli", "check", str(drifted), "--golden",
                            "--report-dir", str(tmp_path / "drifted-reports"), "--latency-repeats", "0")
    assert result.returncode == 1 and result.stdout.startswith("parity FAIL")
    assert not check_artifact(drifted, latency_repeats=0).passed  # the full check agrees

    tampered = tmp_path / "tampered"  # modified after the build, hashes not updated
    shutil.copytree(onnx_artifact, tampered)
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    result = _without_torch(torchless_python, "-m", "hubert_export.cli", "check", str(tampered), "--golden")
    assert result.returncode == 2 and "model.onnx does not match the hash" in result.stderr


@pytest.fixture(scope="module")
def openvino_artifact(ctc_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden-ov") / "openvino"
    assert export_artifact(ctc_checkpoint, out, default_recipe("openvino"), latency_repeats=0).passed
    return out


def test_golden_check_of_an_openvino_artifact_in_a_venv_without_torch(torchless_python, openvino_artifact, tmp_path):
    result = _without_torch(torchless_python, "-m", "hubert_export.cli", "check", str(openvino_artifact), "--golden",
                            "--report-dir", str(tmp_path), "--latency-repeats", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("parity PASS")
    golden = json.loads((tmp_path / "parity.json").read_text())
    assert [c["name"] for c in golden["cases"]] == [c.name for c in check_artifact(openvino_artifact, latency_repeats=0).cases]
