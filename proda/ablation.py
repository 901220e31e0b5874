"""`proda ablation`: the rows of ProDA's ablation, every adapted row from the same warm-up model.

Per training seed, in ``OUT/seed_N``, the pipeline's steps run as ``proda pipeline`` runs them (same config,
same folders, same skip/resume and input checks), plus three stage-1 variants right after the warm-up's soft
labels and prototypes. A variant is a stage-1 run from the same warm-up model, soft labels, prototypes and
iteration budget as the pipeline's stage 1; it differs only in the terms ``VARIANTS`` sets. The rows:

    source_only        labelled source only (reference)
    oracle             the target training labels (reference; when the pipeline has an oracle)
    warmup             the adversarial warm-up, no further training
    self_training      CE on the warm-up's own labels, argmax P0 (no rectification, no prototypes)
    denoise            SCE on the prototype-rectified labels
    denoise_structure  + weak/strong prototype consistency (structure learning)
    stage1             the pipeline's stage 1, its config as it is (the paper adds the regulariser)
    distill            stages 2 and 3 (self-distillation) after that stage 1

``OUT/ablation.json`` holds ``{"rows": {row: {"miou": [one per seed], "mean": m, "std": s}}, "seeds": [...]}``
(plus each row's share of the source-only -> oracle gap closed), ``OUT/ablation.md`` the table and
``OUT/ablation.png`` the bar chart with every seed's point. The tables are written after every step, so an
interrupted ablation shows what finished (a row a seed has not reached yet is null), the chart after every seed.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

from .config import load_config
from .engine import dist
from .io import write_bytes, write_json
from .pipeline import (
    Pipeline, PipelineSpec, format_seed_table, refuse_seed_override, seed_dir, seed_overrides, seed_rows, spread,
)

#: row -> what it trains (the table's second column)
ROWS = {
    "source_only": "labelled source only",
    "oracle": "target labels (upper reference)",
    "warmup": "adversarial warm-up, no further training",
    "self_training": "CE on the warm-up's labels, argmax P0",
    "denoise": "SCE on prototype-rectified labels",
    "denoise_structure": "+ prototype consistency (structure learning)",
    "stage1": "the pipeline's stage 1 (its config)",
    "distill": "+ stages 2 and 3 (self-distillation)",
}
REFERENCES = ("source_only", "oracle")
ROW_STAGE = {"distill": "stage3"}  # the pipeline step whose model gives the row's figure (else the row's name)

#: the variant takes the stage-1 config's weight for this term, or the paper's where the config sets it to 0
CONFIG = "config"
#: the paper's GTA5 weights (SCE alpha/beta, consistency, regulariser), for terms a config turns off
PAPER = {"sce": (0.1, 1.0), "consistency_weight": 10.0, "regular_weight": 0.1}
#: The stage-1 variants: rectify (false: the label is argmax P0), the SCE weights (alpha, beta; (1, 0) is
#: plain CE, see adapt.losses.symmetric_cross_entropy), the prototype-consistency and regulariser weights.
VARIANTS: dict[str, dict[str, Any]] = {
    "self_training":     {"rectify": False, "sce": (1.0, 0.0), "consistency_weight": 0.0,    "regular_weight": 0.0},
    "denoise":           {"rectify": True,  "sce": CONFIG,     "consistency_weight": 0.0,    "regular_weight": 0.0},
    "denoise_structure": {"rectify": True,  "sce": CONFIG,     "consistency_weight": CONFIG, "regular_weight": 0.0},
}


def variant_overrides(variant: str, stage1) -> list[str]:
    """The dotted overrides that turn the stage-1 config ``stage1`` (a Stage1Config) into ``variant``."""
    terms = VARIANTS[variant]

    def weight(term: str, configured: tuple[float, ...]) -> tuple[float, ...]:
        choice = terms[term]
        if choice != CONFIG:
            return choice if isinstance(choice, tuple) else (choice,)
        paper = PAPER[term] if isinstance(PAPER[term], tuple) else (PAPER[term],)
        return configured if any(configured) else paper

    alpha, beta = weight("sce", (stage1.sce_alpha, stage1.sce_beta))
    (consistency,) = weight("consistency_weight", (stage1.consistency_weight,))
    (regular,) = weight("regular_weight", (stage1.regular_weight,))
    return [f"stage1.rectify={str(terms['rectify']).lower()}", f"stage1.sce_alpha={alpha}", f"stage1.sce_beta={beta}",
            f"stage1.consistency_weight={consistency}", f"stage1.regular_weight={regular}"]


class AblationPipeline(Pipeline):
    """One seed's pipeline plus the stage-1 variants. A variant is a training step in its own folder with stage
    1's links (the warm-up model, its soft labels and prototypes), so skipping, resuming and the check that
    its inputs did not change are the pipeline's own. ``on_report(plot)`` runs after every report it writes."""

    def __init__(self, spec: PipelineSpec, progress: bool = True, on_report: Callable[[bool], None] | None = None):
        super().__init__(spec, progress)
        self.on_report = on_report

    def steps(self) -> list[str]:
        steps = super().steps()
        after = steps.index("soft_labels") + 1  # a variant needs only the warm-up's soft labels and prototypes
        return [*steps[:after], *VARIANTS, *steps[after:]]

    def links(self, stage: str) -> list[str]:
        return super().links("stage1" if stage in VARIANTS else stage)

    def config(self, stage: str):
        if stage not in VARIANTS:
            return super().config(stage)
        stage1 = super().config("stage1").stage1  # with the command line's overrides
        return load_config(self.spec.stages["stage1"], [f"run.out_dir={self.run_dir(stage)}", *self.spec.overrides,
                                                        *self.links(stage), *variant_overrides(stage, stage1)])

    def write_report(self, plot: bool = True) -> None:
        super().write_report(plot)
        if self.on_report is not None:
            self.on_report(plot)


