"""One rank of the sync_dist test: started by tests/test_loss_distributed.py, not collected by pytest.

Usage: python dist_loss_worker.py OUT_DIR [bad-label]  (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the
environment).  With ``bad-label``, rank 1 alone holds a label outside the classes: every rank records the
error it raised, then computes one valid loss, which completes only if the ranks' collectives still pair.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from acbmse_cli import ACBMSELoss, acb_mse_loss

CASES = {
    "default": {},
    "weights": {"hit_weight": 3.0, "nonhit_weight": 0.25, "hit_threshold": 0.5},
    "per_sample_mean": {"per_sample": True},
    "per_sample_sum": {"per_sample": True, "reduction": "sum"},
    "labels": {"labels": True, "class_weights": [0.5, 1.0, 4.0]},
    "labels_per_sample": {"labels": True, "class_weights": [0.5, 1.0, 4.0], "per_sample": True},
    "mask": {"mask": True, "hit_weight": 2.0},
    "mask_per_sample": {"mask": True, "per_sample": True},
    "labels_mask": {"labels": True, "class_weights": [0.5, 1.0, 4.0], "mask": True},
}
SPLIT = (2, 5)  # rank 0 holds samples [0, 2), rank 1 samples [2, 7): different sizes and hit counts


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seven samples; the first two dense in hits, the rest very sparse."""
    gen = torch.Generator().manual_seed(1234)
    shape = (7, 1, 12, 16)
    share = torch.tensor([0.5, 0.4, 0.02, 0.01, 0.03, 0.0, 0.02]).view(7, 1, 1, 1)
    hits = torch.rand(shape, generator=gen) < share
    target = torch.where(hits, 1.0 + 99.0 * torch.rand(shape, generator=gen), torch.zeros(()))
    pred = target + 5.0 * torch.randn(shape, generator=gen, dtype=torch.float32)
    labels = torch.randint(0, 3, shape, generator=gen)
    return pred.double(), target.double(), labels


def global_mask() -> torch.Tensor:
    """The elements to keep: a dead column in every sample and a tenth of the pixels at random."""
    gen = torch.Generator().manual_seed(4321)
    keep = torch.rand(7, 1, 12, 16, generator=gen) > 0.1
    keep[..., 3] = False
    return keep


def options_for(name: str, labels: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, object]:
    options = dict(CASES[name])
    if options.get("labels") is True:
        options["labels"] = labels
    if options.get("mask") is True:
        assert mask is not None
        options["mask"] = mask
    return options


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    pred, target, labels = global_batch()
    mask = global_mask()
    start = sum(SPLIT[:rank])
    local = slice(start, start + SPLIT[rank])
    results: dict[str, object] = {"rank": rank, "world": world, "slice": (local.start, local.stop)}
    for name in CASES:
        x = pred[local].clone().requires_grad_()
        options = options_for(name, labels[local], mask[local])
        loss = acb_mse_loss(x, target[local], sync_dist=True, **options)  # type: ignore[arg-type]
        loss.backward()
        unsynced = acb_mse_loss(pred[local], target[local], **options)  # type: ignore[arg-type]
        results[name] = {"loss": loss.detach(), "grad": x.grad, "unsynced": unsynced}
    module = ACBMSELoss(hit_weight=2.0, sync_dist=True)
    x = pred[local].clone().requires_grad_()
    loss = module(x, target[local])
    loss.backward()
    results["module"] = {"loss": loss.detach(), "grad": x.grad}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


BAD_LABEL_CASES = ("labels", "labels_per_sample")


def main_bad_label(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    pred, target, labels = global_batch()
    start = sum(SPLIT[:rank])
    local = slice(start, start + SPLIT[rank])
    bad = labels[local].clone()
    if rank == 1:
        bad[0, 0, 0, 0] = 3  # one label past the three classes, on this rank only
    results: dict[str, object] = {}
    for name in BAD_LABEL_CASES:
        options = options_for(name, bad)
        try:
            acb_mse_loss(pred[local], target[local], sync_dist=True, **options)  # type: ignore[arg-type]
        except ValueError as exc:
            results[name] = str(exc)
        else:
            results[name] = None
    valid = options_for("labels", labels[local])
    results["after"] = acb_mse_loss(pred[local], target[local], sync_dist=True, **valid)  # type: ignore[arg-type]
    torch.save(results, os.path.join(out_dir, f"bad{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2:] == ["bad-label"]:
        main_bad_label(sys.argv[1])
    else:
        main(sys.argv[1])
