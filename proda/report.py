"""The pipeline's report: ``report.json``, ``report.md`` and ``report.png``.

The figure a UDA paper is judged by is the share of the source-only -> oracle gap an adapted model closes;
it is computed here from the same run's baselines (same model, augmentation and budget), never from
numbers of another setting.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

from .io import write_bytes, write_json

ADAPTED = ("warmup", "stage1", "stage2", "stage3")


def gap_closed(report: dict[str, Any]) -> dict[str, float]:
    """(mIoU(stage) - mIoU(source-only)) / (mIoU(oracle) - mIoU(source-only)) per adapted stage."""
    stages = report["stages"]
    if "source_only" not in stages or "oracle" not in stages:
        return {}
    low, high = stages["source_only"]["target_miou"], stages["oracle"]["target_miou"]
    if high <= low:
        return {}
    return {s: (stages[s]["target_miou"] - low) / (high - low) for s in ADAPTED if s in stages and "target_miou" in stages[s]}


def format_table(report: dict[str, Any]) -> str:
    """Markdown: target mIoU, gap closed and wall time per stage, then pseudo-label quality per round."""
    stages, gaps = report["stages"], report.get("gap_closed", {})
    lines = ["| stage | target mIoU | gap closed | wall time (s) |", "|---|---|---|---|"]
    for name, entry in stages.items():
        miou = f"{entry['target_miou']:.2f}" if "target_miou" in entry else "-"
        if "target_miou_13" in entry:
            miou += f" (13 classes: {entry['target_miou_13']:.2f})"
        gap = f"{100 * gaps[name]:.0f}%" if name in gaps else "-"
        lines.append(f"| {name} | {miou} | {gap} | {entry['wall_s']:.0f} |")
    rounds = pseudo_label_rounds(report)
    if rounds:
        lines += ["", "| pseudo labels | mIoU vs target truth | pixels kept |", "|---|---|---|"]
        for name, miou, kept in rounds:
            lines.append(f"| {name} | {miou:.2f} | {'-' if kept is None else f'{100 * kept:.0f}%'} |")
    return "\n".join(lines)


def pseudo_label_rounds(report: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """(round, mIoU, kept fraction) of each pseudo-label round the run measured."""
    rounds = []
    quality = report["stages"].get("stage1", {}).get("pseudo_label_miou")
    if quality:
        rounds += [("warm-up soft labels, raw (argmax P0)", quality["raw"], None),
                   ("warm-up soft labels, rectified by prototypes (end of stage 1)", quality["rectified"], None)]
    for step, name in (("hard_labels_1", "stage-1 hard labels"), ("hard_labels_2", "stage-2 hard labels")):
        q = report.get("pseudo_labels", {}).get(step, {})
        if q.get("miou_kept") is not None:
            kept = f"confidence > {q['threshold']}"
            if q.get("class_keep"):
                kept += f" or top {100 * q['class_keep']:.0f}% of its class"
            rounds.append((f"{name}, {kept}", q["miou_kept"], q["kept_fraction"]))
    return rounds


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = {k: v for k, v in report["stages"].items() if "target_miou" in v}
    if not stages:
        return
    names = list(stages)
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    ax = axes[0, 0]
    colours = ["#888888" if n in ("source_only", "oracle") else "#1f77b4" for n in names]
    bars = ax.bar(names, [stages[n]["target_miou"] for n in names], color=colours)
    for bar, n in zip(bars, names):
        gap = report.get("gap_closed", {}).get(n)
        label = f"{stages[n]['target_miou']:.1f}" + (f"\n{100 * gap:.0f}% gap" if gap is not None else "")
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), label, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("target val mIoU (%)")
    ax.set_title("target mIoU per stage (grey: baselines)")
    ax.tick_params(axis="x", rotation=30)

    ax = axes[0, 1]
    classes = list(next(iter(stages.values()))["per_class_iou"])
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        values = [stages[n]["per_class_iou"].get(c) or 0.0 for c in classes]
        ax.bar([x + i * width for x in range(len(classes))], values, width=width, label=n)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(classes))])
    ax.set_xticklabels(classes, rotation=70, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_title("per-class IoU per stage")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    rounds = pseudo_label_rounds(report)
    if rounds:
        labels = [textwrap.fill(r[0], 30) for r in rounds]  # long round names would be cut off the figure
        ax.barh(labels[::-1], [r[1] for r in rounds][::-1], color="#2ca02c")
        for y, r in enumerate(rounds[::-1]):
            ax.text(r[1], y, f" {r[1]:.1f}" + ("" if r[2] is None else f" ({100 * r[2]:.0f}% kept)"), va="center", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("pseudo-label mIoU vs target truth (%)")
    ax.set_title("pseudo-label accuracy per round")

    ax = axes[1, 1]
    all_names = list(report["stages"])
    ax.barh(all_names[::-1], [report["stages"][n]["wall_s"] for n in all_names][::-1], color="#ff7f0e")
    ax.set_xlabel("wall time (s)")
    ax.set_title("wall time per stage")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def finish_report(report: dict[str, Any], out_dir: Path, plot: bool = True) -> None:
    """Fill in derived figures and write report.json, report.md and (``plot``: drawing takes seconds) report.png."""
    report["gap_closed"] = gap_closed(report)
    write_json(out_dir / "report.json", report)
    text = "# proda pipeline report\n\n" + format_table(report) + "\n\n" + per_class_table(report) + "\n"
    write_bytes(out_dir / "report.md", text.encode())
    if plot:
        plot_report(report, out_dir / "report.png")


def per_class_table(report: dict[str, Any]) -> str:
    stages = {k: v for k, v in report["stages"].items() if "per_class_iou" in v}
    if not stages:
        return ""
    # the run's own classes, as its evaluations named them (any dataset of the table, not only Cityscapes)
    names = list(dict.fromkeys(name for stage in stages.values() for name in stage["per_class_iou"]))
    lines = ["| class | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for name in names:
        cells = [stages[s]["per_class_iou"].get(name) for s in stages]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in cells) + " |")
    return "\n".join(lines)
