"""The loss against the independent float64 reference, the original package, and its own contract."""

from __future__ import annotations

import math
import warnings

import acb_mse
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import acb_mse as ref_acb_mse
from reference import acb_mse_grad, default_labels

from acbmse_cli import ACBLoss, ACBMSELoss, acb_mse_loss, balanced_loss, class_stats
from acbmse_cli.loss import detection_counts, hit_mask

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sparse_pair(
    rng: np.random.Generator, shape: tuple[int, ...], sparsity: float, scale: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """A prediction and a target in which about ``sparsity`` of the target is non-zero."""
    target = np.where(rng.random(shape) < sparsity, rng.normal(0.0, scale, shape), 0.0)
    pred = target + rng.normal(0.0, scale / 3, shape)
    return pred, target


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}


shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
weights = st.floats(0.0, 10.0, allow_nan=False)
float_dtypes = st.sampled_from([torch.float32, torch.float64])


# ----------------------------------------------------------------- values against the reference


@SETTINGS
@given(
    shape=shapes,
    sparsity=st.floats(0.0, 1.0),
    hit_weight=weights,
    nonhit_weight=weights,
    threshold=st.sampled_from([0.0, 0.5, 3.0, 1e-3]),
    per_sample=st.booleans(),
    reduction=st.sampled_from(["mean", "none", "sum"]),
    dtype=float_dtypes,
    seed=st.integers(0, 2**32 - 1),
)
def test_two_classes_match_reference(
    shape, sparsity, hit_weight, nonhit_weight, threshold, per_sample, reduction, dtype, seed
):
    if reduction == "sum" and not per_sample:
        reduction = "mean"
    pred, target = sparse_pair(np.random.default_rng(seed), shape, sparsity)
    x, y = torch.tensor(pred, dtype=dtype), torch.tensor(target, dtype=dtype)
    got = acb_mse_loss(
        x,
        y,
        hit_weight=hit_weight,
        nonhit_weight=nonhit_weight,
        hit_threshold=threshold,
        per_sample=per_sample,
        reduction=reduction,
    )
    # the reference sees exactly the values the loss sees
    expected = ref_acb_mse(
        x.double().numpy(),
        y.double().numpy(),
        hit_weight=hit_weight,
        nonhit_weight=nonhit_weight,
        hit_threshold=threshold,
        per_sample=per_sample,
        reduction=reduction,
    )
    assert got.dtype == dtype
    assert tuple(got.shape) == expected.shape
    np.testing.assert_allclose(got.double().numpy(), expected, **tol(dtype))


@SETTINGS
@given(
    shape=shapes,
    n_classes=st.integers(1, 5),
    data=st.data(),
    per_sample=st.booleans(),
    reduction=st.sampled_from(["mean", "none", "sum"]),
    dtype=float_dtypes,
    seed=st.integers(0, 2**32 - 1),
)
def test_n_classes_match_reference(shape, n_classes, data, per_sample, reduction, dtype, seed):
    if reduction == "sum" and not per_sample:
        reduction = "none"
    class_weights = data.draw(st.lists(weights, min_size=n_classes, max_size=n_classes))
    rng = np.random.default_rng(seed)
    pred, target = sparse_pair(rng, shape, 0.5)
    # some classes left empty on purpose: labels drawn from a random subset
    present = rng.choice(n_classes, size=rng.integers(1, n_classes + 1), replace=False)
    labels = rng.choice(present, size=shape)
    label_dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))
    got = acb_mse_loss(
        torch.tensor(pred, dtype=dtype),
        torch.tensor(target, dtype=dtype),
        labels=torch.tensor(labels).to(label_dtype),
        class_weights=class_weights,
        per_sample=per_sample,
        reduction=reduction,
    )
    expected = ref_acb_mse(
        torch.tensor(pred, dtype=dtype).double().numpy(),
        torch.tensor(target, dtype=dtype).double().numpy(),
        labels=labels,
        class_weights=class_weights,
        per_sample=per_sample,
        reduction=reduction,
    )
    np.testing.assert_allclose(got.double().numpy(), expected, **tol(dtype))


