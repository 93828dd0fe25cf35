"""mask=: elements left out of every class, against a float64 reference that sees the kept elements alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acbmse_cli import ACBMSELoss, acb_mse_loss, class_stats

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: values that would show in the loss if a masked-out element were counted anywhere
POISON = (math.nan, math.inf, -math.inf, 1e30)


# ----------------------------------------------------------------- the independent references


def classes_of(target: np.ndarray, threshold: float, labels: np.ndarray | None) -> np.ndarray:
    """Every element's class: the labels, or 1 where |target| > threshold (in float64) and 0 elsewhere."""
    if labels is not None:
        return np.asarray(labels)
    return (np.abs(np.asarray(target, dtype=np.float64)) > threshold).astype(np.int64)


def kept_loss(pred: np.ndarray, target: np.ndarray, classes: np.ndarray, keep: np.ndarray, weights) -> float:
    """The balanced loss of one group, from the kept elements alone (boolean selection first)."""
    p = np.asarray(pred, dtype=np.float64)[keep]
    t = np.asarray(target, dtype=np.float64)[keep]
    c = np.asarray(classes)[keep]
    total = 0.0
    for k, w in enumerate(weights):
        if (c == k).any():
            total += w * float(np.mean((p[c == k] - t[c == k]) ** 2))
    return total


def reference(pred, target, keep, weights, *, threshold=0.0, labels=None, per_sample=False, reduction="mean"):
    """ACB-MSE in float64 numpy of the elements where ``keep`` is True."""
    classes = classes_of(target, threshold, labels)
    if per_sample:
        losses = np.array(
            [kept_loss(pred[i], target[i], classes[i], keep[i], weights) for i in range(pred.shape[0])]
        )
        if reduction == "none":
            return losses
        if reduction == "sum":
            return np.asarray(losses.sum())
        return np.asarray(losses.mean() if losses.size else 0.0)
    if reduction == "none":
        out = np.zeros(pred.shape)
        for k, w in enumerate(weights):
            members = (classes == k) & keep
            if members.any():
                d = (
                    np.asarray(pred, dtype=np.float64)[members]
                    - np.asarray(target, dtype=np.float64)[members]
                )
                out[members] = w * d**2 / members.sum()
        return out
    return np.asarray(kept_loss(pred, target, classes, keep, weights))


def autograd_reference(x, y, keep, weights, *, classes, per_sample=False, reduction="mean", grad_out=None):
    """Gradients of the same loss written with boolean indexing in float64 torch: ``(dx, dy)``."""
    x64 = x.detach().double().requires_grad_()
    y64 = y.detach().double().requires_grad_()
    classes, keep = torch.as_tensor(classes), torch.as_tensor(keep)
    groups = [slice(i, i + 1) for i in range(x.shape[0])] if per_sample else [slice(None)]
    losses = []
    for g in groups:
        total = x64.new_zeros(())
        for k, w in enumerate(weights):
            members = (classes[g] == k) & keep[g]
            if members.any():
                total = total + w * ((x64[g][members] - y64[g][members]) ** 2).mean()
        losses.append(total)
    stacked = torch.stack(losses)
    if reduction == "none":
        assert grad_out is not None
        if per_sample:
            (stacked * grad_out).sum().backward()
        else:  # each element's term w_c d^2 / n_c, weighed by grad_out
            total = x64.new_zeros(())
            for k, w in enumerate(weights):
                members = (classes == k) & keep
                if members.any():
                    terms = w * (x64[members] - y64[members]) ** 2 / members.sum()
                    total = total + (terms * grad_out[members]).sum()
            total.backward()
    elif reduction == "sum":
        stacked.sum().backward()
    else:
        stacked.mean().backward()
    return x64.grad, y64.grad


