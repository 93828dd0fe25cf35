"""ACBMSEMetric: pooled over updates as if the batches were concatenated, against the loss and numpy."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_metric_worker import BATCHES, CASES, global_data, update_args

from acbmse_cli import acb_mse_loss
from acbmse_cli.metrics import ACBMSEMetric

WORKER = Path(__file__).with_name("dist_metric_worker.py")


def reference(pred, target, weights, *, threshold=0.0, labels=None, keep=None) -> tuple[float, list, list]:
    """ACB-MSE, class counts and class MSEs in float64 numpy, of all kept elements pooled."""
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    classes = (np.abs(t) > threshold).astype(np.int64) if labels is None else np.asarray(labels).ravel()
    kept = np.ones(p.shape, dtype=bool) if keep is None else np.asarray(keep).ravel()
    total, counts, mses = 0.0, [], []
    for c, w in enumerate(weights):
        members = (classes == c) & kept
        counts.append(int(members.sum()))
        mses.append(float(np.mean((p[members] - t[members]) ** 2)) if members.any() else math.nan)
        if members.any():
            total += w * mses[-1]
    return total, counts, mses


def batches(rng: np.random.Generator, sizes, shape=(6, 7), labelled=False, masked=False):
    """Batches of different sizes and hit densities: dicts of the metric's update arguments."""
    out = []
    for i, n in enumerate(sizes):
        density = (0.5, 0.02, 0.2, 0.0)[i % 4]
        target = np.where(rng.random((n, *shape)) < density, rng.normal(0, 20, (n, *shape)), 0.0)
        batch = {
            "preds": torch.tensor(target + rng.normal(0, 3, target.shape)),
            "target": torch.tensor(target),
        }
        if labelled:
            batch["labels"] = torch.tensor(rng.integers(0, 3, size=target.shape))
        if masked:
            batch["mask"] = torch.tensor(rng.random(target.shape) > 0.2)
        out.append(batch)
    return out


