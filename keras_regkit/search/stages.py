"""The search's two stages on KerasTuner: the decades, then the fine grid in
the best one, each a `keras_tuner.GridSearch` whose trial is ours."""

from __future__ import annotations

import contextlib
import math
import os
import warnings

from keras_regkit.search.result import StrengthSearchResult


def decades(low: float, high: float) -> list[float]:
    """`low, 10·low, 100·low, ...` up to `high` (inclusive)."""
    count = int(math.floor(math.log10(high / low) + 1e-9)) + 1
    return [float(f"{low * 10.0**i:.6g}") for i in range(count)]


def fine_grid(center: float, points: int) -> list[float]:
    """`points` log-spaced values splitting the decade centred on `center`
    (from `center / sqrt(10)` to `center * sqrt(10)`) into equal parts."""
    return [float(f"{center * 10.0 ** ((j + 0.5) / points - 0.5):.6g}") for j in range(points)]


def run_stages(kt, trainer, objective, low, high, fine, project_name, overwrite, verbose, directory):
    """Stage 1 (the decades), then stage 2 (the fine grid in the best one);
    None on a KerasTuner worker."""
    stage1 = [0.0, *decades(low, high)]
    tuner = grid_tuner(kt, trainer, objective, stage1, directory, project_name, overwrite)
    tuner.search(verbose=verbose)
    if is_worker():
        # The chief's oracle holds the trials and picks the fine values; a
        # worker's own list here is a placeholder it never uses.
        with stage_two_port():
            tuner = grid_tuner(kt, trainer, objective, [low], directory, f"{project_name}_fine", overwrite)
            tuner.search(verbose=verbose)
        return None
    rows = completed_rows(tuner, "decade")
    regularized = [r for r in rows if r["strength"] > 0]
    if not regularized:
        raise RuntimeError(f"Every stage-1 trial failed; KerasTuner's record is in {directory!r}:\n"
                           f"{_failure(tuner)}")
    center = best_row(regularized, objective)["strength"]
    tried = {r["strength"] for r in rows}
    stage2 = [s for s in fine_grid(center, fine) if not any(math.isclose(s, t, rel_tol=1e-6) for t in tried)]
    if stage2:
        with stage_two_port():
            fine_tuner = grid_tuner(kt, trainer, objective, stage2, directory, f"{project_name}_fine", overwrite)
            fine_tuner.search(verbose=verbose)
        rows += completed_rows(fine_tuner, "fine")
    rows.sort(key=lambda r: r["strength"])
    best = best_row([r for r in rows if r["strength"] > 0], objective)
    return StrengthSearchResult(best["strength"], objective.name, objective.direction, rows)


def is_worker() -> bool:
    """Whether this process is a worker of KerasTuner's distributed mode (it
    runs trials; the chief serves the oracle)."""
    return os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief" and "KERASTUNER_ORACLE_IP" in os.environ


@contextlib.contextmanager
def stage_two_port():
    """In KerasTuner's distributed mode, stage 2 is served on the next port:
    a worker that finished stage 1 then waits for the chief's stage-2 oracle
    instead of reaching the stage-1 one, which may still be answering."""
    port = os.environ.get("KERASTUNER_ORACLE_PORT")
    if port is None:
        yield
        return
    os.environ["KERASTUNER_ORACLE_PORT"] = str(int(port) + 1)
    try:
        yield
    finally:
        os.environ["KERASTUNER_ORACLE_PORT"] = port


def grid_tuner(kt, trainer, objective, strengths, directory, project_name, overwrite):
    """A `keras_tuner.GridSearch` over `strengths` whose trial is
    `trainer.run(strength)`, kept in `directory/project_name`."""
    hp = kt.HyperParameters()
    hp.Choice("strength", strengths)

    # KerasTuner's own grid search; only what a trial is (train, measure) is ours.
    class _StrengthGrid(kt.GridSearch):
        def run_trial(self, trial, *args, **kwargs):
            return trainer.run(trial.hyperparameters.get("strength"))

    return _StrengthGrid(
        objective=objective, max_trials=len(strengths), hyperparameters=hp, tune_new_entries=False,
        directory=directory, project_name=project_name, overwrite=overwrite,
    )


def completed_rows(tuner, stage: str) -> list[dict]:
    """One row per completed trial. A failed trial (a factory or a shrink
    that raised) records no metrics: it is left out, with a warning that
    names its strength and its error."""
    rows, failed = [], []
    # The oracle's public view of finished trials; it is the same through
    # KerasTuner's distributed client.
    for trial in tuner.oracle.get_best_trials(num_trials=10**6):
        if trial.status != "COMPLETED":
            failed.append(trial)
            continue
        row = {"strength": float(trial.hyperparameters.get("strength"))}
        row["stage"] = "reference" if row["strength"] == 0 else stage
        for name in trial.metrics.metrics:
            row[name] = float(trial.metrics.get_last_value(name))
        rows.append(row)
    if failed:
        strengths = sorted(float(t.hyperparameters.get("strength")) for t in failed)
        warnings.warn(
            f"search_strength: {len(failed)} {stage} trial(s) failed and are left out of the result, "
            f"at strengths {strengths}. The last error: {_last_line(failed[-1].message)}",
            UserWarning,
            stacklevel=4,
        )
    return rows


def _last_line(message) -> str:
    """The exception line of a trial's traceback text."""
    lines = [line for line in str(message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no trial message)"


def _failure(tuner) -> str:
    messages = [t.message for t in tuner.oracle.trials.values() if getattr(t, "message", None)]
    return messages[-1] if messages else "(no trial message)"


def best_row(rows: list[dict], objective) -> dict:
    """The row with the best objective (the lower strength on a tie)."""
    sign = 1.0 if objective.direction == "min" else -1.0
    # A NaN objective (a strength that diverged) never wins.
    return min(rows, key=lambda r: (math.isnan(r[objective.name]), sign * r[objective.name], r["strength"]))