@pytest.mark.parametrize("per_sample", [False, True])
def test_labelled_loss_is_the_balanced_loss_of_its_class_stats(per_sample):
    """The labelled loss adds its terms element by element; class_stats and balanced_loss per class."""
    rng = np.random.default_rng(11)
    pred, target = sparse_pair(rng, (5, 3, 17), 0.3)
    labels = torch.tensor(rng.integers(0, 4, size=pred.shape))
    weights = (0.5, 3.0, 1e-3, 40.0)
    x, y = torch.tensor(pred), torch.tensor(target)
    stats = class_stats(x, y, labels=labels, num_classes=4, per_sample=per_sample)
    expected = balanced_loss(stats, weights)
    got = acb_mse_loss(x, y, labels=labels, class_weights=weights, per_sample=per_sample, reduction="none")
    if not per_sample:
        assert got.shape == x.shape
        got = got.sum().reshape(1)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-13)


def test_reduction_none_sums_to_the_loss_and_per_sample_mean_is_the_mean():
    pred, target = sparse_pair(np.random.default_rng(1), (4, 1, 8, 8), 0.1)
    x, y = torch.tensor(pred), torch.tensor(target)
    total = acb_mse_loss(x, y, hit_weight=2.0, nonhit_weight=0.5)
    parts = acb_mse_loss(x, y, hit_weight=2.0, nonhit_weight=0.5, reduction="none")
    assert parts.shape == x.shape
    assert math.isclose(float(parts.sum()), float(total), rel_tol=1e-12)
    losses = acb_mse_loss(x, y, per_sample=True, reduction="none")
    assert losses.shape == (4,)
    assert math.isclose(float(acb_mse_loss(x, y, per_sample=True)), float(losses.mean()), rel_tol=1e-12)
    assert math.isclose(
        float(acb_mse_loss(x, y, per_sample=True, reduction="sum")), float(losses.sum()), rel_tol=1e-12
    )


def test_large_batch_float32_is_accurate():
    """A detector-sized batch: float32 sums stay within float32 rounding of the float64 truth."""
    pred, target = sparse_pair(np.random.default_rng(2), (64, 1, 88, 128), 0.02, scale=100.0)
    got = acb_mse_loss(torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.float32))
    x64 = torch.tensor(pred, dtype=torch.float32).double().numpy()
    y64 = torch.tensor(target, dtype=torch.float32).double().numpy()
    assert math.isclose(float(got), float(ref_acb_mse(x64, y64)), rel_tol=1e-6)


def test_threshold_is_exact_for_values_next_to_it():
    """|y| > t is decided on the real values, not on t rounded into the tensor's dtype."""
    t = 0.3
    above = np.nextafter(np.float32(t), np.float32(1))  # the float32 nearest 0.3 lies above 0.3
    below = np.nextafter(np.float32(t), np.float32(0))
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        values = torch.tensor([float(above), float(below), t, -t, 0.0], dtype=torch.float64).to(dtype)
        expected = np.abs(values.double().numpy()) > t
        np.testing.assert_array_equal(hit_mask(values, t).numpy(), expected, err_msg=str(dtype))


# ----------------------------------------------------------------- the original package


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 8), min_size=2, max_size=4).map(tuple),
    sparsity=st.floats(0.0, 1.0),
    zero_weighting=st.floats(0.0, 10.0),
    nonzero_weighting=st.floats(0.0, 10.0),
    dtype=float_dtypes,
    seed=st.integers(0, 2**32 - 1),
)
def test_acbloss_matches_the_original_package(
    shape, sparsity, zero_weighting, nonzero_weighting, dtype, seed
):
    pred, target = sparse_pair(np.random.default_rng(seed), shape, sparsity)
    x, y = torch.tensor(pred, dtype=dtype), torch.tensor(target, dtype=dtype)
    ours = ACBLoss(zero_weighting, nonzero_weighting)(x, y)
    original = acb_mse.ACBLoss(zero_weighting, nonzero_weighting)(x, y)
    assert isinstance(ours, torch.Tensor)
    np.testing.assert_allclose(float(ours), float(original), **tol(dtype))


def test_acbloss_positional_order_and_defaults_match_the_original():
    x = torch.tensor([1.0, 2.0, 0.5, 7.0])
    y = torch.tensor([0.0, 0.0, 4.0, 3.0])
    for args in [(), (2.0,), (2.0, 5.0), (0.0, 1.0)]:
        assert math.isclose(float(ACBLoss(*args)(x, y)), float(acb_mse.ACBLoss(*args)(x, y)), rel_tol=1e-6)
    # zero_weighting weighs the zero pixels (B), nonzero_weighting the others (A)
    expected = 3.0 * (1 + 4) / 2 + 5.0 * (3.5**2 + 4**2) / 2
    assert math.isclose(float(ACBLoss(3.0, 5.0)(x, y)), expected, rel_tol=1e-6)


