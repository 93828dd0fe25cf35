"""An infinite error gives an infinite loss on every path: eager and compiled, pooled, per sample, per
element, with labels, in every float dtype, in the module forms and in eval.  NaN only where the
formula itself has one (a weight of 0 times an infinite class error).  Checked against the original
``acb_mse.ACBLoss`` and the float64 reference of tests/reference.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reference import acb_mse as reference_loss

from acbmse_cli import ACBLoss, ACBMSELoss, acb_mse_loss
from acbmse_cli.evaluate import evaluate_files

INF = math.inf
PRED = [INF, 0.0, 1.0, 5.0]
TARGET = [0.0, 0.0, 0.0, 4.0]
LABELS = [0, 0, 0, 1]  # the default classes, as labels
LABELS3 = [0, 2, 0, 1]

PATHS: dict[str, dict[str, Any]] = {
    "default": {},
    "weights": {"hit_weight": 2.0, "nonhit_weight": 0.5},
    "hit_threshold": {"hit_threshold": 0.5},
    "labels": {"labels": LABELS, "class_weights": [1.0, 1.0]},
    "labels3": {"labels": LABELS3, "class_weights": [0.5, 1.0, 3.0]},
    "per_sample": {"per_sample": True},
    "per_sample_sum": {"per_sample": True, "reduction": "sum"},
    "per_sample_none": {"per_sample": True, "reduction": "none"},
    "per_sample_labels": {"per_sample": True, "labels": LABELS3, "class_weights": [0.5, 1.0, 3.0]},
    "none": {"reduction": "none"},
    "none_labels": {"reduction": "none", "labels": LABELS3, "class_weights": [0.5, 1.0, 3.0]},
}


def tensors(options: dict[str, Any], dtype: torch.dtype, pred: list[float] = PRED) -> tuple[Any, ...]:
    """Input, target and options as tensors; a batch of one sample with ``per_sample``."""
    shape = (1, 4) if options.get("per_sample") else (4,)
    x = torch.tensor(pred, dtype=dtype).reshape(shape)
    y = torch.tensor(TARGET, dtype=dtype).reshape(shape)
    options = dict(options)
    if "labels" in options:
        options["labels"] = torch.tensor(options["labels"]).reshape(shape)
    return x, y, options


def expected(options: dict[str, Any], pred: list[float] = PRED) -> np.ndarray:
    x, y, opts = tensors(options, torch.float64, pred)
    if "labels" in opts:
        opts["labels"] = opts["labels"].numpy()
    with np.errstate(invalid="ignore"):
        return reference_loss(x.numpy(), y.numpy(), **opts)


def assert_same_nonfinite(got: torch.Tensor, want: np.ndarray) -> None:
    """Equal where finite (to the dtype's precision), and the same inf or NaN elsewhere."""
    got_np = got.detach().double().cpu().numpy()
    assert got_np.shape == np.shape(want), (got_np, want)
    np.testing.assert_allclose(got_np, want, rtol=2e-3, atol=0)  # NaN == NaN, inf == inf here


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", list(PATHS))
def test_an_infinite_error_is_an_infinite_loss_on_every_eager_path(path: str, dtype: torch.dtype) -> None:
    x, y, options = tensors(PATHS[path], dtype)
    got = acb_mse_loss(x, y, **options)
    want = expected(PATHS[path])
    assert_same_nonfinite(got, want)
    assert not torch.isnan(got).any(), got
    assert torch.isinf(got).any() and torch.isinf(got.sum())


@pytest.mark.parametrize("path", ["default", "labels3", "per_sample", "none", "per_sample_labels"])
def test_the_gradient_of_an_infinite_error_is_infinite_there_only(path: str) -> None:
    x, y, options = tensors(PATHS[path], torch.float64)
    x.requires_grad_()
    acb_mse_loss(x, y, **options).sum().backward()
    assert x.grad is not None
    grad = x.grad.reshape(-1)
    assert math.isinf(float(grad[0])) and torch.isfinite(grad[1:]).all(), grad


@pytest.mark.parametrize("path", ["default", "labels3", "per_sample_sum", "none", "none_labels"])
def test_an_infinite_error_is_an_infinite_loss_when_compiled(path: str) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(acb_mse_loss, fullgraph=True, backend="aot_eager")
    x, y, options = tensors(PATHS[path], torch.float32)
    got = compiled(x, y, **options)
    assert_same_nonfinite(got, expected(PATHS[path]))
    assert not torch.isnan(got).any() and torch.isinf(got.sum())


def test_the_module_forms_and_the_original_agree() -> None:
    import acb_mse

    x, y = torch.tensor(PRED), torch.tensor(TARGET)
    original = acb_mse.ACBLoss()(x, y)
    assert math.isinf(float(original))
    labelled = ACBMSELoss(class_weights=[1.0, 1.0])(x, y, torch.tensor(LABELS))
    for loss in (ACBLoss()(x, y), ACBMSELoss()(x, y), labelled):
        assert float(loss) == float(original)
    weighted = acb_mse.ACBLoss(zero_weighting=0.5, nonzero_weighting=2.0)(x, y)
    assert float(ACBLoss(zero_weighting=0.5, nonzero_weighting=2.0)(x, y)) == float(weighted) == INF
    minus = torch.tensor([-INF, 0.0, 1.0, 5.0])
    assert float(acb_mse_loss(minus, y)) == float(acb_mse.ACBLoss()(minus, y)) == INF


@pytest.mark.parametrize("path", ["default", "labels", "none", "per_sample"])
def test_nan_only_where_the_formula_has_one(path: str) -> None:
    """A weight of 0 on the class holding the infinite error: 0 x inf, NaN in the formula itself."""
    options = dict(PATHS[path])
    if "class_weights" in options:
        options["class_weights"] = [0.0, 1.0]
    else:
        options["nonhit_weight"] = 0.0
    x, y, opts = tensors(options, torch.float32)
    got = acb_mse_loss(x, y, **opts)
    assert_same_nonfinite(got, expected(options))
    assert torch.isnan(got).any()


@pytest.mark.parametrize("labelled", [False, True])
def test_eval_reports_an_infinite_acb_mse_for_an_overflowing_error(tmp_path: Path, labelled: bool) -> None:
    """eval refuses (or omits) Inf in its files; an error that overflows float64 is its infinite error."""
    pred = np.array([1e200, 0.0, 1.0, 5.0])
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", np.array(TARGET))
    np.save(tmp_path / "l.npy", np.array(LABELS))
    options: dict[str, Any] = {"labels": tmp_path / "l.npy", "class_weights": [1.0, 1.0]} if labelled else {}
    result = evaluate_files(tmp_path / "p.npy", tmp_path / "t.npy", device="cpu", **options)
    assert result.acb_mse == INF
    assert result.classes[0].mse == INF and result.classes[1].mse == 1.0
    with np.errstate(over="ignore"):
        assert float(expected({}, pred.tolist())) == INF
