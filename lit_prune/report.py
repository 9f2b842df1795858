"""The pruning report: one JSON file that every pruning run writes, whatever the method.

Benchmarks and plots read only these reports. The top-level keys every method shares (:data:`REPORT_KEYS`):

* ``method``, ``model`` (what was pruned), ``task``, ``seed``, ``world_size``;
* ``flops``: ``dense``, ``pruned``, ``kept`` (pruned / dense), ``seq_len`` (the ``s`` of the accounting: the
  task's average tokenised evaluation length) and ``target`` (the ``flops_kept`` asked for);
* ``params``: ``dense``, ``pruned`` (each ``total`` and ``encoder_linear``);
* ``metrics``: ``dense``, ``pruned`` (the evaluation split's metrics by name) and ``main`` (the task's main metric);
* ``seconds``: wall seconds per phase and ``total``;
* ``latency``: ``dense_ms``, ``pruned_ms``, ``speedup`` (dense / pruned, medians), ``speedup_paired``, the batch
  shape and ``dtype`` (the weights' dtype timed: the folder's ``save_dtype``), measured interleaved in the same run;
* ``structure``: the kept units per layer (``heads``: [[q, v], ...], ``head_ids``, ``ffn``);
* ``hardware``: where it ran.

Methods add their own keys (``calibration``, ``settings``, ``warnings``, per-sublayer ``steps``, ...).

From the command line, a text summary and a PNG of the kept structure of a run or of a pruned folder::

    python -m lit_prune.report <run_dir | pruned folder | pruning_report.json> [--out structure.png] [--no-plot]

The run folder is the ``trainer.default_root_dir`` of a pruning run (it holds the report, ``pruned_model/`` and
``pruning_masks.safetensors``); a pruned folder alone gives the structure, FLOPs and parameters without the
metrics, timings and latency that only the report holds.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from lit_prune.core.atomic import atomic_write_bytes, atomic_write_text

REPORT_FILE = "pruning_report.json"
PRUNED_MODEL_DIR = "pruned_model"
MASKS_FILE = "pruning_masks.safetensors"
STRUCTURE_PNG = "structure.png"
REPORT_KEYS = ("method", "model", "task", "seed", "world_size", "flops", "params", "metrics", "seconds", "latency",
               "structure", "hardware")


def _jsonable(value: Any) -> Any:
    """Plain JSON values: floats that are not finite become ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors, numpy scalars
        return _jsonable(value.item())
    return value


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON, atomically.

    Raises:
        ValueError: a shared key is missing.
    """
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise ValueError(f"pruning report: missing keys {missing}; every report has {list(REPORT_KEYS)}")
    return atomic_write_text(path, json.dumps(_jsonable(report), indent=2) + "\n")


def read_report(path: str | Path) -> dict[str, Any]:
    """Read a report written by :func:`write_report` (a file or the run folder that holds it).

    Raises:
        FileNotFoundError: no report there.
        ValueError: the file is not a pruning report.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no pruning report at {path}")
    report = json.loads(path.read_text())
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise ValueError(f"{path} is not a lit_prune pruning report: it lacks {missing}")
    return report


# ------------------------------------------------------------------------------------------ summary and plot
class ReportInputError(ValueError):
    """The path given to :func:`summarize` is neither a run folder, a pruned folder nor a report."""


def _dense_shape_from_masks(path: Path) -> dict[str, int]:
    from lit_prune.core.masks import PruningMasks

    masks = PruningMasks.load(path)
    return {"num_layers": masks.num_layers, "num_heads": masks.num_heads, "head_dim": masks.head_dim,
            "ffn_dim": masks.ffn_dim}


