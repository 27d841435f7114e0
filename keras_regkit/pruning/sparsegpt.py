"""The layer-wise reconstruction of SparseGPT (Frantar & Alistarh, 2023),
on the host in float64 NumPy.

A linear map `Y = W X` (`W`: outputs x inputs, one row per output unit; `X`:
inputs x calibration rows) is pruned so that the pruned `Ŵ` keeps `Ŵ X`
close to `W X`. With `H = X Xᵀ` (dampened), Optimal Brain Surgeon gives,
for removing entry `w_rc` of row `r`, the error `w_rc² / [H⁻¹]_cc` and the
change of the row's later entries that compensates for it. SparseGPT walks
the columns in order, choosing the mask of each block of columns from the
weights as already updated (adaptive mask selection), zeroing the chosen
entries of one column and spreading their error over the columns not yet
visited, through the upper Cholesky factor of `H⁻¹` (its row `c` is what the
inverse Hessian of the columns from `c` on reads after the earlier ones are
fixed).

Entries that are zero on entry stay zero: they are chosen first, whatever
the quota (a cut never regrows a zero).
"""

from __future__ import annotations

import dataclasses

import numpy as np

BLOCK_SIZE = 128
DAMPENING = 0.01  # of the mean of H's diagonal, as the paper


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """The pruned matrix and how well it reproduces the original.

    Attributes:
        matrix: The pruned `W` (outputs x inputs), exact zeros where cut.
        error: `||W X_d - Ŵ X||² / ||W X_d||²` over the calibration rows
            (`X_d = X` without a `cross`; 0 when `W X_d` is 0).
    """

    matrix: np.ndarray
    error: float


def _inverse_hessian_factor(hessian: np.ndarray, dampening: float) -> np.ndarray:
    """The upper Cholesky factor `U` of `(H + λI)⁻¹` (`Uᵀ U = (H + λI)⁻¹`),
    `λ` = `dampening` x the mean of the diagonal; tenfold more dampening
    while `H + λI` is not numerically positive definite."""
    damp = dampening * float(np.mean(np.diag(hessian)))
    for _ in range(6):
        try:
            lower = np.linalg.cholesky(hessian + damp * np.eye(len(hessian)))
            lower_inverse = np.linalg.inv(lower)
            return np.linalg.cholesky(lower_inverse.T @ lower_inverse).T
        except np.linalg.LinAlgError:
            damp = max(10.0 * damp, 1e-8)
    raise np.linalg.LinAlgError("The dampened Hessian is not positive definite.")


def _block_quota(sparsity: float, rows: int, start: int, stop: int) -> int:
    """Entries to cut in columns [start, stop): the difference of the
    cumulative rounded targets, so the whole matrix loses exactly
    `round(sparsity * size)`."""
    return int(round(sparsity * rows * stop)) - int(round(sparsity * rows * start))


def reconstruct(
    weights: np.ndarray,
    hessian: np.ndarray,
    sparsity: float | None = None,
    pattern: tuple[int, int] | None = None,
    block_size: int = BLOCK_SIZE,
    dampening: float = DAMPENING,
    free: int = 0,
    cross: np.ndarray | None = None,
    dense_energy: float = 0.0,
) -> Reconstruction:
    """Prunes `weights` (outputs x inputs) for inputs of Gram matrix
    `hessian` (inputs x inputs, `Σ x xᵀ` over the calibration rows).

    Args:
        weights: The matrix, one row per output unit.
        hessian: `X Xᵀ`, symmetric positive semi-definite.
        sparsity: Unstructured: the fraction of entries to cut, chosen in
            each block of columns where `w² / [U]_cc²` is lowest over the
            block (the paper's adaptive selection).
        pattern: `(n, m)`: keep at most `n` of every `m` consecutive inputs
            of each row, the `m - n` with the lowest `w² / [U]_cc²` cut.
        block_size: Columns per block (a multiple of `m` with a pattern).
        dampening: Added to H's diagonal, as a fraction of its mean.
        free: The last `free` columns are never cut, only updated (a bias,
            as the weight of a constant input, takes its share of the
            compensation). `sparsity` counts the others.
        cross: `X X_dᵀ`, where the layer's inputs `X` differ from those
            `X_d` it had in the unpruned model (the layers before it
            pruned): the target is then `W X_d`, the unpruned model's
            outputs, not `W X` (the earlier layers' errors are corrected,
            not carried). None: the target is `W X` (the paper's).
        dense_energy: `||W X_d||²`, with `cross`, for the error.

    Returns:
        A `Reconstruction`.
    """
    original = np.asarray(weights, dtype="float64")
    gram = np.asarray(hessian, dtype="float64")
    hessian = gram.copy()
    matrix = original.copy()
    rows, columns = matrix.shape
    columns -= free
    # Inputs that are always zero: their weights do nothing, and H's row is 0.
    dead = np.diag(hessian) == 0
    dead[columns:] = False
    hessian[dead, dead] = 1.0
    factor = _inverse_hessian_factor(hessian, dampening)
    if cross is not None:
        # The dense target: `min ||W X_d - Ŵ X||² + λ||Ŵ - W||²` unconstrained
        # is `W + W (Cᵀ - H) (H + λI)⁻¹`, and the constrained problem is the
        # same problem for that matrix (the rest of the error is constant).
        matrix += (matrix @ (np.asarray(cross, "float64").T - gram)) @ (factor.T @ factor)
    matrix[:, dead] = 0.0
    held = (original[:, :columns] == 0) | dead[None, :columns]
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        block = matrix[:, start:stop].copy()
        pruned = np.zeros_like(block)
        errors = np.zeros_like(block)
        local = factor[start:stop, start:stop]
        diagonal = np.diag(local)
        cut = held[:, start:stop].copy()
        if pattern is None:
            score = np.where(cut, -1.0, block ** 2 / diagonal ** 2)
            quota = max(_block_quota(sparsity, rows, start, stop), int(cut.sum()))
            cut.flat[np.argsort(score, axis=None, kind="stable")[:quota]] = True
        for i in range(stop - start):
            if pattern is not None and i % pattern[1] == 0:
                group = slice(i, i + pattern[1])
                score = np.where(cut[:, group], -1.0, block[:, group] ** 2 / diagonal[group] ** 2)
                lowest = np.argsort(score, axis=1, kind="stable")[:, :pattern[1] - pattern[0]]
                np.put_along_axis(cut[:, group], lowest, True, axis=1)
            column = block[:, i]
            kept = np.where(cut[:, i], 0.0, column)
            pruned[:, i] = kept
            errors[:, i] = (column - kept) / local[i, i]
            block[:, i:] -= np.outer(errors[:, i], local[i, i:])
        matrix[:, start:stop] = pruned
        matrix[:, stop:] -= errors @ factor[start:stop, stop:]
    if cross is None:
        return Reconstruction(matrix, relative_error(original, matrix, gram))
    # ||W X_d - Ŵ X||² = ||W X_d||² - 2 <Ŵ X, W X_d> + ||Ŵ X||²
    error = dense_energy - 2.0 * float(np.sum((matrix @ cross) * original)) + float(np.sum((matrix @ gram) * matrix))
    return Reconstruction(matrix, max(error, 0.0) / dense_energy if dense_energy > 0 else 0.0)


def relative_error(original: np.ndarray, pruned: np.ndarray, hessian: np.ndarray) -> float:
    """`||(W - Ŵ) X||² / ||W X||²`, from `H = X Xᵀ` alone."""
    delta = original - pruned
    total = float(np.sum((original @ hessian) * original))
    return float(np.sum((delta @ hessian) * delta)) / total if total > 0 else 0.0