def test_where_the_original_is_wrong_we_differ_on_purpose():
    empty = torch.zeros(0, 1, 4, 4)
    assert acb_mse.ACBLoss()(empty, empty) == 0 and not isinstance(
        acb_mse.ACBLoss()(empty, empty), torch.Tensor
    )
    ours = ACBLoss()(empty, empty)
    assert isinstance(ours, torch.Tensor) and ours.shape == () and float(ours) == 0.0

    x = torch.tensor([float("nan"), 1.0, 2.0])
    y = torch.tensor([0.0, 0.0, 5.0])
    assert not math.isnan(float(acb_mse.ACBLoss()(x, y)))  # the original hides the NaN
    assert math.isnan(float(ACBLoss()(x, y)))


# ----------------------------------------------------------------- edge cases


@pytest.mark.parametrize("per_sample", [False, True])
def test_empty_classes_add_zero(per_sample):
    zeros = torch.zeros(2, 3, 3)
    pred = torch.full((2, 3, 3), 2.0)
    # all-zero target: only the non-hit class, its MSE is 4
    assert float(acb_mse_loss(pred, zeros, per_sample=per_sample)) == 4.0
    # all-hit target: only the hit class
    hits = torch.full((2, 3, 3), 5.0)
    assert float(acb_mse_loss(pred, hits, hit_weight=2.0, per_sample=per_sample)) == 2.0 * 9.0
    # one element
    assert float(acb_mse_loss(torch.tensor([3.0]), torch.tensor([1.0]), per_sample=per_sample)) == 4.0
    assert float(acb_mse_loss(torch.tensor([3.0]), torch.tensor([0.0]), per_sample=per_sample)) == 9.0


def test_empty_input():
    empty = torch.zeros(0, 5)
    assert float(acb_mse_loss(empty, empty)) == 0.0
    assert acb_mse_loss(empty, empty, reduction="none").shape == (0, 5)
    assert acb_mse_loss(empty, empty, per_sample=True, reduction="none").shape == (0,)
    assert float(acb_mse_loss(empty, empty, per_sample=True)) == 0.0


