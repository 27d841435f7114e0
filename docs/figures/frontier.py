"""Draws docs/figures/frontier.png: test accuracy change against exact zeros,
the shrink's sparsity mode next to TF-MOT's `prune_low_magnitude` at its best
learning rate, median and worst of seeds 0-4, from the benchmark results.

Run from the repository's root (matplotlib needed):
    python docs/figures/frontier.py
"""

import json
import pathlib
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {"digits": "digits (scikit-learn)", "mnist1d": "MNIST-1D"}
LEVELS = (0.9, 0.95, 0.97, 0.98)  # those both benchmarks ran


def ours(dataset):
    rows = json.loads((RESULTS / "shrink_quality_results.json").read_text())["results"]
    changes = {level: [r["delta_pp"] for r in rows if r["dataset"] == dataset and r["mode"] == "sparsity"
                       and r["value"] == level] for level in LEVELS}
    return [statistics.median(changes[level]) for level in LEVELS], [min(changes[level]) for level in LEVELS]


def tfmot(dataset):
    cells = json.loads((RESULTS / "tfmot_results.json").read_text())["summary"]["cells"]
    best = {c["target"]: c for c in cells if c["dataset"] == dataset and c["best_lr"]}
    return [best[level]["median_delta_pp"] for level in LEVELS], [best[level]["worst_delta_pp"] for level in LEVELS]


def main():
    figure, axes = plt.subplots(1, len(DATASETS), figsize=(10, 3.8), sharey=False)
    zeros = [100 * level for level in LEVELS]
    for axis, (dataset, title) in zip(axes, DATASETS.items()):
        for (median, worst), label, color in ((ours(dataset), "keras_regkit shrink", "C0"),
                                              (tfmot(dataset), "TF-MOT, best lr", "C3")):
            axis.plot(zeros, median, "o-", color=color, label=f"{label}, median")
            axis.plot(zeros, worst, "x--", color=color, alpha=0.7, label=f"{label}, worst seed")
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set(title=title, xlabel="exact zeros (%)", ylabel="test accuracy change (points)", xticks=zeros)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("10-epoch shrink of a trained 300-100 MLP, seeds 0-4")
    figure.tight_layout()
    out = pathlib.Path(__file__).with_name("frontier.png")
    figure.savefig(out, dpi=110)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