def ablation_summary(seeds: list[int], reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """ablation.json: each row's target mIoU per seed with mean and std, and its share of the gap closed."""
    rows = seed_rows(reports, seeds, {row: ROW_STAGE.get(row, row) for row in ROWS})
    gaps = {}
    if "source_only" in rows and "oracle" in rows:
        low, high = rows["source_only"]["miou"], rows["oracle"]["miou"]
        for row, entry in rows.items():
            if row in REFERENCES:
                continue
            shares = [None if None in (v, lo, hi) or hi <= lo else (v - lo) / (hi - lo)
                      for v, lo, hi in zip(entry["miou"], low, high)]
            if any(s is not None for s in shares):
                gaps[row] = {"share": shares, **spread(shares)}
    return {"rows": rows, "seeds": list(seeds), "runs": {str(s): f"seed_{s}" for s in seeds}, "gap_closed": gaps}


def format_ablation(summary: dict[str, Any]) -> str:
    gaps = {row: f"{100 * g['mean']:.0f} %" for row, g in summary["gap_closed"].items()}
    return format_seed_table(summary["rows"], summary["seeds"], label="row",
                             extra={"what it trains": {row: ROWS[row] for row in summary["rows"]},
                                    "gap closed (mean)": gaps})


def plot_ablation(summary: dict[str, Any], path: Path) -> None:
    """Bars: each row's mean over the seeds with its standard deviation; dots: every seed's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, seeds = summary["rows"], summary["seeds"]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 4.5))
    colours = ["#888888" if n in REFERENCES else "#1f77b4" for n in names]
    ax.bar(range(len(names)), [rows[n]["mean"] for n in names], yerr=[rows[n]["std"] for n in names],
           color=colours, alpha=0.6, capsize=4)
    markers = "o^sDv<>p"
    for i, seed in enumerate(seeds):
        offset = (i - (len(seeds) - 1) / 2) * 0.12  # side by side, so equal figures stay visible
        points = [(x + offset, rows[n]["miou"][i]) for x, n in enumerate(names) if rows[n]["miou"][i] is not None]
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker=markers[i % len(markers)], color="black",
                   s=18, zorder=3, label=f"seed {seed}")
    for x, n in enumerate(names):
        ax.text(x, rows[n]["mean"], f"{rows[n]['mean']:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("target val mIoU (%)")
    ax.set_title(f"ablation over {len(seeds)} seed(s): mean ± std (bars), each seed (points); grey: references")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def write_ablation(out_dir: Path, summary: dict[str, Any], plot: bool = True) -> None:
    write_json(out_dir / "ablation.json", summary)
    text = (f"# proda ablation: {len(summary['seeds'])} training seed(s)\n\n{format_ablation(summary)}\n\n"
            "Every adapted row starts from the same warm-up model of its seed and trains for stage 1's budget. "
            "Standard deviation over the seeds as numpy's (population). Each seed's runs and its pipeline "
            "report: " + ", ".join(f"seed_{s}/" for s in summary["seeds"]) + "\n")
    write_bytes(out_dir / "ablation.md", text.encode())
    if plot and summary["rows"]:
        plot_ablation(summary, out_dir / "ablation.png")


def run_ablation(path: str | Path, overrides: list[str] | tuple[str, ...] = (), seeds: list[int] | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Every row for every seed (default: the config's ``run.seed``), in ``OUT/seed_N``, with the report in
    ``OUT`` (the pipeline file's ``out_dir``, or ``out_dir=DIR``). A finished row is skipped, an interrupted
    one resumes."""
    spec = PipelineSpec.load(path, overrides)
    if seeds is None:
        seeds = [Pipeline(spec).config("source_only").run.seed]
        overrides = [o for o in overrides if not o.startswith("run.seed=")]
    refuse_seed_override(overrides)
    reports: dict[int, dict[str, Any]] = {}
    summary: dict[str, Any] = {}

    def summarise(plot: bool) -> None:  # after every step: an interrupted ablation still shows what finished
        nonlocal summary
        summary = ablation_summary(seeds, reports)
        if dist.is_main():
            write_ablation(spec.out_dir, summary, plot)

    for seed in seeds:
        if dist.is_main():
            print(f"\n==== seed {seed} ({seed_dir(spec.out_dir, seed)}) ====", flush=True)
        pipe = AblationPipeline(PipelineSpec.load(path, seed_overrides(overrides, seed, spec.out_dir)), progress,
                                on_report=summarise)
        dist.init_from_env(pipe.config("source_only").run.device)  # under torchrun: every step on every process
        reports[seed] = pipe.report  # filled in as the steps finish
        pipe.run()
    return summary
