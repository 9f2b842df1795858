"""Where numbers were measured: recorded in every report so results from different machines are never mixed up."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return " ".join(name.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware_summary(device: torch.device | str) -> dict[str, Any]:
    """The machine behind a measurement: device, CPU model and cores, threads, GPU name, torch version.

    ``cpu`` (the architecture) is kept for reports written before ``cpu_model`` was recorded.
    """
    device = torch.device(device)
    summary: dict[str, Any] = {
        "device": str(device),
        "cpu_model": cpu_model_name(),
        "cpu": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": None,
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        summary["gpu"] = torch.cuda.get_device_name(index)
        summary["gpu_count"] = torch.cuda.device_count()
        summary["cuda"] = torch.version.cuda
    return summary


def hardware_label(summary: dict[str, Any]) -> str:
    """One line for tables and plots, e.g. ``CPU: Intel Xeon @ 2.50GHz (2 cores), 2 threads, torch 2.13.0``."""
    torch_version = summary.get("torch", "?")
    if summary.get("gpu"):
        return f"GPU: {summary['gpu']} ({summary.get('device', 'cuda')}), torch {torch_version}"
    cpu = summary.get("cpu_model") or summary.get("cpu") or "unknown CPU"
    threads = summary.get("threads", "?")
    return (f"CPU: {cpu} ({summary.get('cpu_count', '?')} cores), {threads} thread{'' if threads == 1 else 's'}, "
            f"torch {torch_version}")


def hardware_key(summary: dict[str, Any]) -> tuple:
    """What must match for two measurements to share a table: device kind, processor, cores, threads, torch."""
    device = str(summary.get("device", "cpu")).split(":")[0]
    return (device, summary.get("gpu") or None, summary.get("cpu_model") or summary.get("cpu"),
            summary.get("cpu_count"), summary.get("threads"), summary.get("torch"))


__all__ = ["cpu_model_name", "hardware_key", "hardware_label", "hardware_summary"]
