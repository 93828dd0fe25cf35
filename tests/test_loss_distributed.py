"""sync_dist: two gloo processes on the CPU against one process that sees the whole batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_loss_worker import BAD_LABEL_CASES, CASES, SPLIT, global_batch, global_mask, options_for

from acbmse_cli import ACBMSELoss, acb_mse_loss

WORKER = Path(__file__).with_name("dist_loss_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(out: Path, *mode: str, timeout: float = 300) -> None:
    """Start the worker on every rank and wait for all of them; a rank left waiting fails the test."""
    port = free_port()
    world = len(SPLIT)
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(out), *mode],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        for proc in procs:
            output, _ = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, output
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    run_ranks(out)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(len(SPLIT))]


def test_a_bad_label_on_one_rank_is_the_same_error_on_every_rank(tmp_path: Path) -> None:
    run_ranks(tmp_path, "bad-label", timeout=120)  # a rank left waiting in a collective times out here
    results = [torch.load(tmp_path / f"bad{rank}.pt", weights_only=True) for rank in range(len(SPLIT))]
    pred, target, labels = global_batch()
    expected = acb_mse_loss(pred, target, **options_for("labels", labels))  # type: ignore[arg-type]
    for name in BAD_LABEL_CASES:
        messages = {r[name] for r in results}
        assert len(messages) == 1, messages
        (message,) = messages
        assert message is not None and "labels must lie in [0, 3)" in message and "1 of 2 ranks" in message
    for result in results:  # the collectives still pair: the next loss is the global one on every rank
        torch.testing.assert_close(result["after"], expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_every_rank_gets_the_global_loss_and_scaled_gradient(ranks, name):
    pred, target, labels = global_batch()
    x = pred.clone().requires_grad_()
    expected = acb_mse_loss(x, target, **options_for(name, labels, global_mask()))  # type: ignore[arg-type]
    expected.backward()
    world = len(ranks)
    for result in ranks:
        start, stop = result["slice"]
        got = result[name]
        torch.testing.assert_close(got["loss"], expected.detach(), rtol=1e-12, atol=0)
        # DDP averages the ranks' gradients: each rank must hold world_size x its slice
        torch.testing.assert_close(got["grad"], world * x.grad[start:stop], rtol=1e-12, atol=1e-15)
    # the ranks really hold different class balances: without sync_dist the losses differ
    if not CASES[name].get("per_sample"):
        want = float(expected.detach())
        assert abs(float(ranks[0][name]["unsynced"]) - want) > 1e-3 * want


def test_averaged_rank_gradients_are_the_global_gradient(ranks):
    pred, target, _ = global_batch()
    x = pred.clone().requires_grad_()
    acb_mse_loss(x, target).backward()
    averaged = torch.cat([r["default"]["grad"] for r in ranks]) / len(ranks)
    torch.testing.assert_close(averaged, x.grad, rtol=1e-12, atol=1e-15)


def test_module_option(ranks):
    pred, target, _ = global_batch()
    x = pred.clone().requires_grad_()
    expected = ACBMSELoss(hit_weight=2.0)(x, target)
    expected.backward()
    for result in ranks:
        start, stop = result["slice"]
        torch.testing.assert_close(result["module"]["loss"], expected.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(result["module"]["grad"], 2 * x.grad[start:stop], rtol=1e-12, atol=1e-15)


def test_without_a_process_group_sync_dist_changes_nothing():
    pred, target, labels = global_batch()
    for name in CASES:
        options = options_for(name, labels, global_mask())
        torch.testing.assert_close(
            acb_mse_loss(pred, target, sync_dist=True, **options),  # type: ignore[arg-type]
            acb_mse_loss(pred, target, **options),  # type: ignore[arg-type]
        )
