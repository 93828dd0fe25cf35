"""The project's speed targets, measured side by side: prints a table (and, with --json, the same as JSON).

    python benchmarks/run.py                 # everything (the eval part needs ~3 GB in /tmp)
    python benchmarks/run.py --skip-eval     # the loss and start-up only (about a minute)
    python benchmarks/run.py --json out.json # the same, and the results as JSON

Not part of the test suite: timings are ratios of medians over interleaved rounds, and are
still only as steady as the machine they run on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def help_rows(runs: int = 15) -> dict[str, Any]:
    """``acbmse --help`` answers fast and imports neither torch nor matplotlib."""
    command = [sys.executable, "-m", "acbmse_cli", "--help"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", *command[1:]], capture_output=True, text=True, check=True
    ).stderr
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in trace.splitlines() if "|" in line}
    return {
        "median_seconds": statistics.median(times),
        "imports_torch": "torch" in imported,
        "imports_matplotlib": "matplotlib" in imported,
    }


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def render(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    loss = results["loss_cpu"]
    ratio = loss["ratio_to_mse"]
    shape = "x".join(map(str, loss["shape"]))
    table = Table(
        title=f"Loss, forward + backward, {shape} float32, 2% hits, CPU, {loss['threads']} torch thread(s)"
    )
    for column in ("contender", "median time", "vs nn.MSELoss", "target", "met"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    rows = [
        ("nn.MSELoss", "", None),
        ("acb_mse_loss", "<= 3x", ratio["acb_mse_loss"] <= 3.0),
        (
            "acb_mse_loss per_sample",
            f"<= 1.5x default ({loss['per_sample_to_default']:.2f}x)",
            loss["per_sample_to_default"] <= 1.5,
        ),
        (
            "acb_mse_loss 3 classes",
            f"<= 1.5x default ({loss['three_classes_to_default']:.2f}x)",
            loss["three_classes_to_default"] <= 1.5,
        ),
        ("acb_mse_loss mask", f"({loss['mask_to_default']:.2f}x default, 1% dead pixels)", None),
        ("acb_mse_loss compiled", "<= 1.15x", ratio["acb_mse_loss compiled"] <= 1.15),
        ("nn.MSELoss compiled", f"(reference: ours {loss['compiled_to_compiled_mse']:.2f}x it)", None),
        (
            "two-class formula compiled",
            f"(reference: ours {loss['compiled_to_formula']:.2f}x it)",
            None,
        ),
        (
            "acb-mse 1.0.6",
            f"ours >= 10x faster ({loss['speedup_over_acb_mse_1_0_6']:.1f}x)",
            loss["speedup_over_acb_mse_1_0_6"] >= 10,
        ),
    ]
    for name, target, ok in rows:
        table.add_row(
            name,
            f"{loss['seconds'][name] * 1e3:.3f} ms",
            f"{ratio[name]:.2f}x",
            target,
            "" if ok is None else verdict(ok),
        )
    console.print(table)
    peaks = loss["peak_extra_memory_in_inputs"].items()
    memory = ", ".join(f"{name} {value:.1f}" for name, value in peaks if value is not None)
    console.print(f"Peak extra memory of one forward + backward, in inputs: {memory}")
    startup = results["help"]
    console.print(
        f"acbmse --help: {startup['median_seconds']:.3f} s (target <= 0.6 s: "
        f"{verdict(startup['median_seconds'] <= 0.6)}); imports torch: {startup['imports_torch']}, "
        f"matplotlib: {startup['imports_matplotlib']}"
    )
    if "eval" in results:
        ev = results["eval"]
        console.print(f"acbmse eval: {json.dumps(ev.get('summary', ev), indent=None)}")
    console.print(f"GPU: {json.dumps(results['gpu'])}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds for the loss timings")
    parser.add_argument("--eval-rounds", type=int, default=3, help="interleaved rounds for the eval timings")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for the loss timings (default 1: steady on a shared machine; "
        "with more threads than idle cores, every contender's times swing by 10x)",
    )
    parser.add_argument("--skip-eval", action="store_true", help="leave out the eval throughput comparison")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the results as JSON to this file (default: none)"
    )
    args = parser.parse_args()

    import bench_loss
    import torch

    torch.set_num_threads(args.threads)

    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "loss_threads": args.threads,
        }
    }
    results["loss_cpu"] = bench_loss.cpu_loss_rows(rounds=args.rounds)
    results["help"] = help_rows()
    if not args.skip_eval:
        import eval_bench

        results["eval"] = eval_bench.run(rounds=args.eval_rounds)
    results["gpu"] = bench_loss.cuda_rows()
    render(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
