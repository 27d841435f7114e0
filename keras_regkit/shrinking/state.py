"""What `keras.callbacks.BackupAndRestore` does not save for the shrink: its
own numbers and weight snapshots, one pair of files per epoch.

`state-<epochs done>.json` holds the numbers, `state-<epochs done>.npz` the
arrays; the JSON is written last, so a state counts only once both files are
complete. The previous epoch's state is kept too: with BackupAndRestore
listed after the phase, an interruption between the two saves leaves a
backup one epoch behind, which must still find its match.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings

import numpy as np

FOLDER = "keras_regkit_shrink"  # inside `backup_dir`
FORMAT = 8  # 8: one state per part (the callback, its trigger, policy, rate, check, result)


class PhaseState:
    """The shrink's states under `backup_dir`.

    Args:
        backup_dir: The directory (BackupAndRestore's own is fine).
    """

    def __init__(self, backup_dir):
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise TypeError(
                "Invalid value for argument `backup_dir`: expected a non-empty directory path (str or "
                "os.PathLike), e.g. the `backup_dir` of your `keras.callbacks.BackupAndRestore`. "
                f"Received: backup_dir={backup_dir!r}")
        self.directory = os.path.join(os.fspath(backup_dir), FOLDER)

    def saved(self) -> list[int]:
        """Epoch counts of the complete states on disk, newest first."""
        if not os.path.isdir(self.directory):
            return []
        names = (re.fullmatch(r"state-(\d+)\.json", name) for name in os.listdir(self.directory))
        return sorted((int(m.group(1)) for m in names if m), reverse=True)

    def save(self, epochs_done: int, parts: dict[str, dict]) -> None:
        """Writes the state after `epochs_done` epochs: each part's state (a
        dict of JSON-ready values, NumPy arrays and lists of them; a list
        found twice is stored once)."""
        numbers, arrays, stored = {}, {}, {}
        for part, state in parts.items():
            numbers[part] = {}
            for key, value in state.items():
                if not _is_arrays(value):
                    numbers[part][key] = value
                    continue
                name, values = f"{part}.{key}", value if isinstance(value, list) else [value]
                same = next((n for n, v in stored.items() if v[2] is value), None)
                stored[name] = (same or name, len(values), value, not isinstance(value, list))
                if same is None:
                    arrays.update({f"{name}_{i}": np.asarray(v) for i, v in enumerate(values)})
        snapshots = {name: [source, count, single] for name, (source, count, _, single) in stored.items()}
        state = {"format": FORMAT, "epochs_done": epochs_done, "snapshots": snapshots, "parts": numbers}
        os.makedirs(self.directory, exist_ok=True)
        stem = os.path.join(self.directory, f"state-{epochs_done}")
        _write_atomically(stem + ".npz", lambda f: np.savez(f, **arrays))
        _write_atomically(stem + ".json", lambda f: f.write(json.dumps(state).encode()))
        # Older ones, and newer ones left by a run this one did not resume.
        for old in set(self.saved()) - {epochs_done, epochs_done - 1}:
            for suffix in (".json", ".npz"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.directory, f"state-{old}{suffix}"))

    def load(self, epoch: int, shapes: list):
        """The newest readable state saved at or before `epoch` (the epoch fit
        goes on from), as `(parts, path)`, or None; refuses a state written
        for weights of other `shapes` than these."""
        loaded = self._load(epoch)
        if loaded is None:
            return None
        epochs_done, parts, path = loaded
        if parts["phase"]["shapes"] != shapes:
            raise ValueError(
                f"ShrinkPhase cannot resume from {path}: it was written for a model with weights of "
                f"shapes {parts['phase']['shapes']}, and this model's are {shapes}. Delete the backup, or "
                "pass the `backup_dir` of this model's own training.")
        if epochs_done < epoch:
            warnings.warn(
                f"ShrinkPhase resumes at epoch {epoch + 1} from its state after epoch {epochs_done}: list "
                "ShrinkPhase before BackupAndRestore in `callbacks` so that both save the same epoch.",
                stacklevel=4)
        return parts, path

    def _load(self, epoch: int):
        for done in self.saved():
            if done > epoch:
                continue  # written after the backup fit resumed from
            stem = os.path.join(self.directory, f"state-{done}")
            try:
                with open(stem + ".json") as f:
                    state = json.load(f)
                if state.get("format") != FORMAT:
                    raise ValueError(f"unknown format {state.get('format')!r}")
                with np.load(stem + ".npz", allow_pickle=False) as f:
                    arrays = dict(f)
                parts = state["parts"]
                for name, (source, count, single) in state["snapshots"].items():
                    part, key = name.split(".", 1)
                    values = [arrays[f"{source}_{i}"] for i in range(count)]
                    parts[part][key] = values[0] if single else values
            except (OSError, ValueError, KeyError) as error:
                warnings.warn(f"ShrinkPhase skips its unreadable state {stem}: {error}", stacklevel=3)
                continue
            return state["epochs_done"], parts, stem + ".json"
        return None

    def clear(self) -> None:
        """Training ended normally: as BackupAndRestore deletes its backup."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _is_arrays(value) -> bool:
    """An array, or a non-empty list of them (a model's weights)."""
    if isinstance(value, np.ndarray):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, np.ndarray) for v in value)


def _write_atomically(path: str, write) -> None:
    # Each process its own temporary file: under a multi-worker strategy
    # every worker writes the same state.
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as f:
        write(f)
    os.replace(temporary, path)