@pytest.mark.parametrize("where", ["input_hit", "input_nonhit", "target"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("per_sample", [False, True])
def test_nan_and_inf_propagate(where, bad, per_sample):
    x = torch.tensor([[1.0, 0.5, 2.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    y = torch.tensor([[0.0, 0.0, 3.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    if where == "input_hit":
        x[0, 2] = bad
    elif where == "input_nonhit":
        x[0, 0] = bad
    else:
        y[0, 1] = bad
    value = acb_mse_loss(x, y, per_sample=per_sample)
    assert not math.isfinite(float(value))
    if per_sample:
        losses = acb_mse_loss(x, y, per_sample=True, reduction="none")
        assert not math.isfinite(float(losses[0])) and math.isfinite(float(losses[1]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype):
    rng = np.random.default_rng(3)
    target = np.where(rng.random((16, 1, 88, 128)) < 0.02, 100.0, 0.0)
    pred = np.clip(target + rng.normal(0, 20, target.shape), 0, None) + 90.0  # values near 100 everywhere
    x = torch.tensor(pred).to(dtype).requires_grad_()
    y = torch.tensor(target).to(dtype)
    expected = ref_acb_mse(x.detach().double().numpy(), y.double().numpy())
    naive = float(((x.detach() - y) ** 2).sum())  # a sum returned in the half dtype
    if dtype == torch.float16:  # 180,224 squares near 8,100 overflow a float16 sum
        assert not math.isfinite(naive)
    got = acb_mse_loss(x, y)
    assert got.dtype == torch.float32
    assert math.isclose(float(got.detach()), float(expected), rel_tol=1e-5)
    got.backward()
    assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------- gradients


def test_gradient_is_exact_against_the_formula():
    rng = np.random.default_rng(4)
    pred, target = sparse_pair(rng, (3, 2, 5, 5), 0.1)
    x = torch.tensor(pred, requires_grad=True)
    acb_mse_loss(x, torch.tensor(target), hit_weight=3.0, nonhit_weight=0.25).backward()
    expected = acb_mse_grad(pred, target, default_labels(target), (0.25, 3.0))
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-13, atol=1e-15)


@SETTINGS
@given(
    n_classes=st.sampled_from([None, 1, 2, 3, 5]),
    data=st.data(),
    dtype=float_dtypes,
    create_graph=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_gradient_matches_the_formula_for_weights_of_any_magnitude(
    n_classes, data, dtype, create_graph, seed
):
    """Every element gets its own class's 2 w_c d / n_c, however far apart the weights are
    (a blend of two coefficients would lose the smaller one), with and without create_graph."""
    magnitudes = st.sampled_from([0.0, 1e-20, 1e-6, 0.3, 1.0, 7.0, 1e6, 1e20])
    rng = np.random.default_rng(seed)
    pred, target = sparse_pair(rng, (3, 2, 7), 0.2)
    pred, target = torch.tensor(pred, dtype=dtype).double().numpy(), torch.tensor(target, dtype=dtype)
    x = torch.tensor(pred, dtype=dtype, requires_grad=True)
    if n_classes is None:
        a, b = data.draw(magnitudes), data.draw(magnitudes)
        loss = acb_mse_loss(x, target, hit_weight=a, nonhit_weight=b)
        labels, class_weights = default_labels(target.double().numpy()), (b, a)
    else:
        class_weights = tuple(data.draw(magnitudes) for _ in range(n_classes))
        labels = rng.integers(0, n_classes, size=pred.shape)
        loss = acb_mse_loss(x, target, labels=torch.tensor(labels), class_weights=class_weights)
    (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    expected = acb_mse_grad(pred, target.double().numpy(), labels, class_weights)
    np.testing.assert_allclose(grad.detach().double().numpy(), expected, rtol=tol(dtype)["rtol"], atol=0)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"hit_weight": 2.5, "nonhit_weight": 0.3, "hit_threshold": 0.2},
        {"per_sample": True},
        {"per_sample": True, "reduction": "none"},
        {"reduction": "none"},
        {"labels": "three", "class_weights": [0.5, 1.0, 4.0]},
        {"labels": "three", "class_weights": [0.5, 1.0, 4.0], "per_sample": True, "reduction": "sum"},
    ],
)
def test_gradcheck_float64(options):
    rng = np.random.default_rng(5)
    pred, target = sparse_pair(rng, (3, 4, 5), 0.3)
    target = np.where(np.abs(target) < 0.3, 0.0, target)  # keep targets away from a class boundary
    options = dict(options)
    if options.get("labels") == "three":
        options["labels"] = torch.tensor(rng.integers(0, 3, size=(3, 4, 5)))
    x = torch.tensor(pred, requires_grad=True)
    # with hit_threshold=0 every zero target sits on the class boundary: differentiate w.r.t. the
    # target only where a small perturbation keeps each element in its class
    boundary_free = options.get("hit_threshold", 0.0) > 0 or "labels" in options
    y = torch.tensor(target, requires_grad=boundary_free)
    assert torch.autograd.gradcheck(lambda a, b: acb_mse_loss(a, b, **options), (x, y))
    assert torch.autograd.gradgradcheck(lambda a, b: acb_mse_loss(a, b, **options), (x, y))


def test_no_host_reads_on_the_forward_and_backward_path():
    """On the meta device every value read (.item(), bool(tensor), boolean indexing) raises."""
    x = torch.empty(4, 1, 8, 8, device="meta", requires_grad=True)
    y = torch.empty(4, 1, 8, 8, device="meta")
    labels = torch.empty(4, 1, 8, 8, device="meta", dtype=torch.int64)
    for options in (
        {},
        {"per_sample": True},
        {"reduction": "none"},
        {"labels": labels, "class_weights": [1.0, 2.0, 3.0]},
        {"labels": labels, "class_weights": [1.0, 2.0, 3.0], "per_sample": True},
    ):
        out = acb_mse_loss(x, y, **options)
        out.sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape
        x.grad = None


def test_torch_compile_fullgraph():
    torch._dynamo.reset()  # each option set compiles anew: start from dynamo's empty cache
    rng = np.random.default_rng(6)
    pred, target = sparse_pair(rng, (4, 1, 8, 8), 0.1)
    compiled = torch.compile(acb_mse_loss, fullgraph=True, backend="aot_eager")
    labelled = {"labels": torch.tensor(rng.integers(0, 3, size=pred.shape)), "class_weights": (1.0, 3.0, 0.5)}
    for options in (
        {},
        {"hit_weight": 2.0, "per_sample": True},
        {"reduction": "none"},
        labelled,
        {**labelled, "per_sample": True, "reduction": "sum"},
        {**labelled, "reduction": "none"},
    ):
        x = torch.tensor(pred, dtype=torch.float32, requires_grad=True)
        y = torch.tensor(target, dtype=torch.float32)
        got = compiled(x, y, **options)
        got.sum().backward()
        x_ref = x.detach().clone().requires_grad_()
        want = acb_mse_loss(x_ref, y, **options)
        want.sum().backward()
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(x.grad, x_ref.grad)


def test_out_of_range_labels_show_as_nan_where_they_are_not_checked():
    """Under torch.compile (as on GPUs) the range check would need a host sync: a NaN loss instead."""
    torch._dynamo.reset()
    labels = torch.tensor([[0, 1, 2, 3]])
    x, y = torch.ones(1, 4), torch.zeros(1, 4)
    compiled = torch.compile(acb_mse_loss, fullgraph=True, backend="aot_eager")
    for per_sample in (False, True):
        got = compiled(x, y, labels=labels, class_weights=[1.0, 1.0, 1.0], per_sample=per_sample)
        assert math.isnan(float(got))
        fine = compiled(
            x, y, labels=labels.clamp(max=2), class_weights=[1.0, 1.0, 1.0], per_sample=per_sample
        )
        assert float(fine) == 3.0
    parts = compiled(x, y, labels=labels, class_weights=[1.0, 1.0, 1.0], reduction="none")
    assert parts.shape == (1, 4) and torch.isnan(parts).all()


def test_bool_and_integer_targets():
    pred = torch.tensor([[0.5, 0.25, 1.0, 0.0]])
    truth = torch.tensor([[True, False, True, False]])
    for target in (truth, truth.to(torch.int64)):
        for reduction in ("mean", "none"):
            torch.testing.assert_close(
                acb_mse_loss(pred, target, reduction=reduction),
                acb_mse_loss(pred, truth.float(), reduction=reduction),
            )


def test_weights_beyond_float32_are_refused():
    with pytest.raises(ValueError, match="float32 range"):
        acb_mse_loss(torch.ones(4), torch.zeros(4), hit_weight=1e300)
    # the largest allowed weight keeps an empty class at 0 and the other finite
    big = float(torch.finfo(torch.float32).max)
    assert float(acb_mse_loss(torch.ones(4), torch.zeros(4), hit_weight=big)) == 1.0


def test_an_infinite_error_does_not_spill_into_the_other_class():
    x = torch.tensor([[float("inf"), 1.0, 2.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([[5.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    stats = class_stats(x, y, extended=True)
    assert math.isinf(float(stats.sse[0, 1])) and math.isinf(float(stats.max_abs_error[0, 1]))
    assert stats.sse[0, 0].item() == 1.0 + 4.0 + 0.25
    assert stats.max_abs_error[0, 0].item() == 2.0
    assert stats.sum_input[0, 0].item() == 3.5


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_non_finite_error_stays_in_its_labelled_class(bad):
    """class_stats, the labelled loss and the float64 reference agree when one error is Inf or NaN."""
    pred = np.array([[bad, 1.0, 2.0, 0.5, 3.0]])
    target = np.zeros((1, 5))
    labels = np.array([[0, 1, 1, 2, 0]])
    x, y, lab = torch.tensor(pred), torch.tensor(target), torch.tensor(labels)
    stats = class_stats(x, y, labels=lab, num_classes=3)
    assert stats.count.tolist() == [[2, 2, 1]]
    np.testing.assert_array_equal(stats.sse.numpy(), [[bad, 5.0, 0.25]])
    weights = (1.0, 2.0, 4.0)
    expected = ref_acb_mse(pred, target, labels=labels, class_weights=weights)
    got = acb_mse_loss(x, y, labels=lab, class_weights=weights)
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(balanced_loss(stats, weights)[0].numpy(), expected)


def test_torch_compile_inductor():
    """The default backend, code generation included, forward and backward."""
    torch._dynamo.reset()
    rng = np.random.default_rng(7)
    pred, target = sparse_pair(rng, (4, 1, 16, 16), 0.05)
    compiled = torch.compile(acb_mse_loss, fullgraph=True)
    x = torch.tensor(pred, dtype=torch.float32, requires_grad=True)
    y = torch.tensor(target, dtype=torch.float32)
    got = compiled(x, y, hit_weight=2.0)
    got.backward()
    expected = ref_acb_mse(x.detach().double().numpy(), y.double().numpy(), hit_weight=2.0)
    assert math.isclose(float(got.detach()), float(expected), rel_tol=1e-5)
    grad = acb_mse_grad(x.detach().double().numpy(), y.double().numpy(), default_labels(target), (1.0, 2.0))
    np.testing.assert_allclose(x.grad.double().numpy(), grad, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hit_weight": -1.0}, "hit_weight"),
        ({"nonhit_weight": float("nan")}, "nonhit_weight"),
        ({"hit_weight": float("inf")}, "hit_weight"),
        ({"hit_weight": "2"}, "hit_weight"),
        ({"hit_threshold": -0.5}, "hit_threshold"),
        ({"hit_threshold": float("nan")}, "hit_threshold"),
        ({"reduction": "max"}, "reduction"),
        ({"reduction": "sum"}, "reduction='sum'"),
        ({"class_weights": [1.0, 2.0]}, "class_weights needs labels"),
        ({"labels": torch.zeros(2, 3, dtype=torch.long)}, "class_weights"),
        ({"labels": torch.zeros(2, 3, dtype=torch.long), "class_weights": []}, "class_weights"),
        (
            {"labels": torch.zeros(2, 3, dtype=torch.long), "class_weights": [1.0, -2.0]},
            r"class_weights\[1\]",
        ),
        ({"labels": torch.zeros(3, 2, dtype=torch.long), "class_weights": [1.0]}, "labels must have"),
        ({"labels": torch.zeros(2, 3), "class_weights": [1.0]}, "integer tensor"),
        ({"labels": torch.zeros(2, 3, dtype=torch.bool), "class_weights": [1.0]}, "integer tensor"),
        ({"labels": torch.full((2, 3), 2), "class_weights": [1.0, 1.0]}, r"\[0, 2\)"),
        ({"labels": torch.full((2, 3), -1), "class_weights": [1.0, 1.0]}, r"\[0, 2\)"),
        (
            {"labels": torch.zeros(2, 3, dtype=torch.long), "class_weights": [1.0], "hit_weight": 2.0},
            "hit_weight=2.0",
        ),
        (
            {"labels": torch.zeros(2, 3, dtype=torch.long), "class_weights": [1.0], "hit_threshold": 0.5},
            "hit_threshold",
        ),
    ],
)
def test_invalid_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        acb_mse_loss(torch.zeros(2, 3), torch.zeros(2, 3), **options)


def test_shape_mismatch_is_an_error_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 1\).*\(4,\)"):
        acb_mse_loss(torch.zeros(4, 1), torch.zeros(4))
    # torch's own MSELoss only warns and broadcasts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.nn.MSELoss()(torch.zeros(4, 1), torch.ones(4)).shape == ()


def test_other_invalid_inputs():
    with pytest.raises(ValueError, match="floating-point"):
        acb_mse_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match="batch dimension"):
        acb_mse_loss(torch.tensor(1.0), torch.tensor(1.0), per_sample=True)
    with pytest.raises(ValueError, match="tensors"):
        acb_mse_loss(np.zeros(3), torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero_weighting"):
        ACBLoss(-1.0)


# ----------------------------------------------------------------- the module


def test_module_stores_options_and_calls_the_function():
    pred, target = sparse_pair(np.random.default_rng(8), (3, 6, 6), 0.2)
    x, y = torch.tensor(pred), torch.tensor(target)
    module = ACBMSELoss(
        hit_weight=2.0, nonhit_weight=0.5, hit_threshold=0.1, per_sample=True, reduction="none"
    )
    torch.testing.assert_close(
        module(x, y),
        acb_mse_loss(
            x, y, hit_weight=2.0, nonhit_weight=0.5, hit_threshold=0.1, per_sample=True, reduction="none"
        ),
    )
    assert "hit_weight=2.0" in repr(module)
    with pytest.raises(ValueError, match="reduction"):
        ACBMSELoss(reduction="avg")
    with pytest.raises(ValueError, match="hit_weight"):
        ACBMSELoss(hit_weight=-2.0)


def test_module_with_class_weights_takes_labels_per_call():
    rng = np.random.default_rng(9)
    pred, target = sparse_pair(rng, (2, 5, 5), 0.3)
    labels = rng.integers(0, 3, size=(2, 5, 5))
    module = ACBMSELoss(class_weights=[1.0, 2.0, 0.5])
    got = module(torch.tensor(pred), torch.tensor(target), torch.tensor(labels))
    expected = ref_acb_mse(pred, target, labels=labels, class_weights=[1.0, 2.0, 0.5])
    assert math.isclose(float(got), float(expected), rel_tol=1e-12)
    with pytest.raises(ValueError, match="needs labels"):
        module(torch.tensor(pred), torch.tensor(target))
    fixed = ACBMSELoss(labels=torch.tensor(labels), class_weights=[1.0, 2.0, 0.5])
    assert math.isclose(
        float(fixed(torch.tensor(pred), torch.tensor(target))), float(expected), rel_tol=1e-12
    )
    with pytest.raises(ValueError, match="class_weights"):
        ACBMSELoss(labels=torch.tensor(labels))
    assert fixed.to("meta").labels.device.type == "meta"  # fixed labels move with the module


def test_module_trains():
    """A few optimiser steps with the module reduce the loss (a smoke test of the autograd path)."""
    torch.manual_seed(0)
    target = torch.zeros(8, 1, 6, 6)
    target[:, :, 2, 3] = 10.0
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    data = target + 0.1 * torch.randn_like(target)
    loss_fn = ACBMSELoss()
    optimiser = torch.optim.SGD(net.parameters(), lr=1e-3)
    first = float(loss_fn(net(data), target).detach())
    for _ in range(20):
        optimiser.zero_grad()
        loss_fn(net(data), target).backward()
        optimiser.step()
    assert float(loss_fn(net(data), target).detach()) < first


# ----------------------------------------------------------------- statistics


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_class_stats_extended_against_numpy(threshold):
    rng = np.random.default_rng(10)
    pred, target = sparse_pair(rng, (3, 7, 9), 0.25)
    stats = class_stats(
        torch.tensor(pred), torch.tensor(target), hit_threshold=threshold, extended=True, per_sample=True
    )
    labels = default_labels(target, threshold)
    for s in range(3):
        for c in range(2):
            m = labels[s] == c
            err = pred[s][m] - target[s][m]
            assert int(stats.count[s, c]) == int(m.sum())
            np.testing.assert_allclose(float(stats.sse[s, c]), np.sum(err**2), rtol=1e-12)
            np.testing.assert_allclose(float(stats.sae[s, c]), np.sum(np.abs(err)), rtol=1e-12)
            np.testing.assert_allclose(float(stats.max_abs_error[s, c]), np.max(np.abs(err), initial=0.0))
            np.testing.assert_allclose(
                float(stats.sum_target[s, c]), np.sum(target[s][m]), rtol=1e-12, atol=1e-12
            )
            np.testing.assert_allclose(float(stats.sum_input[s, c]), np.sum(pred[s][m]), rtol=1e-12)
    # statistics of parts merge into the statistics of the whole
    whole = class_stats(torch.tensor(pred), torch.tensor(target), hit_threshold=threshold, extended=True)
    merged = stats.pooled()
    parts = class_stats(
        torch.tensor(pred[:1]), torch.tensor(target[:1]), hit_threshold=threshold, extended=True
    )
    parts = parts + class_stats(
        torch.tensor(pred[1:]), torch.tensor(target[1:]), hit_threshold=threshold, extended=True
    )
    for a, b in ((whole, merged), (whole, parts)):
        torch.testing.assert_close(a.count, b.count)
        torch.testing.assert_close(a.sse, b.sse)
        torch.testing.assert_close(a.max_abs_error, b.max_abs_error)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_stats_extended_classes_of_special_targets(dtype):
    """-0 is a non-hit, Inf a hit, NaN a non-hit, whichever way the sums are taken."""
    target = torch.tensor([[0.0, -0.0, math.inf, math.nan, 2.0, -3.0, 0.0]], dtype=dtype)
    pred = torch.tensor([[1.0, -2.0, 0.0, 1.0, 2.5, -1.0, 0.5]], dtype=dtype)
    finite = class_stats(pred[:, [0, 1, 4, 5, 6]], target[:, [0, 1, 4, 5, 6]], extended=True)
    assert finite.count.tolist() == [[3, 2]]
    assert finite.sse.tolist() == [[1.0 + 4.0 + 0.25, 0.25 + 4.0]]
    assert finite.max_abs_error.tolist() == [[2.0, 2.0]]
    assert finite.sum_target.tolist() == [[0.0, -1.0]]
    special = class_stats(pred, target, extended=True)
    assert special.count.tolist() == [[4, 3]]
    assert math.isnan(float(special.sse[0, 0])) and math.isinf(float(special.sse[0, 1]))


def test_detection_counts_against_numpy():
    rng = np.random.default_rng(11)
    pred, target = sparse_pair(rng, (4, 10, 10), 0.1)
    counts = detection_counts(torch.tensor(pred), torch.tensor(target), detect_threshold=1.0, per_sample=True)
    for s in range(4):
        detected = pred[s] > 1.0
        truth = target[s] != 0
        assert counts[s].tolist() == [
            int((detected & truth).sum()),
            int((detected & ~truth).sum()),
            int((~detected & truth).sum()),
        ]


def test_statistics_merged_in_place_equal_the_whole_and_the_sum_of_parts():
    """``add_`` (the eval's running totals) follows each field's merge rule: counts and sums add,
    the largest error takes the maximum; a field the part leaves empty stays as it was."""
    rng = np.random.default_rng(21)
    pred, target = (
        rng.normal(0, 3, (6, 50)),
        np.where(rng.random((6, 50)) < 0.3, rng.uniform(1, 9, (6, 50)), 0.0),
    )
    pred[4, 7] = 40.0  # the largest error, in the second part
    total = class_stats(torch.tensor(pred[:3]), torch.tensor(target[:3]), extended=True)
    total.add_(class_stats(torch.tensor(pred[3:]), torch.tensor(target[3:]), extended=True))
    truth = np.abs(target) > 0
    err = pred - target
    for c, m in enumerate((~truth, truth)):
        assert int(total.count[0, c]) == int(m.sum())
        np.testing.assert_allclose(float(total.sse[0, c]), np.sum(err[m] ** 2), rtol=1e-12)
        np.testing.assert_allclose(float(total.sum_target[0, c]), np.sum(target[m]), rtol=1e-12)
        assert float(total.max_abs_error[0, c]) == np.max(np.abs(err[m]))
    plain = class_stats(torch.tensor(pred[:3]), torch.tensor(target[:3]))  # no extended fields
    before = plain.sse.clone()
    plain.add_(class_stats(torch.tensor(pred[3:]), torch.tensor(target[3:]), extended=True))
    assert plain.max_abs_error is None
    np.testing.assert_allclose(
        plain.sse[0].numpy(), [np.sum(err[m] ** 2) for m in (~truth, truth)], rtol=1e-12
    )
    assert not torch.equal(before, plain.sse)


@pytest.mark.parametrize(
    ("shape", "backend"),
    [
        ((3, 4096), "aot_eager"),  # blocks of 2048
        ((2, 5, 256), "aot_eager"),  # of 256
        ((3, 11264), "aot_eager"),  # of 1024 per sample
        ((4, 1, 9, 7), "aot_eager"),  # none
        ((4, 1, 32, 64), "inductor"),  # the code the default backend generates, over several blocks
    ],
    ids=["blocks of 2048", "of 256", "of 1024 per sample", "no block", "inductor"],
)
@pytest.mark.parametrize("per_sample", [False, True])
def test_compiled_block_sums_equal_the_reference_with_infinite_errors(shape, backend, per_sample):
    """Under torch.compile the class sums and counts are taken block by block; the loss and its
    gradient equal the float64 reference on rows that split into blocks of each length and on
    rows that do not, and an infinite error stays in its own class (the loss is Inf, not NaN)."""
    torch._dynamo.reset()
    rng = np.random.default_rng(12)
    pred, target = sparse_pair(rng, shape, 0.07)
    compiled = torch.compile(acb_mse_loss, fullgraph=True, backend=backend)
    x = torch.tensor(pred, dtype=torch.float32, requires_grad=True)
    y = torch.tensor(target, dtype=torch.float32)
    got = compiled(x, y, hit_weight=3.0, per_sample=per_sample)
    got.backward()
    expected = ref_acb_mse(
        x.detach().double().numpy(), y.double().numpy(), hit_weight=3.0, per_sample=per_sample
    )
    assert math.isclose(float(got.detach()), float(expected), rel_tol=1e-5)
    if not per_sample:
        labels = default_labels(y.double().numpy())
        grad = acb_mse_grad(x.detach().double().numpy(), y.double().numpy(), labels, (1.0, 3.0))
        np.testing.assert_allclose(x.grad.double().numpy(), grad, rtol=1e-5, atol=1e-9)
    x_inf = x.detach().clone()
    x_inf.view(-1)[int(np.flatnonzero(target.ravel() == 0)[0])] = math.inf  # a non-hit's error
    assert math.isinf(float(compiled(x_inf, y, hit_weight=3.0, per_sample=per_sample)))


@pytest.mark.parametrize("width", [2048 * 3, 1024 * 5, 256 * 7, 1000])
def test_block_counts_are_exact(width):
    from acbmse_cli._kernel import _blocked_count, _blocked_sum

    rng = np.random.default_rng(width)
    indicator = rng.random((3, width)) < 0.3
    counts = _blocked_count(torch.from_numpy(indicator))
    assert counts.dtype == torch.int64 and counts.tolist() == indicator.sum(axis=1).tolist()
    values = rng.normal(size=(3, width))
    np.testing.assert_allclose(_blocked_sum(torch.from_numpy(values)).numpy(), values.sum(axis=1), rtol=1e-12)
