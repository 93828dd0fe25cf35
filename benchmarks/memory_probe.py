"""Peak memory one forward + backward adds, measured in a fresh process (Linux only).

Usage: python memory_probe.py CONTENDER  -> prints the peak extra resident memory in units of the
input's size. A fresh process has no freed memory cached by the allocator from earlier calls, so
the growth of the peak (VmHWM, reset through /proc/self/clear_refs) is what the call needed.
"""

from __future__ import annotations

import sys

import torch

from acbmse_cli import acb_mse_loss

CONTENDERS = {
    "nn.MSELoss": lambda x, y, labels: torch.nn.functional.mse_loss(x, y),
    "acb_mse_loss": lambda x, y, labels: acb_mse_loss(x, y),
    "acb_mse_loss per_sample": lambda x, y, labels: acb_mse_loss(x, y, per_sample=True),
    "acb_mse_loss 3 classes": lambda x, y, labels: acb_mse_loss(
        x, y, labels=labels, class_weights=(1.0, 2.0, 0.5)
    ),
}


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _every_large_allocation_mapped_alone() -> None:
    """glibc serves large blocks from a heap that may or may not be returned to the OS, which makes
    the resident peak vary from run to run; mapped alone, a block is resident exactly while it lives."""
    import ctypes

    m_mmap_threshold = -3
    ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, 1 << 16)


def main(name: str) -> None:
    _every_large_allocation_mapped_alone()
    loss = CONTENDERS[name]
    shape = (256, 1, 88, 128)  # large enough that one-off allocations do not matter
    gen = torch.Generator().manual_seed(0)
    target = torch.where(torch.rand(shape, generator=gen) < 0.02, 100.0, 0.0)
    labels = torch.randint(0, 3, shape, generator=gen)
    pred = (target + torch.randn(shape, generator=gen)).requires_grad_()
    small = pred[:1].detach().clone().requires_grad_()
    loss(small, target[:1], labels[:1]).backward()  # lazy initialisation on a small batch first
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak to the current size
    before = _status("VmRSS:")
    loss(pred, target, labels).backward()
    print((_status("VmHWM:") - before) / (pred.numel() * pred.element_size()))


if __name__ == "__main__":
    main(sys.argv[1])
