"""Peak resident memory of retraining-free pruning against the calibration size: the statistics are streamed, so
the peak should barely grow with the number of calibration examples.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.memory --teacher <final_model> --task sst2 \\
        --samples 2048 8192 --methods kwon kprune

Each (method, size) is one ``python train.py fit`` process (the method's recipe, evaluation, latency and saving off);
its peak resident set size is its own ``VmHWM`` read as it exits (Linux), so nothing of this process counts. Writes ``benchmarks/results/memory.json`` and ``memory.md`` (a table with the growth from the
smallest size to each larger one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.hardware import hardware_summary

REPO = Path(__file__).resolve().parents[1]
METHODS = ("kwon", "kprune", "gpruner")


# Runs a Python script in this interpreter and, at exit, writes its peak resident set size (VmHWM, KiB) to a file.
# VmHWM belongs to the process image after exec, so the parent's memory (inherited at fork, counted by wait4's
# ru_maxrss) does not count.
_WRAPPER = """
import atexit, runpy, sys
out, script = sys.argv[1], sys.argv[2]
def _report():
    with open("/proc/self/status") as status:
        kib = next(line for line in status if line.startswith("VmHWM")).split()[1]
    with open(out, "w") as handle:
        handle.write(kib)
atexit.register(_report)
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def peak_rss(script: list[str], log_file: Path) -> tuple[float, float]:
    """Run a Python script (``[path, *args]``) in a fresh interpreter; return its peak resident set size in MiB and
    its wall seconds.

    Raises:
        RuntimeError: the script failed (its log is named), or the system has no ``/proc`` (Linux only).
    """
    if not Path("/proc/self/status").is_file():
        raise RuntimeError("benchmarks.memory reads /proc/<pid>/status (VmHWM): Linux only")
    peak_file = log_file.with_suffix(".peak")
    started = time.perf_counter()
    with open(log_file, "w") as log:
        result = subprocess.run([sys.executable, "-c", _WRAPPER, str(peak_file), *script], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(script[:5])} ... failed with status {result.returncode}; see {log_file}")
    return int(peak_file.read_text()) / 1024.0, seconds


def command(method: str, task: str, teacher: str, samples: int, folder: Path) -> list[str]:
    prefix = "--trainer.callbacks.init_args."
    args = [str(REPO / "train.py"), "fit", "--config", f"configs/{method}/{task}.yaml",
            "--model.init_args.name_or_path", teacher, "--trainer.default_root_dir", str(folder),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            prefix + "num_samples", str(samples), prefix + "evaluate", "false", prefix + "latency_batch_size", "0",
            prefix + "save_model", "false"]
    if method == "kprune":
        args += [prefix + "num_tokens", "null"]
    return args


def measure(methods: list[str], task: str, teacher: str, sizes: list[int], out: Path) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="lit_prune_memory_") as tmp:
        for method in methods:
            for size in sizes:
                folder = Path(tmp) / f"{method}-{size}"
                folder.mkdir()
                mib, seconds = peak_rss(command(method, task, teacher, size, folder), folder / "train.log")
                print(f"{method} n={size}: peak RSS {mib:.0f} MiB, {seconds:.0f} s", flush=True)
                rows.append({"method": method, "samples": size, "peak_rss_mib": round(mib, 1),
                             "seconds": round(seconds, 1)})
    for row in rows:
        base = next(r for r in rows if r["method"] == row["method"] and r["samples"] == min(sizes))
        row["growth"] = round(row["peak_rss_mib"] / base["peak_rss_mib"] - 1, 4)
    results = {"task": task, "teacher": teacher, "sizes": sizes, "rows": rows, "hardware": hardware_summary("cpu")}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "memory.json", json.dumps(results, indent=2) + "\n")
    lines = [f"Peak resident memory of one pruning process on {task} (evaluation, latency and saving off).", "",
             "| method | calibration examples | peak RSS (MiB) | growth from " f"{min(sizes)} | seconds |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['samples']} | {r['peak_rss_mib']:.0f} | {100 * r['growth']:+.1f}% | "
              f"{r['seconds']:.0f} |" for r in rows]
    atomic_write_text(out / "memory.md", "\n".join(lines) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the fine-tuned model folder to prune")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--samples", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--methods", nargs="+", default=["kwon", "kprune"], choices=METHODS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.samples):
        parser.error(f"--samples {args.samples}: expected positive integers")
    if not (Path(args.teacher) / "config.json").is_file():
        parser.error(f"--teacher {args.teacher}: no config.json there (give a fine-tuned model folder)")
    measure(args.methods, args.task, args.teacher, sorted(set(args.samples)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