def poisoned(rng: np.random.Generator, values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``values`` with NaN, Inf or huge numbers wherever ``keep`` is False."""
    out = np.array(values, dtype=np.float64)
    out[~keep] = rng.choice(POISON, size=int((~keep).sum()))
    return out


def sparse_data(rng, shape, sparsity=0.3, keep_fraction=0.7, scale=10.0):
    target = np.where(rng.random(shape) < sparsity, rng.normal(0.0, scale, shape), 0.0)
    pred = target + rng.normal(0.0, scale / 3, shape)
    keep = rng.random(shape) < keep_fraction
    return pred, target, keep


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}


# ----------------------------------------------------------------- values


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    sparsity=st.floats(0.0, 1.0),
    keep_fraction=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    n_classes=st.sampled_from([None, 1, 3]),
    data=st.data(),
    per_sample=st.booleans(),
    reduction=st.sampled_from(["mean", "none", "sum"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_masked_loss_is_the_loss_of_the_kept_elements(
    shape, sparsity, keep_fraction, n_classes, data, per_sample, reduction, dtype, seed
):
    if reduction == "sum" and not per_sample:
        reduction = "mean"
    rng = np.random.default_rng(seed)
    pred, target, keep = sparse_data(rng, shape, sparsity, keep_fraction)
    pred, target = poisoned(rng, pred, keep), poisoned(rng, target, keep)
    x, y = torch.tensor(pred, dtype=dtype), torch.tensor(target, dtype=dtype)
    weights_of = st.floats(0.0, 10.0, allow_nan=False)
    options: dict[str, object] = {"per_sample": per_sample, "reduction": reduction}
    if n_classes is None:
        a, b, threshold = data.draw(weights_of), data.draw(weights_of), data.draw(st.sampled_from([0.0, 0.5]))
        options |= {"hit_weight": a, "nonhit_weight": b, "hit_threshold": threshold}
        weights, labels = (b, a), None
    else:
        weights = tuple(data.draw(weights_of) for _ in range(n_classes))
        labels = rng.integers(0, n_classes, size=shape)
        options |= {"labels": torch.tensor(labels), "class_weights": weights}
        threshold = 0.0
    got = acb_mse_loss(x, y, mask=torch.tensor(keep), **options)  # type: ignore[arg-type]
    # the reference sees exactly the kept values the loss sees, in float64
    expected = reference(
        x.double().numpy(),
        y.double().numpy(),
        keep,
        weights,
        threshold=threshold,
        labels=labels,
        per_sample=per_sample,
        reduction=reduction,
    )
    assert got.dtype == dtype and tuple(got.shape) == expected.shape
    np.testing.assert_allclose(got.double().numpy(), expected, **tol(dtype))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"hit_weight": 3.0, "nonhit_weight": 0.25, "hit_threshold": 0.5},
        {"per_sample": True},
        {"per_sample": True, "reduction": "none"},
        {"reduction": "none"},
        {"labels": True, "class_weights": (0.5, 1.0, 4.0)},
    ],
)
def test_a_mask_of_all_true_changes_nothing(options):
    rng = np.random.default_rng(1)
    pred, target, _ = sparse_data(rng, (3, 4, 5))
    options = dict(options)
    if options.get("labels") is True:
        options["labels"] = torch.tensor(rng.integers(0, 3, size=pred.shape))
    everything = torch.ones(pred.shape, dtype=torch.bool)
    x1, x2 = (torch.tensor(pred, requires_grad=True) for _ in range(2))
    y = torch.tensor(target)
    plain, masked = acb_mse_loss(x1, y, **options), acb_mse_loss(x2, y, mask=everything, **options)
    assert torch.equal(plain, masked)
    plain.sum().backward()
    masked.sum().backward()
    assert torch.equal(x1.grad, x2.grad)


@pytest.mark.parametrize("per_sample", [False, True])
def test_a_class_emptied_by_the_mask_adds_zero(per_sample):
    # every hit sits where the mask is False: the hit class is empty, the loss is B * MSE of the rest
    target = torch.tensor([[0.0, 0.0, 7.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    pred = torch.tensor([[1.0, 2.0, math.nan, 0.0], [3.0, -4.0, 0.0, 1.0]])
    keep = target == 0
    got = acb_mse_loss(pred, target, hit_weight=9.0, nonhit_weight=2.0, mask=keep, per_sample=per_sample)
    if per_sample:
        expected = (2.0 * (1 + 4 + 0) / 3 + 2.0 * (9 + 0 + 1) / 3) / 2
    else:
        expected = 2.0 * (1 + 4 + 0 + 9 + 0 + 1) / 6
    assert math.isclose(float(got), expected, rel_tol=1e-6)
    # labelled: class 2 is only under the mask, so its weight never enters
    labels = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 1]])
    keep = labels != 2
    got = acb_mse_loss(pred, target, labels=labels, class_weights=[1.0, 3.0, 100.0], mask=keep)
    expected = 1.0 * (1 + 0 + 0) / 3 + 3.0 * (4 + 9 + 1) / 3
    assert math.isclose(float(got), expected, rel_tol=1e-6)
    # a sample with no element kept has loss 0, and still counts in the mean over samples
    nothing = torch.tensor([[True] * 4, [False] * 4])
    losses = acb_mse_loss(
        torch.ones(2, 4), torch.zeros(2, 4), mask=nothing, per_sample=True, reduction="none"
    )
    assert losses.tolist() == [1.0, 0.0]
    assert float(acb_mse_loss(torch.ones(2, 4), torch.zeros(2, 4), mask=nothing, per_sample=True)) == 0.5
    # nothing kept at all: every class empty, 0
    assert float(acb_mse_loss(pred, target, mask=torch.zeros(2, 4, dtype=torch.bool))) == 0.0


# ----------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"hit_weight": 3.0, "nonhit_weight": 0.25, "hit_threshold": 0.5},
        {"per_sample": True},
        {"per_sample": True, "reduction": "sum"},
        {"per_sample": True, "reduction": "none"},
        {"reduction": "none"},
        {"labels": True, "class_weights": (0.5, 1.0, 4.0)},
        {"labels": True, "class_weights": (0.5, 1.0, 4.0), "per_sample": True},
        {"labels": True, "class_weights": (0.5, 1.0, 4.0), "reduction": "none"},
    ],
)
@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_match_a_float64_autograd_reference(options, create_graph, dtype):
    rng = np.random.default_rng(2)
    pred, target, keep = sparse_data(rng, (3, 4, 6))
    target = np.where(np.abs(target) < 1.0, 0.0, target)  # no target next to the hit threshold
    pred, target = poisoned(rng, pred, keep), poisoned(rng, target, keep)
    options = dict(options)
    threshold = float(options.get("hit_threshold", 0.0))  # type: ignore[arg-type]
    if options.get("labels") is True:
        labels = rng.integers(0, 3, size=pred.shape)
        options["labels"] = torch.tensor(labels)
        weights = options["class_weights"]
    else:
        labels = None
        weights = (options.get("nonhit_weight", 1.0), options.get("hit_weight", 1.0))
    x = torch.tensor(pred, dtype=dtype, requires_grad=True)
    y = torch.tensor(target, dtype=dtype, requires_grad=True)
    loss = acb_mse_loss(x, y, mask=torch.tensor(keep), **options)  # type: ignore[arg-type]
    grad_out = torch.tensor(rng.normal(size=loss.shape), dtype=dtype) if loss.ndim else torch.ones(())
    dx, dy = torch.autograd.grad(loss, (x, y), grad_out, create_graph=create_graph)
    want_x, want_y = autograd_reference(
        x,
        y,
        keep,
        weights,
        classes=classes_of(y.detach().double().numpy(), threshold, labels),
        per_sample=bool(options.get("per_sample")),
        reduction=str(options.get("reduction", "mean")),
        grad_out=grad_out.double(),
    )
    assert torch.equal(dx.detach()[~torch.tensor(keep)], torch.zeros(int((~keep).sum()), dtype=dtype))
    np.testing.assert_allclose(
        dx.detach().double().numpy(), want_x.numpy(), rtol=tol(dtype)["rtol"], atol=1e-12
    )
    np.testing.assert_allclose(
        dy.detach().double().numpy(), want_y.numpy(), rtol=tol(dtype)["rtol"], atol=1e-12
    )


def test_gradcheck_with_a_mask():
    rng = np.random.default_rng(3)
    pred, target, keep = sparse_data(rng, (3, 4, 5))
    target = np.where(np.abs(target) < 0.3, 0.0, target)
    mask = torch.tensor(keep)
    labels = torch.tensor(rng.integers(0, 3, size=pred.shape))
    x = torch.tensor(pred, requires_grad=True)
    for options in (
        {"hit_threshold": 0.1},
        {"labels": labels, "class_weights": [0.5, 1.0, 4.0], "per_sample": True},
    ):
        y = torch.tensor(target, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b, o=options: acb_mse_loss(a, b, mask=mask, **o), (x, y))
        assert torch.autograd.gradgradcheck(
            lambda a, b, o=options: acb_mse_loss(a, b, mask=mask, **o), (x, y)
        )


# ----------------------------------------------------------------- compiled, no host reads, labels


def test_mask_under_torch_compile_fullgraph():
    torch._dynamo.reset()
    rng = np.random.default_rng(4)
    pred, target, keep = sparse_data(rng, (4, 1, 8, 8))
    pred, target = poisoned(rng, pred, keep), poisoned(rng, target, keep)
    mask = torch.tensor(keep)
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
        got = compiled(x, y, mask=mask, **options)
        got.sum().backward()
        x_ref = x.detach().clone().requires_grad_()
        want = acb_mse_loss(x_ref, y, mask=mask, **options)
        want.sum().backward()
        assert torch.isfinite(got).all() and torch.isfinite(x.grad).all()
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(x.grad, x_ref.grad)


def test_mask_under_torch_compile_inductor():
    torch._dynamo.reset()
    rng = np.random.default_rng(5)
    pred, target, keep = sparse_data(rng, (4, 1, 16, 16), sparsity=0.05)
    pred, target = poisoned(rng, pred, keep), poisoned(rng, target, keep)
    compiled = torch.compile(acb_mse_loss, fullgraph=True)
    x = torch.tensor(pred, dtype=torch.float32, requires_grad=True)
    y = torch.tensor(target, dtype=torch.float32)
    got = compiled(x, y, hit_weight=2.0, mask=torch.tensor(keep))
    got.backward()
    expected = reference(x.detach().double().numpy(), y.double().numpy(), keep, (1.0, 2.0))
    assert math.isclose(float(got.detach()), float(expected), rel_tol=1e-5)
    want_x, _ = autograd_reference(x, y, keep, (1.0, 2.0), classes=classes_of(y.double().numpy(), 0.0, None))
    np.testing.assert_allclose(x.grad.double().numpy(), want_x.numpy(), rtol=1e-5, atol=1e-7)


def test_no_host_reads_with_a_mask():
    """On the meta device every value read (.item(), bool(tensor), boolean indexing) raises."""
    x = torch.empty(4, 1, 8, 8, device="meta", requires_grad=True)
    y = torch.empty(4, 1, 8, 8, device="meta")
    mask = torch.empty(4, 1, 8, 8, device="meta", dtype=torch.bool)
    labels = torch.empty(4, 1, 8, 8, device="meta", dtype=torch.int64)
    for options in (
        {},
        {"per_sample": True},
        {"reduction": "none"},
        {"labels": labels, "class_weights": [1.0, 2.0, 3.0]},
        {"labels": labels, "class_weights": [1.0, 2.0, 3.0], "per_sample": True},
    ):
        out = acb_mse_loss(x, y, mask=mask, **options)
        out.sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape
        x.grad = None
    stats = class_stats(x.detach(), y, mask=mask, host_sync=False)
    assert stats.count.shape == (1, 2)


def test_labels_out_of_range_where_the_mask_leaves_them_out():
    """Out-of-range labels under the mask are left out like the rest: no error, no NaN."""
    torch._dynamo.reset()
    labels = torch.tensor([[0, 1, 7, -1, 1]])
    keep = torch.tensor([[True, True, False, False, True]])
    x, y = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0]]), torch.zeros(1, 5)
    expected = 1.0 * 1.0 + 2.0 * (4.0 + 0.0) / 2
    assert float(acb_mse_loss(x, y, labels=labels, class_weights=[1.0, 2.0], mask=keep)) == expected
    compiled = torch.compile(acb_mse_loss, fullgraph=True, backend="aot_eager")
    assert float(compiled(x, y, labels=labels, class_weights=[1.0, 2.0], mask=keep)) == expected
    # a kept label out of range is still refused on the CPU, and NaN where it cannot be checked
    with pytest.raises(ValueError, match=r"from -1 to 1"):
        acb_mse_loss(x, y, labels=labels, class_weights=[1.0, 2.0], mask=keep | (labels == -1))
    assert math.isnan(
        float(compiled(x, y, labels=labels, class_weights=[1.0, 2.0], mask=keep | (labels == 7)))
    )


# ----------------------------------------------------------------- the module, class_stats, validation


def test_module_takes_a_mask_per_call():
    rng = np.random.default_rng(6)
    pred, target, keep = sparse_data(rng, (2, 5, 5))
    module = ACBMSELoss(hit_weight=2.0, per_sample=True)
    got = module(torch.tensor(pred), torch.tensor(target), mask=torch.tensor(keep))
    assert math.isclose(
        float(got), float(reference(pred, target, keep, (1.0, 2.0), per_sample=True)), rel_tol=1e-12
    )
    labelled = ACBMSELoss(class_weights=[1.0, 2.0, 0.5])
    labels = rng.integers(0, 3, size=pred.shape)
    got = labelled(torch.tensor(pred), torch.tensor(target), torch.tensor(labels), torch.tensor(keep))
    want = reference(pred, target, keep, (1.0, 2.0, 0.5), labels=labels)
    assert math.isclose(float(got), float(want), rel_tol=1e-12)


@pytest.mark.parametrize("host_sync", [True, False])
@pytest.mark.parametrize("labelled", [False, True])
def test_class_stats_with_a_mask_against_numpy(host_sync, labelled):
    rng = np.random.default_rng(7)
    pred, target, keep = sparse_data(rng, (3, 7, 9))
    pred, target = poisoned(rng, pred, keep), poisoned(rng, target, keep)
    labels = rng.integers(0, 3, size=pred.shape) if labelled else None
    classes = classes_of(target, 0.5, labels)
    stats = class_stats(
        torch.tensor(pred),
        torch.tensor(target),
        hit_threshold=0.0 if labelled else 0.5,
        labels=None if labels is None else torch.tensor(labels),
        num_classes=3 if labelled else None,
        per_sample=True,
        extended=True,
        mask=torch.tensor(keep),
        host_sync=host_sync,
    )
    for s in range(3):
        for c in range(3 if labelled else 2):
            m = (classes[s] == c) & keep[s]
            err = pred[s][m] - target[s][m]
            assert int(stats.count[s, c]) == int(m.sum())
            np.testing.assert_allclose(float(stats.sse[s, c]), np.sum(err**2), rtol=1e-12)
            np.testing.assert_allclose(float(stats.sae[s, c]), np.sum(np.abs(err)), rtol=1e-12)
            np.testing.assert_allclose(float(stats.max_abs_error[s, c]), np.max(np.abs(err), initial=0.0))
            np.testing.assert_allclose(float(stats.sum_input[s, c]), np.sum(pred[s][m]), rtol=1e-12)
            np.testing.assert_allclose(float(stats.sum_target[s, c]), np.sum(target[s][m]), atol=1e-12)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.ones((2, 3), dtype=bool), "mask must be a boolean tensor, got ndarray"),
        (torch.ones(2, 3), "mask must be a boolean tensor.*float32"),
        (torch.ones(2, 3, dtype=torch.uint8), "mask must be a boolean tensor.*uint8"),
        (torch.ones(3, 2, dtype=torch.bool), r"mask must have the target's shape \(2, 3\), got \(3, 2\)"),
        (torch.ones(1, 3, dtype=torch.bool), r"mask must have the target's shape"),
    ],
)
def test_an_invalid_mask_is_an_error_naming_mask(mask, message):
    with pytest.raises(ValueError, match=message):
        acb_mse_loss(torch.zeros(2, 3), torch.zeros(2, 3), mask=mask)
    with pytest.raises(ValueError, match=message):
        class_stats(torch.zeros(2, 3), torch.zeros(2, 3), mask=mask)


@pytest.mark.parametrize("labelled", [False, True])
def test_class_stats_gradient_is_zero_and_finite_where_the_mask_leaves_out(labelled):
    rng = np.random.default_rng(8)
    pred, target, keep = sparse_data(rng, (4, 9))
    pred, target = poisoned(rng, pred, keep), poisoned(rng, target, keep)
    labels = rng.integers(0, 3, size=pred.shape) if labelled else None
    x = torch.tensor(pred, requires_grad=True)
    stats = class_stats(
        x,
        torch.tensor(target),
        labels=None if labels is None else torch.tensor(labels),
        num_classes=3 if labelled else None,
        mask=torch.tensor(keep),
        extended=True,
    )
    (stats.sse.sum() + stats.sae.sum() + stats.sum_input.sum()).backward()
    d = np.where(keep, pred, 0.0) - np.where(keep, target, 0.0)
    expected = np.where(keep, 2 * d + np.sign(d) + 1.0, 0.0)  # d/dx of d^2 + |d| + x, kept elements only
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)
    assert int(stats.count.sum()) == int(keep.sum())