def _parameters_from_report(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name in ("total", "encoder_linear"):
        dense, pruned = params["dense"].get(name), params["pruned"].get(name)
        if dense and pruned is not None:
            out[name] = {"dense": dense, "pruned": pruned, "kept": pruned / dense}
    return out


def summarize(path: str | Path, seq_len: float | None = None) -> dict[str, Any]:
    """What :func:`main` prints and plots, from a run folder, a pruned model folder or a report file.

    Args:
        path: a pruning run's folder (``pruning_report.json`` with ``pruned_model/`` and/or the masks file), a
            pruned model folder, or a ``pruning_report.json`` file.
        seq_len: the sequence length of the FLOPs. Default: the report's (the task's average evaluation length)
            when there is a report, else 128.

    Returns:
        :func:`lit_prune.inspect.describe`'s keys (``model_type``, ``kind``, ``dense_shape``, ``layers``,
        ``seq_len``, ``flops``, ``parameters``) plus ``report`` (the report or ``None``) and ``sources`` (the
        files read).

    Raises:
        ReportInputError: nothing usable at ``path``; the message says what was looked for.
    """
    from lit_prune.core.io import NotAPrunedModelError, is_pruned_folder
    from lit_prune.inspect import DEFAULT_SEQ_LEN, describe

    path = Path(path)
    if not path.exists():
        raise ReportInputError(f"{path} does not exist; give a pruning run folder, a pruned model folder or a "
                               f"{REPORT_FILE}")
    report_file: Path | None = None
    folder: Path | None = None
    if path.is_file():
        report_file = path
    elif (path / REPORT_FILE).is_file():
        report_file = path / REPORT_FILE
    elif is_pruned_folder(path):
        folder = path
        if (path.parent / REPORT_FILE).is_file() and path.name == PRUNED_MODEL_DIR:
            report_file = path.parent / REPORT_FILE
    else:
        raise ReportInputError(f"{path} holds neither a {REPORT_FILE} nor a pruned model (config.json with "
                               f"lit_prune_structure); give a pruning run folder (trainer.default_root_dir), its "
                               f"{PRUNED_MODEL_DIR}/ or the report file")
    report = None
    if report_file is not None:
        try:
            report = read_report(report_file)
        except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
            raise ReportInputError(f"{report_file}: {error}") from error
        if folder is None and is_pruned_folder(report_file.parent / PRUNED_MODEL_DIR):
            folder = report_file.parent / PRUNED_MODEL_DIR
    if seq_len is None:
        seq_len = (report or {}).get("flops", {}).get("seq_len") or DEFAULT_SEQ_LEN
    sources = [str(p) for p in (report_file, folder) if p is not None]
    if folder is not None:
        try:
            info = describe(folder, seq_len)
        except NotAPrunedModelError as error:
            raise ReportInputError(str(error)) from error
    else:  # a report without its pruned folder (save_model: false): the masks file gives the dense shape
        assert report is not None and report_file is not None
        masks_file = report_file.parent / MASKS_FILE
        if not masks_file.is_file():
            raise ReportInputError(f"{report_file}: neither {PRUNED_MODEL_DIR}/ nor {MASKS_FILE} is beside it, so "
                                   f"the dense shape is unknown; give the run folder the pruning run wrote")
        sources.append(str(masks_file))
        flops = report["flops"]
        info = {"model_type": "unknown", "kind": "unknown", "dense_shape": _dense_shape_from_masks(masks_file),
                "layers": report["structure"], "seq_len": flops.get("seq_len"),
                "flops": {key: flops[key] for key in ("dense", "pruned", "kept")},
                "parameters": _parameters_from_report(report["params"])}
    if report is not None and folder is None and seq_len != report["flops"].get("seq_len"):
        raise ReportInputError(f"seq_len={seq_len}: without the pruned folder the FLOPs are the report's, counted "
                               f"at s={report['flops'].get('seq_len')}")
    info["report"] = report
    info["sources"] = sources
    return info


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def format_summary(summary: dict[str, Any]) -> str:
    """The text :func:`main` prints: the run (when there is a report), then the structure, FLOPs and parameters."""
    from lit_prune.inspect import format_description

    lines = []
    report = summary.get("report")
    if report is not None:
        flops, metrics, latency = report["flops"], report["metrics"], report.get("latency")
        lines.append(f"{report['method']} on {report.get('task')} (seed {report.get('seed')}, world size "
                     f"{report.get('world_size')}), from {report['model']}")
        params = report.get("params") or {}
        if params.get("target") is not None:  # budgeted by parameters (GRAIN, SMP)
            lines.append(f"params_kept {_fmt(params.get('kept'))} (asked {_fmt(params['target'], 2)}); flops_kept "
                         f"{_fmt(flops['kept'])} at s={flops.get('seq_len', 0):g}")
        else:
            lines.append(f"flops_kept {_fmt(flops['kept'])} (asked {_fmt(flops.get('target'), 2)}) at "
                         f"s={flops.get('seq_len', 0):g}")
        main_metric = metrics.get("main")
        dense, pruned = metrics.get("dense") or {}, metrics.get("pruned") or {}
        if main_metric and main_metric in pruned:
            change = (pruned[main_metric] - dense[main_metric]) if main_metric in dense else None
            lines.append(f"{main_metric}: dense {_fmt(dense.get(main_metric))} -> pruned {_fmt(pruned[main_metric])}"
                         + (f" ({change:+.4f})" if change is not None else "")
                         + (" [dense scores given, not evaluated]" if metrics.get("dense_source") == "given" else ""))
        others = sorted(set(pruned) - {main_metric})
        if others:
            lines.append("other metrics (dense -> pruned): " + "; ".join(
                f"{name} {_fmt(dense.get(name))} -> {_fmt(pruned[name])}" for name in others))
        if latency:
            lines.append(f"latency: {latency['dense_ms']:.2f} ms dense, {latency['pruned_ms']:.2f} ms pruned: "
                         f"{latency['speedup']:.2f}x faster (ideal 1/flops_kept = {1 / flops['kept']:.2f}x)")
            if latency.get("csr"):  # SMP: the compacted model with sparse weights
                lines.append(f"latency with CSR sparse weights: {latency['csr']['pruned_ms']:.2f} ms: "
                             f"{latency['csr']['speedup']:.2f}x faster")
        seconds = report.get("seconds") or {}
        if seconds:
            phases = ", ".join(f"{k} {v:.1f}" for k, v in seconds.items() if k != "total"
                               and isinstance(v, (int, float)))
            lines.append(f"seconds: {seconds.get('total', float('nan')):.1f} in all ({phases})")
        hardware = report.get("hardware") or {}
        if hardware:
            where = hardware.get("gpu") or hardware.get("cpu_model") or hardware.get("device")
            lines.append(f"hardware: {where}, {hardware.get('threads')} threads, torch {hardware.get('torch')}")
        for warning in report.get("warnings") or []:
            lines.append(f"warning: {warning}")
        lines.append("")
    lines.append(format_description(summary))
    return "\n".join(lines)


def plot_structure(summary: dict[str, Any], out: str | Path) -> Path:
    """A PNG of the kept structure: per layer and head, the kept query/key and value/output dims, and per layer
    the kept FFN neurons. Written atomically; returns the path.

    Raises:
        ImportError: matplotlib is not installed (it comes with ``pip install 'lit_prune[bench]'``).
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the structure plot needs matplotlib: pip install 'lit_prune[bench]' (or pass "
                          "--no-plot)") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shape, layers = summary["dense_shape"], summary["layers"]
    num_layers, num_heads, head_dim, ffn_dim = (shape[k] for k in ("num_layers", "num_heads", "head_dim", "ffn_dim"))
    kept = np.zeros((num_layers, num_heads))
    labels = [["" for _ in range(num_heads)] for _ in range(num_layers)]
    for i, layer in enumerate(layers):
        head_ids = layer.get("head_ids") or list(range(len(layer["heads"])))
        for head, (q, v) in zip(head_ids, layer["heads"]):
            kept[i, head] = (q + v) / (2 * head_dim)
            labels[i][head] = f"{q}/{v}"
    ffn = [layer["ffn"] / ffn_dim for layer in layers]

    fig, (ax_heads, ax_ffn) = plt.subplots(1, 2, figsize=(4 + 0.6 * num_heads + 3, 1.5 + 0.45 * num_layers),
                                           gridspec_kw={"width_ratios": [max(num_heads, 2), 4]},
                                           layout="constrained")
    image = ax_heads.imshow(np.ma.masked_equal(kept, 0.0), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax_heads.set_facecolor("#dddddd")
    for i in range(num_layers):
        for h in range(num_heads):
            if labels[i][h]:
                ax_heads.text(h, i, labels[i][h], ha="center", va="center", fontsize=7,
                              color="white" if kept[i, h] < 0.6 else "black")
    ax_heads.set_xticks(range(num_heads))
    ax_heads.set_yticks(range(num_layers))
    ax_heads.set_xlabel("head")
    ax_heads.set_ylabel("layer")
    ax_heads.set_title(f"kept q-k / v-o dims of {head_dim} (grey: head removed)", fontsize=9)
    fig.colorbar(image, ax=ax_heads, fraction=0.04, pad=0.02, label="kept fraction")
    ax_ffn.barh(range(num_layers), ffn, color="tab:orange")
    for i, layer in enumerate(layers):
        ax_ffn.text(min(ffn[i], 1.0) + 0.02, i, f"{layer['ffn']}/{ffn_dim}", va="center", fontsize=7)
    ax_ffn.set_xlim(0, 1.35)
    ax_ffn.set_ylim(num_layers - 0.5, -0.5)
    ax_ffn.set_yticks(range(num_layers))
    ax_ffn.set_xlabel("kept fraction")
    ax_ffn.set_title("FFN neurons", fontsize=9)
    report = summary.get("report")
    title = f"flops_kept {summary['flops']['kept']:.3f}, parameters kept "
    title += f"{summary['parameters']['total']['kept']:.3f}" if "total" in summary["parameters"] else "n/a"
    if report is not None:
        title = f"{report['method']} on {report.get('task')}: " + title
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(out, buffer.getvalue())


def default_plot_path(path: str | Path) -> Path:
    """Where :func:`main` writes the plot by default: ``structure.png`` in the run folder (or beside the report
    file, or in the pruned folder)."""
    path = Path(path)
    return (path.parent if path.is_file() else path) / STRUCTURE_PNG


def main(argv: list[str] | None = None) -> int:
    """Print the summary of a run or pruned folder and draw its structure; exit status 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_prune.report",
        description="Summarise a lit_prune pruning run or pruned model folder and plot its kept structure.")
    parser.add_argument("path", type=Path, help="a pruning run folder, a pruned model folder or a pruning_report.json")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the PNG (default: {STRUCTURE_PNG} in the run or pruned folder)")
    parser.add_argument("--no-plot", action="store_true", help="print the summary only")
    parser.add_argument("--seq-len", type=float, default=None,
                        help="sequence length of the FLOPs (default: the report's, else 128)")
    args = parser.parse_args(argv)
    if args.seq_len is not None and not args.seq_len > 0:
        parser.error(f"--seq-len={args.seq_len}: expected a positive number")
    try:
        summary = summarize(args.path, args.seq_len)
    except ReportInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    if not args.no_plot:
        try:
            written = plot_structure(summary, args.out or default_plot_path(args.path))
        except (ImportError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"\nstructure plot: {written}")
    return 0


__all__ = ["MASKS_FILE", "PRUNED_MODEL_DIR", "REPORT_FILE", "REPORT_KEYS", "ReportInputError", "default_plot_path",
           "format_summary", "main", "plot_structure", "read_report", "summarize", "write_report"]


if __name__ == "__main__":
    sys.exit(main())
