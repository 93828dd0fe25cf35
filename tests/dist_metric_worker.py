"""One rank of the metric's DDP test: started by tests/test_metrics.py, not collected by pytest.

Usage: python dist_metric_worker.py OUT_DIR  (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment)
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from acbmse_cli.metrics import ACBMSEMetric

#: the batches of each rank, as (start, stop) samples of the global data: different numbers of
#: batches, batch sizes and hit densities on the two ranks
BATCHES = (((0, 1), (1, 4)), ((4, 9),))
CASES = {
    "default": {"options": {"hit_weight": 3.0, "nonhit_weight": 0.5, "hit_threshold": 0.5}},
    "labels": {"options": {"class_weights": [0.5, 1.0, 4.0]}, "labels": True},
    "mask": {"options": {"hit_weight": 2.0}, "mask": True},
    "labels_mask": {"options": {"class_weights": [0.5, 1.0, 4.0]}, "labels": True, "mask": True},
}


def global_data() -> dict[str, torch.Tensor]:
    """Nine samples; the first four dense in hits, the rest sparse; labels and a mask of dead pixels."""
    gen = torch.Generator().manual_seed(99)
    shape = (9, 1, 10, 12)
    share = torch.tensor([0.6, 0.5, 0.4, 0.5, 0.02, 0.01, 0.0, 0.03, 0.02]).view(9, 1, 1, 1)
    hits = torch.rand(shape, generator=gen) < share
    target = torch.where(hits, 1.0 + 99.0 * torch.rand(shape, generator=gen), torch.zeros(()))
    pred = target + 5.0 * torch.randn(shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, shape, generator=gen)
    mask = torch.rand(shape, generator=gen) > 0.15
    return {"pred": pred, "target": target.double(), "labels": labels, "mask": mask}


def update_args(name: str, data: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    case = CASES[name]
    args = {"preds": data["pred"][rows], "target": data["target"][rows]}
    if case.get("labels"):
        args["labels"] = data["labels"][rows]
    if case.get("mask"):
        args["mask"] = data["mask"][rows]
    return args


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = global_data()
    results: dict[str, object] = {}
    for name, case in CASES.items():
        metric = ACBMSEMetric(**case["options"])  # type: ignore[arg-type]
        for start, stop in BATCHES[rank]:
            metric.update(**update_args(name, data, slice(start, stop)))
        value = metric.compute()
        classes = metric.compute_classes()
        # the local states are restored after compute: a second compute gives the same global value
        metric.update(**update_args(name, data, slice(0, 0)))
        results[name] = {"value": value, "again": metric.compute(), "classes": classes, "local": metric.count}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
