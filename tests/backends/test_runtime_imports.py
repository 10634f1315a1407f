"""Runtimes apart from builders: importing a back end (to run or check its artifacts) imports no torch,
so `check --golden` works on a device that has only the runtime. ExecuTorch is the exception: its
Python runtime (`executorch.extension.pybindings.portable_lib`) imports torch itself."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["onnxruntime", "openvino", "tensorrt", "litert"])
def test_a_back_ends_runner_side_imports_no_torch(module):
    code = (f"import sys; import hubert_export.backends.{module}, hubert_export.golden, hubert_export.cli; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", f"importing hubert_export.backends.{module} imported torch"
