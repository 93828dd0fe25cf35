"""``acbmse eval`` against the plain numpy baseline on a 2 x 1.35 GB float32 pair.

The target: on 30000 x 1 x 88 x 128 float32 files (page cache warm), the
marginal throughput of ``acbmse eval`` (its time on that pair minus its time on a tiny pair,
so that starting Python and importing torch is not counted) is at least 1.5 times that of
``numpy_eval_baseline.py``, measured the same way; the eval process's peak anonymous memory
(RssAnon, polled from /proc) stays at most 800 MB; both give the same per-class counts and sums.
``--detect-curve`` (the default 201-threshold grid) costs at most 30% more time than the same eval
without it, timed inside fresh processes around the eval alone (after a warm-up eval of the tiny
pair, so that neither start-up nor first-call set-up is counted: the difference of two ~2 s
commands swings by more than the ~0.3 s being measured), the median over interleaved rounds; the
ratio of the whole commands, start-up included, is reported beside it,
and four predictions at once with the curve (the same prediction file given four times: four
streams of the page cache, four sets of statistics) stay within 800 MB.

Issue 16's targets are measured the same way against ``numpy_plain_baseline.py``, the script people
write instead (float32 squares, float64 per-class sums by boolean index): eval at least 1.5 times
its marginal throughput and at least half the rate of reading and summing both files (the same
script's ``--read-only``); eval with ``--detect-curve`` and with ``--per-sample`` at least 1.0 times.

    python benchmarks/eval_bench.py                      # 3 interleaved rounds, prints the results
    python benchmarks/eval_bench.py --rounds 5 --samples 5000 --json /tmp/eval.json

Needs about 2.8 GB of free space in the temporary folder (``--dir`` picks another).  Every
run is a fresh process; the rounds interleave the contenders (in a rotating order) and the
medians are reported, so that load elsewhere on the machine hits all of them alike.  The
CPU time (user + system) of the same runs is reported beside the wall time: on a shared
machine it is the steadier of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINE = HERE / "numpy_eval_baseline.py"
PLAIN_BASELINE = HERE / "numpy_plain_baseline.py"
IMAGE = (1, 88, 128)
BLOCK = 1000  # images written at a time
TINY_SAMPLES = 10
TARGET_SPEEDUP = 1.5
TARGET_RSS_ANON_MB = 800.0
TARGET_CURVE_OVERHEAD = 0.30
TARGET_OVER_PLAIN = 1.5  # default statistics, against the plain numpy script
TARGET_OVER_PLAIN_EXTRA = 1.0  # --detect-curve and --per-sample, against the plain numpy script
TARGET_OF_READ = 0.5  # default statistics, against reading and summing both files
CURVE = "acbmse eval --detect-curve"
PER_SAMPLE = "acbmse eval --per-sample"
FOUR = "acbmse eval --detect-curve, 4 predictions"
PLAIN = "plain numpy script"
READ = "read and sum"
CONTENDERS = ("acbmse eval", "numpy baseline", PLAIN, READ, CURVE, PER_SAMPLE, FOUR)


def make_pair(folder: Path, name: str, samples: int, seed: int = 0) -> tuple[Path, Path]:
    """A sparse target (2% hits, values 20..100) and a noisy prediction, float32, written block by block."""
    from numpy.lib.format import open_memmap

    shape = (samples, *IMAGE)
    pred_path, target_path = folder / f"{name}_pred.npy", folder / f"{name}_target.npy"
    pred = open_memmap(pred_path, mode="w+", dtype=np.float32, shape=shape)
    target = open_memmap(target_path, mode="w+", dtype=np.float32, shape=shape)
    rng = np.random.default_rng(seed)
    for start in range(0, samples, BLOCK):
        n = min(BLOCK, samples - start)
        hits = rng.random((n, *IMAGE), dtype=np.float32) < 0.02
        block = np.where(hits, rng.uniform(20.0, 100.0, (n, *IMAGE)).astype(np.float32), np.float32(0.0))
        target[start : start + n] = block
        pred[start : start + n] = block + rng.standard_normal((n, *IMAGE), dtype=np.float32)
    pred.flush()
    target.flush()
    del pred, target
    return pred_path, target_path


def warm(paths: list[Path]) -> None:
    """Read every file once, so that all runs find it in the page cache."""
    buffer = bytearray(1 << 26)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def _rss_anon_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(command: list[str]) -> tuple[float, float, float | None, str]:
    """Run a command: (wall seconds, CPU seconds, peak RssAnon in MB polled every 2 ms or None, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    peak = [0]
    cpu_before = _children_cpu()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def poll() -> None:
        while process.poll() is None:
            kb = _rss_anon_kb(process.pid)
            if kb is not None:
                peak[0] = max(peak[0], kb)
            time.sleep(0.002)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, err = process.communicate()
    elapsed = time.perf_counter() - start
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {err.strip()}")
    has_proc = Path("/proc/self/status").exists()
    return elapsed, _children_cpu() - cpu_before, (peak[0] / 1024 if has_proc else None), out


def _commands(pred: Path, target: Path) -> dict[str, list[str]]:
    ours = [
        "-m",
        "acbmse_cli",
        "eval",
        str(pred),
        str(target),
        "--format",
        "json",
        "--device",
        "cpu",
        "--quiet",
    ]
    curve = [*ours, "--detect-curve"]
    four = [*ours[:3], *([str(pred)] * 4), *ours[4:], "--detect-curve"]
    return {
        "acbmse eval": [sys.executable, *ours],
        "numpy baseline": [sys.executable, str(BASELINE), str(pred), str(target)],
        PLAIN: [sys.executable, str(PLAIN_BASELINE), str(pred), str(target)],
        READ: [sys.executable, str(PLAIN_BASELINE), str(pred), str(target), "--read-only"],
        CURVE: [sys.executable, *curve],
        PER_SAMPLE: [sys.executable, *ours, "--per-sample"],
        FOUR: [sys.executable, *four],
    }


#: Times one eval inside the process: a warm-up eval of the tiny pair, then the big pair.
_TIMED = """
import json, sys, time
from acbmse_cli.evaluate import EvalOptions, evaluate
options = EvalOptions(detect_curve=sys.argv[5] == "curve", device="cpu")
evaluate(sys.argv[3], sys.argv[4], options)
start, cpu = time.perf_counter(), time.process_time()
evaluate(sys.argv[1], sys.argv[2], options)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}))
"""


def curve_overhead_in_process(big: tuple[Path, Path], tiny: tuple[Path, Path], rounds: int) -> dict[str, Any]:
    """The eval's own time with and without ``--detect-curve``, in fresh processes, interleaved."""
    times: dict[str, list[float]] = {"plain": [], "curve": []}
    cpu: dict[str, list[float]] = {"plain": [], "curve": []}
    for r in range(rounds):
        for mode in ("plain", "curve") if r % 2 == 0 else ("curve", "plain"):
            command = [sys.executable, "-c", _TIMED, *map(str, big), *map(str, tiny), mode]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            timed = json.loads(done.stdout)
            times[mode].append(timed["seconds"])
            cpu[mode].append(timed["cpu_seconds"])
    ratios = [c / p for p, c in zip(times["plain"], times["curve"], strict=True)]
    return {
        "seconds": times,
        "cpu_seconds": cpu,
        "overhead": statistics.median(times["curve"]) / statistics.median(times["plain"]) - 1.0,
        "round_overheads": [round(r - 1.0, 3) for r in ratios],
    }


def _agreement(ours: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    counts = [c["count"] for c in ours["classes"]]
    sse = [c["mse"] * c["count"] for c in ours["classes"]]
    relative = max(abs(a - b) / abs(b) for a, b in zip(sse, baseline["sse"], strict=True))
    return {
        "counts_equal": counts == baseline["count"],
        "max_relative_sse_difference": relative,
        "agree": counts == baseline["count"] and relative <= 1e-9,
    }


def run(rounds: int = 3, samples: int = 30000, folder: str | None = None) -> dict[str, Any]:
    """Time ``acbmse eval`` and the numpy baseline, big pair and tiny pair, in interleaved rounds."""
    big_bytes = 2 * samples * int(np.prod(IMAGE)) * 4
    where = Path(folder or tempfile.gettempdir())
    free = shutil.disk_usage(where).free
    if free < 1.05 * big_bytes:
        raise SystemExit(
            f"eval_bench needs {big_bytes / 1e9:.1f} GB free in {where}, found {free / 1e9:.1f} GB"
        )
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="acbmse-eval-bench-", dir=where) as tmp:
        folder_path = Path(tmp)
        started = time.perf_counter()
        big = make_pair(folder_path, "big", samples)
        tiny = make_pair(folder_path, "tiny", TINY_SAMPLES, seed=1)
        generated = time.perf_counter() - started
        warm([*big, *tiny])
        jobs = [(name, size, command) for size, pair in (("big", big), ("tiny", tiny))
                for name, command in _commands(*pair).items()]  # fmt: skip
        seconds: dict[tuple[str, str], list[float]] = {(n, s): [] for n, s, _ in jobs}
        cpu: dict[tuple[str, str], list[float]] = {(n, s): [] for n, s, _ in jobs}
        rss: dict[tuple[str, str], list[float]] = {(n, s): [] for n, s, _ in jobs}
        outputs: dict[tuple[str, str], str] = {}
        for _ in range(2):  # untimed: imports warm
            for _name, size, command in jobs:
                if size == "tiny":
                    measure(command)
        for r in range(rounds):
            for name, size, command in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
                elapsed, cpu_seconds, peak, out = measure(command)
                seconds[(name, size)].append(elapsed)
                cpu[(name, size)].append(cpu_seconds)
                if peak is not None:
                    rss[(name, size)].append(peak)
                outputs[(name, size)] = out
        in_process = curve_overhead_in_process(big, tiny, max(rounds, 7))
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    median = {key: statistics.median(values) for key, values in seconds.items()}
    median_cpu = {key: statistics.median(values) for key, values in cpu.items()}
    result: dict[str, Any] = {"shape": [samples, *IMAGE], "dtype": "float32", "bytes_both_files": big_bytes}
    for name in CONTENDERS:
        marginal = median[(name, "big")] - median[(name, "tiny")]
        result[name] = {
            "big_seconds": median[(name, "big")],
            "tiny_seconds": median[(name, "tiny")],
            "marginal_seconds": marginal,
            "marginal_GB_per_s": big_bytes / marginal / 1e9 if marginal > 0 else None,
            "big_seconds_all_rounds": seconds[(name, "big")],
            "marginal_cpu_seconds": median_cpu[(name, "big")] - median_cpu[(name, "tiny")],
            "peak_rss_anon_MB": max(rss[(name, "big")]) if rss[(name, "big")] else None,
        }
    ours, baseline = result["acbmse eval"], result["numpy baseline"]
    speedup = baseline["marginal_seconds"] / ours["marginal_seconds"]
    cpu_speedup = baseline["marginal_cpu_seconds"] / ours["marginal_cpu_seconds"]
    agreement = _agreement(
        json.loads(outputs[("acbmse eval", "big")]), json.loads(outputs[("numpy baseline", "big")])
    )
    curve_overhead = in_process["overhead"]
    # the same from the fresh-process marginals (start-up noise dominates; kept for the record)
    curve_marginal_overhead = result[CURVE]["marginal_seconds"] / ours["marginal_seconds"] - 1.0
    # the same ratio of the whole commands, start-up included (what a user waits for)
    curve_command_overhead = result[CURVE]["big_seconds"] / ours["big_seconds"] - 1.0
    plain = result[PLAIN]["marginal_seconds"]
    over_plain = {
        name: plain / result[name]["marginal_seconds"] for name in ("acbmse eval", CURVE, PER_SAMPLE)
    }
    of_read = result[READ]["marginal_seconds"] / ours["marginal_seconds"]
    four_rss = result[FOUR]["peak_rss_anon_MB"]
    result.update(
        rounds=rounds,
        cpu_count=os.cpu_count(),
        load_average_before_after=[load_before, load_after],
        generate_seconds=generated,
        speedup=speedup,
        cpu_time_speedup=cpu_speedup,
        agreement=agreement,
        curve_in_process=in_process,
        summary={
            "marginal_speedup_over_numpy": round(speedup, 2),
            "marginal_cpu_time_speedup_over_numpy": round(cpu_speedup, 2),
            "target_speedup": TARGET_SPEEDUP,
            "speedup_met": speedup >= TARGET_SPEEDUP,
            "peak_rss_anon_MB": None
            if ours["peak_rss_anon_MB"] is None
            else round(ours["peak_rss_anon_MB"], 1),
            "target_rss_anon_MB": TARGET_RSS_ANON_MB,
            "memory_met": ours["peak_rss_anon_MB"] is not None
            and ours["peak_rss_anon_MB"] <= TARGET_RSS_ANON_MB,
            "results_agree": agreement["agree"],
            "detect_curve_overhead": round(curve_overhead, 3),
            "target_detect_curve_overhead": TARGET_CURVE_OVERHEAD,
            "detect_curve_overhead_met": curve_overhead <= TARGET_CURVE_OVERHEAD,
            "detect_curve_overhead_rounds": in_process["round_overheads"],
            "detect_curve_marginal_overhead": round(curve_marginal_overhead, 3),
            "detect_curve_command_overhead": round(curve_command_overhead, 3),
            "four_predictions_peak_rss_anon_MB": None if four_rss is None else round(four_rss, 1),
            "four_predictions_memory_met": four_rss is not None and four_rss <= TARGET_RSS_ANON_MB,
            "over_plain_numpy": {name: round(v, 2) for name, v in over_plain.items()},
            "over_plain_numpy_met": over_plain["acbmse eval"] >= TARGET_OVER_PLAIN
            and min(over_plain[CURVE], over_plain[PER_SAMPLE]) >= TARGET_OVER_PLAIN_EXTRA,
            "fraction_of_read_and_sum": round(of_read, 2),
            "fraction_of_read_and_sum_met": of_read >= TARGET_OF_READ,
        },
    )
    return result


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    shape = "x".join(map(str, result["shape"]))
    table = Table(
        title=f"eval of a float32 pair {shape} ({result['bytes_both_files'] / 1e9:.2f} GB), page cache warm"
    )
    for column in ("contender", "big pair", "tiny pair", "marginal", "GB/s", "marginal CPU", "peak RssAnon"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for name in CONTENDERS:
        row = result[name]
        table.add_row(
            name,
            f"{row['big_seconds']:.2f} s",
            f"{row['tiny_seconds']:.2f} s",
            f"{row['marginal_seconds']:.2f} s",
            "-" if row["marginal_GB_per_s"] is None else f"{row['marginal_GB_per_s']:.2f}",
            f"{row['marginal_cpu_seconds']:.2f} s",
            "-" if row["peak_rss_anon_MB"] is None else f"{row['peak_rss_anon_MB']:.0f} MB",
        )
    Console(width=max(Console().width, 120)).print(table)
    s = result["summary"]
    difference = result["agreement"]["max_relative_sse_difference"]
    print(
        f"marginal speedup over numpy: {s['marginal_speedup_over_numpy']:.2f}x "
        f"(target >= {s['target_speedup']}x: {'met' if s['speedup_met'] else 'NOT met'}; "
        f"in CPU time {s['marginal_cpu_time_speedup_over_numpy']:.2f}x); "
        f"peak RssAnon {s['peak_rss_anon_MB']} MB "
        f"(target <= {s['target_rss_anon_MB']:.0f} MB: {'met' if s['memory_met'] else 'NOT met'}); "
        f"results agree: {s['results_agree']} (max relative SSE difference {difference:.1e}); "
        f"--detect-curve costs {s['detect_curve_overhead']:+.0%} of the eval's own time "
        f"(target <= {s['target_detect_curve_overhead']:.0%}: "
        f"{'met' if s['detect_curve_overhead_met'] else 'NOT met'}; rounds "
        f"{', '.join(f'{v:+.0%}' for v in s['detect_curve_overhead_rounds'])}; whole command, start-up "
        f"included, {s['detect_curve_command_overhead']:+.0%}; difference of the fresh-process "
        f"marginals {s['detect_curve_marginal_overhead']:+.0%}); four predictions with the curve: "
        f"peak RssAnon {s['four_predictions_peak_rss_anon_MB']} MB; "
        f"against the plain numpy script {s['over_plain_numpy']} "
        f"(targets >= {TARGET_OVER_PLAIN}x, >= {TARGET_OVER_PLAIN_EXTRA}x with the curve or per sample: "
        f"{'met' if s['over_plain_numpy_met'] else 'NOT met'}); "
        f"{s['fraction_of_read_and_sum']:.2f} of the read-and-sum rate "
        f"(target >= {TARGET_OF_READ}: {'met' if s['fraction_of_read_and_sum_met'] else 'NOT met'}); "
        f"{result['rounds']} rounds, {result['cpu_count']} CPUs, "
        f"load average before/after {result['load_average_before_after']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=30000, help="images of 1x88x128 in the big pair")
    parser.add_argument("--dir", default=None, help="where the temporary files go (default: the temp folder)")
    parser.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args()
    result = run(rounds=args.rounds, samples=args.samples, folder=args.dir)
    render(result)
    if args.json is not None:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
