"""Speed of the loss, forward + backward, side by side with torch.nn.MSELoss and acb-mse 1.0.6.

Every contender runs on the same tensors, in interleaved rounds (A B C A B C ...), and the
median of the rounds is reported, so that load elsewhere on the machine hits all of them alike.
Ratios are what this measures; absolute times depend on the machine.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from acbmse_cli import acb_mse_loss

Step = Callable[[], None]


def make_batch(
    shape: tuple[int, ...], hit_fraction: float = 0.02, device: str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A sparse detector-like batch: target with ToF-like hits, a noisy prediction, 3-class labels."""
    gen = torch.Generator().manual_seed(seed)
    hits = torch.rand(shape, generator=gen) < hit_fraction
    target = torch.where(hits, 20.0 + 80.0 * torch.rand(shape, generator=gen), torch.zeros(()))
    pred = target + torch.randn(shape, generator=gen)
    labels = torch.randint(0, 3, shape, generator=gen)
    return pred.to(device), target.to(device), labels.to(device)


def dead_pixels(
    shape: tuple[int, ...], fraction: float = 0.01, device: str = "cpu", seed: int = 1
) -> torch.Tensor:
    """A mask of live pixels: ``fraction`` of the pixels of every frame dead, the same in each frame."""
    gen = torch.Generator().manual_seed(seed)
    dead = torch.rand((1, *shape[1:]), generator=gen) < fraction
    return dead.logical_not().expand(shape).contiguous().to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fwd_bwd(loss_fn: Callable[[torch.Tensor], torch.Tensor], pred: torch.Tensor) -> Step:
    leaf = pred.detach().clone().requires_grad_()

    def step() -> None:
        leaf.grad = None
        loss_fn(leaf).backward()

    return step