def concatenated(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


CONFIGS = {
    "default": ({}, False),
    "weights": ({"hit_weight": 4.0, "nonhit_weight": 0.5, "hit_threshold": 2.0}, False),
    "labels": ({"class_weights": [0.5, 1.0, 4.0]}, True),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_compute_pools_every_update_as_if_concatenated(config, masked):
    options, labelled = CONFIGS[config]
    parts = batches(np.random.default_rng(1), (3, 1, 5, 2, 4), labelled=labelled, masked=masked)
    metric = ACBMSEMetric(**options)
    for part in parts:
        metric.update(**part)
    value = metric.compute()
    assert value.shape == () and value.dtype == torch.float64
    whole = concatenated(parts)
    loss_options = dict(options)
    if labelled:
        loss_options["labels"] = whole["labels"]
    expected_loss = acb_mse_loss(whole["preds"], whole["target"], mask=whole.get("mask"), **loss_options)
    torch.testing.assert_close(value, expected_loss, rtol=1e-12, atol=0)
    weights = options.get("class_weights") or (
        options.get("nonhit_weight", 1.0),
        options.get("hit_weight", 1.0),
    )
    expected, counts, mses = reference(
        whole["preds"],
        whole["target"],
        weights,
        threshold=options.get("hit_threshold", 0.0),
        labels=whole.get("labels"),
        keep=whole.get("mask"),
    )
    assert math.isclose(float(value), expected, rel_tol=1e-12)
    classes = metric.compute_classes()
    assert classes["count"].dtype == torch.int64 and classes["count"].tolist() == counts
    np.testing.assert_allclose(classes["mse"].numpy(), mses, rtol=1e-12)
    # not the mean of the batches' values
    per_batch = [
        float(acb_mse_loss(p["preds"], p["target"], mask=p.get("mask"), **_labelled(options, p)))
        for p in parts
    ]
    assert abs(np.mean(per_batch) - expected) > 1e-3 * expected


def _labelled(options: dict, part: dict[str, torch.Tensor]) -> dict:
    return {**options, "labels": part["labels"]} if "class_weights" in options else dict(options)


def test_float32_batches_add_up_in_float64():
    rng = np.random.default_rng(2)
    parts = [{k: v.float() for k, v in p.items()} for p in batches(rng, (8, 8, 8, 8), shape=(30, 40))]
    metric = ACBMSEMetric(hit_weight=2.0)
    for part in parts:
        metric.update(**part)
    whole = concatenated(parts)
    expected, _, _ = reference(whole["preds"].double(), whole["target"].double(), (1.0, 2.0))
    assert metric.compute().dtype == torch.float64
    assert math.isclose(float(metric.compute()), expected, rel_tol=1e-6)


def test_reset_forward_and_an_emptied_class():
    metric = ACBMSEMetric(hit_weight=2.0)
    target = torch.tensor([[0.0, 0.0, 5.0, 0.0]])
    pred = torch.tensor([[1.0, 0.0, math.nan, 2.0]])
    # forward: this batch's value, and the batch is added to the states too
    batch_value = metric(pred, target, mask=target == 0)
    assert math.isclose(float(batch_value), (1.0 + 0.0 + 4.0) / 3)  # the hit class is only under the mask
    metric.update(torch.tensor([[3.0]]), torch.tensor([[1.0]]))
    assert math.isclose(float(metric.compute()), 5.0 / 3 + 2.0 * 4.0)
    assert metric.compute_classes()["count"].tolist() == [3, 1]
    metric.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns that compute comes before any update
        assert float(metric.compute()) == 0.0
        classes = metric.compute_classes()
    assert classes["count"].tolist() == [0, 0] and torch.isnan(classes["mse"]).all()


def test_no_host_reads_in_update():
    """On the meta device every value read (.item(), bool(tensor), boolean indexing) raises."""
    for options, labels in (
        ({}, None),
        ({"class_weights": [1.0, 2.0, 3.0]}, torch.zeros(4, 5, dtype=torch.long)),
    ):
        metric = ACBMSEMetric(**options).to("meta")
        x = torch.empty(4, 5, device="meta")
        mask = torch.empty(4, 5, dtype=torch.bool, device="meta")
        metric.update(x, x, labels=None if labels is None else labels.to("meta"), mask=mask)
        assert metric.count.device.type == "meta" and metric.compute().shape == ()


def test_labels_out_of_range_are_refused_on_the_cpu_and_nan_where_unchecked():
    metric = ACBMSEMetric(class_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metric.update(torch.zeros(3), torch.zeros(3), labels=torch.tensor([0, 1, 2]))
    # under the mask, an out-of-range label is left out like the rest
    metric.update(
        torch.ones(3), torch.zeros(3), labels=torch.tensor([0, 1, 2]), mask=torch.tensor([1, 1, 0]).bool()
    )
    assert float(metric.compute()) == 2.0
    # where labels are not checked (off the CPU), an element counted in no class makes the value NaN
    unchecked = ACBMSEMetric(class_weights=[1.0, 1.0])
    unchecked.update(torch.ones(3), torch.zeros(3), labels=torch.tensor([0, 1, 1]))
    unchecked.elements += 1
    assert math.isnan(float(unchecked.compute()))


@pytest.mark.parametrize(
    ("options", "update", "message"),
    [
        ({"hit_weight": -1.0}, {}, "hit_weight"),
        ({"class_weights": []}, {}, "class_weights"),
        ({"class_weights": [1.0], "hit_threshold": 0.5}, {}, "hit_threshold"),
        ({"class_weights": [1.0, 2.0]}, {}, "update needs labels"),
        ({}, {"labels": torch.zeros(2, 3, dtype=torch.long)}, "labels needs class_weights"),
        ({}, {"mask": torch.ones(2, 3)}, "mask must be a boolean tensor"),
        ({}, {"mask": torch.ones(3, 2, dtype=torch.bool)}, "mask must have the target's shape"),
    ],
)
def test_invalid_options_name_the_option(options, update, message):
    with pytest.raises(ValueError, match=message):
        ACBMSEMetric(**options).update(torch.zeros(2, 3), torch.zeros(2, 3), **update)


def test_without_torchmetrics_one_clear_import_error_and_the_loss_still_imports():
    code = (
        "import sys; sys.modules['torchmetrics'] = None\n"
        "import acbmse_cli, torch\n"
        "assert float(acbmse_cli.acb_mse_loss(torch.ones(2), torch.zeros(2))) == 1.0\n"
        "try:\n"
        "    import acbmse_cli.metrics\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pip install 'acbmse-cli[metrics]'" in result.stdout
    assert result.stdout.count("\n") == 1


# ----------------------------------------------------------------- two gloo processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist_metric")
    port, world = free_port(), len(BATCHES)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out)],
            env=dict(
                os.environ,
                RANK=str(rank),
                WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                OMP_NUM_THREADS="1",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    try:
        for proc in procs:
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, output
    finally:
        for proc in procs:
            proc.kill()
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(world)]


@pytest.mark.parametrize("name", list(CASES))
def test_every_rank_computes_the_value_of_all_ranks_data(ranks, name):
    data = global_data()
    every = update_args(name, data, slice(0, sum(stop - start for rank in BATCHES for start, stop in rank)))
    options = dict(CASES[name]["options"])
    labels = every.get("labels")
    weights = options.get("class_weights") or (
        options.get("nonhit_weight", 1.0),
        options.get("hit_weight", 1.0),
    )
    expected, counts, mses = reference(
        every["preds"],
        every["target"],
        weights,
        threshold=options.get("hit_threshold", 0.0),
        labels=labels,
        keep=every.get("mask"),
    )
    loss = acb_mse_loss(every["preds"], every["target"], labels=labels, mask=every.get("mask"), **options)
    local_counts = []
    for result in ranks:
        got = result[name]
        torch.testing.assert_close(got["value"], loss, rtol=1e-12, atol=0)
        assert math.isclose(float(got["value"]), expected, rel_tol=1e-12)
        torch.testing.assert_close(got["again"], got["value"], rtol=0, atol=0)
        assert got["classes"]["count"].tolist() == counts
        np.testing.assert_allclose(got["classes"]["mse"].numpy(), mses, rtol=1e-12)
        local_counts.append(got["local"])
    # each rank kept its own states after compute, and they differ: the ranks saw different data
    assert (local_counts[0] + local_counts[1]).tolist() == counts
    assert local_counts[0].tolist() != local_counts[1].tolist()
