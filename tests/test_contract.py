"""The input contract: what an artifact accepts, enforced the same way by every runner."""

from __future__ import annotations

import numpy as np
import pytest

from hubert_export.backends import get_backend
from hubert_export.contract import InputContract, check_inputs
from hubert_export.errors import HubertExportError
from hubert_export.recipes import Shape, ShapeRange, default_recipe

RANGE = InputContract(Shape(1, 400), Shape(1, 16_000), Shape(4, 32_000), attention_mask=True)
WINDOW = InputContract.fixed(Shape(2, 16_000), attention_mask=False)


def batch(rows: int, samples: int, mask: bool = True) -> dict[str, np.ndarray]:
    inputs = {"input_values": np.zeros((rows, samples), np.float32)}
    if mask:
        inputs["attention_mask"] = np.ones((rows, samples), np.int64)
    return inputs


def test_a_range_takes_what_is_inside_it_and_names_what_is_not():
    RANGE.check(batch(4, 400))
    for rows, samples in [(5, 16_000), (1, 399), (1, 32_001)]:
        with pytest.raises(HubertExportError, match=r"batch 1\.\.4, samples 400\.\.32000"):
            RANGE.check(batch(rows, samples))
    with pytest.raises(HubertExportError, match="missing input attention_mask"):
        RANGE.check(batch(1, 16_000, mask=False))
    mismatched = batch(1, 16_000)
    mismatched["attention_mask"] = mismatched["attention_mask"][:, :400]
    with pytest.raises(HubertExportError, match="give both the same"):
        RANGE.check(mismatched)


def test_a_fixed_contract_is_a_window_of_one_shape():
    assert WINDOW.window == Shape(2, 16_000) and RANGE.window is None
    WINDOW.check(batch(2, 16_000, mask=False))
    with pytest.raises(HubertExportError, match=r"one shape this artifact is built for \(2 x 16000\)"):
        WINDOW.check(batch(1, 16_000, mask=False))


@pytest.mark.parametrize("values", [np.zeros(400, np.float32), np.full((1, 400), np.inf, np.float32)])
def test_no_runner_takes_a_wrong_rank_or_non_finite_audio(values):
    for contract in (RANGE, None):
        with pytest.raises(HubertExportError, match="input_values"):
            check_inputs({"input_values": values, "attention_mask": np.ones((1, 400), np.int64)}, contract,
                         ["input_values"])


def test_each_back_end_declares_its_contract():
    recipe = default_recipe("onnx")
    assert get_backend("onnx").input_contract(recipe, False) == InputContract.over(recipe.shapes.range, False)
    static = default_recipe("openvino").with_overrides(**{"openvino.static_shape": {"batch": 1, "samples": 16_000}})
    assert get_backend("openvino").input_contract(static, True) == InputContract.fixed(Shape(1, 16_000), True)
    assert InputContract.over(ShapeRange(Shape(1, 400), Shape(1, 400), Shape(1, 400)), False).window == Shape(1, 400)
    assert RANGE.to_dict()["max"] == {"batch": 4, "samples": 32_000} and RANGE.input_names[-1] == "attention_mask"
