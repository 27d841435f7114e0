"""What `search_strength` found: its table and its regularization-path plot."""

from __future__ import annotations

import dataclasses

# Columns every trial records besides the validation metrics; the objective
# may be any of them too (e.g. `keras_tuner.Objective("zeros", "max")`).
EXTRA_COLUMNS = ("penalty", "zeros", "near_zero", "epochs")


@dataclasses.dataclass(frozen=True)
class StrengthSearchResult:
    """What `search_strength` found: one row per finished trial.

    Attributes:
        best_strength: The regularized strength with the best objective.
        objective: The objective's name (e.g. `"val_loss"`).
        direction: `"min"` or `"max"`.
        rows: One dict per trial, sorted by strength: `strength`, `stage`
            (`"reference"`, `"decade"` or `"fine"`), then every recorded
            metric (`val_*`, `penalty`, `zeros`, `near_zero`, `epochs`, and
            `shrunk_*` when the search shrinks).

    Example:

    >>> result = rk.search.StrengthSearchResult(1e-3, "val_loss", "min", [
    ...     {"strength": 0.0, "stage": "reference", "val_loss": 0.5},
    ...     {"strength": 1e-3, "stage": "decade", "val_loss": 0.4}])
    >>> result.best["val_loss"], result.reference["val_loss"]
    (0.4, 0.5)
    """

    best_strength: float
    objective: str
    direction: str
    rows: list

    @property
    def best(self) -> dict:
        """The row of `best_strength`."""
        return next(r for r in self.rows if r["strength"] == self.best_strength and r["stage"] != "reference")

    @property
    def reference(self) -> dict | None:
        """The unregularized model's row."""
        return next((r for r in self.rows if r["stage"] == "reference"), None)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"best_strength": self.best_strength, "objective": self.objective,
                "direction": self.direction, "rows": [dict(r) for r in self.rows]}

    def _columns(self) -> list[str]:
        metrics = [k for k in self.rows[0] if k not in ("strength", "stage", *EXTRA_COLUMNS)]
        metrics.sort(key=lambda k: (k != self.objective, k.startswith("shrunk_"), k))
        return metrics + ["penalty", "zeros", "near_zero", "epochs"]

    def __str__(self) -> str:
        columns = self._columns()
        header = ["strength", "stage", *columns]
        lines = []
        for r in self.rows:
            cells = [f"{r['strength']:.3g}", r["stage"]]
            for c in columns:
                value = r.get(c, float("nan"))
                cells.append(f"{value:.1%}" if c in ("zeros", "near_zero", "shrunk_zeros") else
                             f"{int(value)}" if c == "epochs" else f"{value:.4g}")
            mark = " <- best" if r["stage"] != "reference" and r["strength"] == self.best_strength else ""
            lines.append((cells, mark))
        widths = [max(len(x) for x in [h, *(cells[i] for cells, _ in lines)]) for i, h in enumerate(header)]
        out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
        out.append("-" * len(out[0]))
        out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) + mark for cells, mark in lines]
        reference = self.reference
        if reference is not None and better(reference[self.objective], self.best[self.objective], self.direction):
            out.append(f"(no strength beats the unregularized reference on {self.objective})")
        return "\n".join(out)

    def plot(self, path: str) -> None:
        """Writes the regularization path to `path` (PNG, SVG, ... by the
        suffix): the objective and the kernels' zero fractions against the
        strength on a log scale, the reference dashed, the choice marked.

        Raises:
            ImportError: Without matplotlib.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("StrengthSearchResult.plot needs matplotlib: pip install matplotlib") from None
        rows = [r for r in self.rows if r["stage"] != "reference"]
        strengths = [r["strength"] for r in rows]
        figure, metric_axis = plt.subplots(figsize=(7, 4))
        metric_axis.plot(strengths, [r[self.objective] for r in rows], "o-", color="C0", label=self.objective)
        if self.reference is not None:
            metric_axis.axhline(self.reference[self.objective], color="C0", linestyle="--",
                                label=f"{self.objective}, no penalty")
        metric_axis.axvline(self.best_strength, color="gray", linestyle=":", label=f"chosen {self.best_strength:.3g}")
        metric_axis.set_xscale("log")
        metric_axis.set_xlabel("strength")
        metric_axis.set_ylabel(self.objective)
        sparsity_axis = metric_axis.twinx()
        for key, color in (("near_zero", "C1"), ("zeros", "C2"), ("shrunk_zeros", "C3")):
            if key in rows[0]:
                sparsity_axis.plot(strengths, [r[key] for r in rows], "s-", color=color, markersize=3,
                                   label=f"{key} (kernels)")
        sparsity_axis.set_ylabel("fraction of kernel entries")
        sparsity_axis.set_ylim(-0.02, 1.02)
        handles = metric_axis.get_legend_handles_labels()
        more = sparsity_axis.get_legend_handles_labels()
        metric_axis.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="best")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)


def better(a: float, b: float, direction: str) -> bool:
    """Whether objective value `a` beats `b` in `direction` (`"min"` or `"max"`)."""
    return a < b if direction == "min" else a > b