def time_interleaved(
    steps: dict[str, Step], rounds: int, inner: int, device: str = "cpu", warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each step, over interleaved rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            gc.collect()
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                step()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


def two_class_formula(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The default loss (A = B = 1, hits ``|target| > 0``) as one function of plain tensor ops, for
    a 64x1x88x128 batch: the least work any compiled version of it does, with none of the package's
    option handling around it (the compiled row's floor in this harness)."""
    x, y = input.reshape(1, -1, 2048), target.reshape(1, -1, 2048)
    hit = y.abs() > 0.0
    square = (x - y) ** 2
    hits = torch.where(hit, 1.0, 0.0).sum(dim=-1).to(torch.float64).sum(dim=-1)
    others = x.shape[1] * x.shape[2] - hits
    sse_hit = torch.where(hit, square, 0.0).sum(dim=-1).sum(dim=-1)
    sse_other = torch.where(hit, 0.0, square).sum(dim=-1).sum(dim=-1)
    return (sse_hit / hits.clamp(min=1).float() + sse_other / others.clamp(min=1).float())[0]


def peak_extra_memory(name: str) -> float | None:
    """Peak memory of one forward + backward, in inputs, measured in a fresh process."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/clear_refs").exists():
        return None
    probe = Path(__file__).with_name("memory_probe.py")
    result = subprocess.run(
        [sys.executable, str(probe), name], capture_output=True, text=True, timeout=300, check=False
    )
    return float(result.stdout.strip()) if result.returncode == 0 else None


def cpu_loss_rows(rounds: int = 15, inner: int = 5) -> dict[str, Any]:
    """The CPU loss ratios to nn.MSELoss, eager and compiled."""
    import acb_mse

    shape = (64, 1, 88, 128)
    pred, target, labels = make_batch(shape)
    alive = dead_pixels(shape)
    mse = torch.nn.MSELoss()
    original = acb_mse.ACBLoss()
    compiled = torch.compile(acb_mse_loss, fullgraph=True)
    compiled_mse = torch.compile(torch.nn.functional.mse_loss, fullgraph=True)
    compiled_formula = torch.compile(two_class_formula, fullgraph=True)
    formula, ours = float(compiled_formula(pred, target)), float(acb_mse_loss(pred, target))
    if abs(formula - ours) > 1e-5 * abs(ours):
        raise AssertionError(f"the two-class formula gives {formula}, acb_mse_loss {ours}")
    steps = {
        "nn.MSELoss": fwd_bwd(lambda p: mse(p, target), pred),
        "acb_mse_loss": fwd_bwd(lambda p: acb_mse_loss(p, target), pred),
        "acb_mse_loss per_sample": fwd_bwd(lambda p: acb_mse_loss(p, target, per_sample=True), pred),
        "acb_mse_loss 3 classes": fwd_bwd(
            lambda p: acb_mse_loss(p, target, labels=labels, class_weights=(1.0, 2.0, 0.5)), pred
        ),
        "acb_mse_loss mask": fwd_bwd(lambda p: acb_mse_loss(p, target, mask=alive), pred),
        "acb_mse_loss compiled": fwd_bwd(lambda p: compiled(p, target), pred),
        "nn.MSELoss compiled": fwd_bwd(lambda p: compiled_mse(p, target), pred),
        "two-class formula compiled": fwd_bwd(lambda p: compiled_formula(p, target), pred),
        "acb-mse 1.0.6": fwd_bwd(lambda p: original(p, target), pred),
    }
    times = time_interleaved(steps, rounds, inner)
    from memory_probe import CONTENDERS

    memory = {name: peak_extra_memory(name) for name in CONTENDERS}
    return {
        "shape": list(shape),
        "threads": torch.get_num_threads(),
        "seconds": times,
        "ratio_to_mse": {name: t / times["nn.MSELoss"] for name, t in times.items()},
        "speedup_over_acb_mse_1_0_6": times["acb-mse 1.0.6"] / times["acb_mse_loss"],
        "per_sample_to_default": times["acb_mse_loss per_sample"] / times["acb_mse_loss"],
        "three_classes_to_default": times["acb_mse_loss 3 classes"] / times["acb_mse_loss"],
        "mask_to_default": times["acb_mse_loss mask"] / times["acb_mse_loss"],
        "compiled_to_compiled_mse": times["acb_mse_loss compiled"] / times["nn.MSELoss compiled"],
        "compiled_to_formula": times["acb_mse_loss compiled"] / times["two-class formula compiled"],
        "peak_extra_memory_in_inputs": memory,
    }


def cuda_rows(rounds: int = 30, inner: int = 20) -> dict[str, Any]:
    """On a GPU: zero host syncs, and the ratios to nn.MSELoss."""
    if not torch.cuda.is_available():
        return {"status": "not yet measured: no CUDA device here"}
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0)}
    pred, target, labels = make_batch((16, 1, 88, 128), device="cuda")
    leaf = pred.clone().requires_grad_()
    acb_mse_loss(leaf, target).backward()  # warm up kernels and the caching allocator first
    acb_mse_loss(leaf, target, labels=labels, class_weights=(1.0, 1.0, 1.0), per_sample=True).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for options in (
            {},
            {"per_sample": True},
            {"hit_threshold": 0.5, "hit_weight": 2.0},
            {"labels": labels, "class_weights": (1.0, 1.0, 1.0)},
            {"labels": labels, "class_weights": (1.0, 1.0, 1.0), "per_sample": True},
        ):
            leaf.grad = None
            acb_mse_loss(leaf, target, **options).backward()
        result["sync_debug_error_mode"] = "no host syncs on forward + backward"
    except RuntimeError as exc:
        result["sync_debug_error_mode"] = f"SYNC: {exc}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    mse = torch.nn.MSELoss()
    for name, shape in (("256x1x88x128", (256, 1, 88, 128)), ("8x1x64x128x128", (8, 1, 64, 128, 128))):
        pred, target, _ = make_batch(shape, device="cuda")
        compiled = torch.compile(acb_mse_loss, fullgraph=True)
        steps = {
            "nn.MSELoss": fwd_bwd(lambda p, t=target: mse(p, t), pred),
            "acb_mse_loss": fwd_bwd(lambda p, t=target: acb_mse_loss(p, t), pred),
            "acb_mse_loss compiled": fwd_bwd(lambda p, t=target, f=compiled: f(p, t), pred),
        }
        times = time_interleaved(steps, rounds, inner, device="cuda")
        result[name] = {
            "seconds": times,
            "ratio_to_mse": {k: v / times["nn.MSELoss"] for k, v in times.items()},
        }
    return result
