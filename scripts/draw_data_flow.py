"""Draw docs/data_flow.png: medaug's stages as boxes and what each hands to the next.

    .venv/bin/python scripts/draw_data_flow.py

The boxes follow ``medaug/pipelines/__init__.py`` (the flow map); rerun after a stage moves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medaug.pipelines.evaluate.plots import new_figure, save_figure  # noqa: E402

# (title, package, what it does), top to bottom; the arrow below each box says what it hands on.
STAGES = [
    (
        "source",
        "medaug.io",
        "folder, DICOM + labels.csv or .npz; readers, index cache,\nskipped.csv, patient-level splits, leaks",
    ),
    (
        "pretrain",
        "medaug.pipelines.pretrain",
        "SimCLR on an unlabeled pool (study train + shipped train splits\n"
        "+ your folders; never a val/test image), cached per network",
    ),
    (
        "oversample",
        "medaug.pipelines.oversample",
        "generators of medaug.models (GAN, VAE, LDM) fitted on train;\nmanifest, quality, memorization, cost",
    ),
    (
        "train",
        "medaug.pipelines.train",
        "loss, sampler, mixing, epoch metrics, augmentation grid\n"
        "for MONAI's SupervisedTrainer (+ medaug.transforms presets)",
    ),
    (
        "evaluate",
        "medaug.pipelines.evaluate",
        "test split once, checkpoint chosen on val; metrics with\nbootstrap CIs, per-class scores, plots",
    ),
    (
        "study",
        "medaug.pipelines.study",
        "grid of bundle runs as MLflow child runs (resumable, locked);\n"
        "report: tables, paired tests across seeds, figures",
    ),
]
HANDOFFS = [
    "datalist: train / val / test entries",
    "datalist + pretrained_path (the network's own layout)",
    "train split + synthetic images (synthetic: true)",
    "model.pt (best on validation)",
    "test_<metric> + CIs, predictions.csv, per run",
]
SERVICES = [
    ("predict.py", "checkpoint + DICOM folder\n-> predictions.csv\n(no training code loaded)"),
    ("tracking/", "MLflow runs, tags, local server\n(every stage logs here)"),
    ("distributed.py", "torchrun / DDP: ranks,\nrank-0-only handlers"),
]


def main() -> Path:
    fig = new_figure(11.0, 9.0)
    fig.set_layout_engine("none")  # boxes placed by hand on one full-figure axes
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 9)
    ax.axis("off")
    box_w, box_h, x0, gap = 6.2, 1.0, 0.3, 0.45
    tops = [8.7 - i * (box_h + gap) for i in range(len(STAGES))]
    for (title, package, what), top in zip(STAGES, tops):
        ax.add_patch(
            FancyBboxPatch(
                (x0, top - box_h),
                box_w,
                box_h,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor="#e8f0fb",
                edgecolor="#2b5797",
                linewidth=1.4,
            )
        )
        ax.text(x0 + 0.15, top - 0.22, title, fontsize=12, fontweight="bold", va="top")
        ax.text(
            x0 + box_w - 0.15,
            top - 0.24,
            package,
            fontsize=8.5,
            family="monospace",
            va="top",
            ha="right",
            color="#2b5797",
        )
        ax.text(x0 + 0.15, top - 0.55, what, fontsize=8.8, va="top")
    for handoff, top in zip(HANDOFFS, tops):
        start, end = top - box_h, top - box_h - gap
        ax.add_patch(
            FancyArrowPatch(
                (x0 + 1.0, start), (x0 + 1.0, end), arrowstyle="-|>", mutation_scale=14, color="#444444", linewidth=1.2
            )
        )
        ax.text(x0 + 1.2, (start + end) / 2, handoff, fontsize=8.8, va="center", style="italic", color="#333333")
    sx, sw, sh = 7.0, 3.7, 1.15
    ax.text(sx, 8.75, "services and deployment", fontsize=10, fontweight="bold", va="bottom")
    for i, (name, what) in enumerate(SERVICES):
        top = 8.6 - i * (sh + 0.35)
        ax.add_patch(
            FancyBboxPatch(
                (sx, top - sh),
                sw,
                sh,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor="#f4f4f4",
                edgecolor="#777777",
                linewidth=1.1,
            )
        )
        ax.text(sx + 0.15, top - 0.2, name, fontsize=10, fontweight="bold", family="monospace", va="top")
        ax.text(sx + 0.15, top - 0.5, what, fontsize=8.6, va="top")
    ax.text(
        sx,
        3.0,
        "A MONAI bundle (bundles/<study>/configs/*.json)\nwires the stages through their faces:\n"
        "medaug.pipelines.<stage>.<name>,\nrun by python -m monai.bundle run\nor medaug study run.",
        fontsize=8.8,
        va="top",
        color="#333333",
    )
    return save_figure(fig, REPO / "docs" / "data_flow.png")


if __name__ == "__main__":
    print(main())
