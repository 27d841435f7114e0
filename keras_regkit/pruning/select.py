"""The global cut of entries, on the device that holds the weights.

`cut.lowest_by_position` is the NumPy reference; this module makes the same
cut without copying a weight to the host: the exact count `round(s · n)`
(at least every dead entry, never an entry out of reach), the lowest scores
first, ties broken by position (lowest flat index first, in the order of the
weights). Four integers cross to the host, once. The shrink cuts here where
the weights are on an accelerator (`scores.for_cut`); on the CPU, where they
already are on the host, the NumPy cut (`cut`, over the live entries) is faster.

The order statistic is found by a radix select on the scores' bit patterns:
a non-negative float32 orders as its int32 bits, a dead entry is given the
key -1 (below every live one) and +inf's pattern is above every finite one.
Two histogram passes (the high 15 value bits, then the low 16 of the
entries sharing the chosen high bits) find the exact k-th lowest key in
integer counts; a cumulative count over the keys equal to it takes the first
of the ties, a pass made only when some, not all, of them go. A bisection on
the threshold needs 31 counting passes (on 2 busy CPU cores, 5 M entries: 1.4x
the radix select's time under TensorFlow, 6x under PyTorch, 0.85x under
JAX); a sort, a full one.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

_HIGH_SHIFT = 16  # the first pass counts keys >> 16 (15 value bits); the second, the low 16 bits
_LOW_BINS = 1 << _HIGH_SHIFT
_HIGH_BINS = 1 << 15
_DEAD_KEY = -1
_INFINITE_HIGH = 0x7F80  # the high bits of +inf (and of NaN): out of reach


def entry_keys(values: list, scores: list) -> list:
    """Per weight, int32 keys that order its entries as the cut ranks them:
    exact zeros (dead) first, then the non-negative `scores` by value, with
    NaN and +inf out of reach."""
    keys = []
    for value, score in zip(values, scores):
        # |score|: a built-in score is non-negative; a NaN's sign bit cleared puts it above +inf.
        bits = ops.view(ops.abs(ops.cast(score, "float32")), "int32")
        keys.append(ops.where(ops.equal(value, 0), _DEAD_KEY, bits))
    return keys


def lowest(keys: list, sparsity: float) -> tuple[list | None, int, float | None]:
    """The cut of `round(sparsity · n)` entries (n: all entries of `keys`),
    raised to every dead one and capped at those not out of reach, lowest
    keys first, ties by position.

    Returns:
        Per weight, a boolean mask of the entries cut (None when none is);
        how many are cut; the highest score cut, at least 0 (None when none).
    """
    total = sum(int(np.prod(k.shape)) for k in keys)
    asked = int(round(sparsity * total))
    # Pass 1: high bits + 1, so the dead (-1 >> 16 == -1) count in bin 0.
    high = [ops.add(ops.right_shift(k, _HIGH_SHIFT), 1) for k in keys]
    histogram = _histogram(high, _HIGH_BINS + 1)
    dead, out_of_reach = histogram[0], ops.sum(histogram[_INFINITE_HIGH + 1:])
    count = ops.minimum(ops.maximum(dead, asked), total - out_of_reach)
    high_bin, rank_in_bin = _bin_of(histogram, count)
    base = ops.left_shift(high_bin - 1, _HIGH_SHIFT)
    # Pass 2: the low bits of the keys under the chosen high bits (bin 1 + low),
    # those below in bin 0, above in the last.
    low = [ops.clip(ops.subtract(k, base) + 1, 0, _LOW_BINS + 1) for k in keys]
    histogram = _histogram(low, _LOW_BINS + 2)[1:_LOW_BINS + 1]
    low_bin, ties_taken = _bin_of(histogram, rank_in_bin)
    kth = base + low_bin
    fetched = ops.convert_to_numpy(ops.stack([ops.cast(x, "int32") for x in (
        count, kth, ties_taken, ops.take(histogram, low_bin))]))  # the one host transfer
    count, kth, ties_taken, ties = (int(x) for x in fetched)
    if count == 0:
        return None, 0, None
    if ties_taken == ties:  # every entry at the k-th key goes
        chosen = [ops.less_equal(k, kth) for k in keys]
    else:
        chosen = _first_ties(keys, kth, ties_taken)
    return chosen, count, _score_of(kth)


def at_or_below(keys: list, threshold: float) -> tuple[list | None, int, float | None]:
    """The cut of every entry scored at or below `threshold` (>= 0), dead
    ones included; returns as `lowest` does."""
    # The highest float32 at or below the threshold: a float32 score compares
    # with it as its float64 value compares with the threshold.
    limit = np.float32(threshold)
    if float(limit) > threshold:
        limit = np.nextafter(limit, np.float32(-np.inf))
    limit_key = int(np.array(limit, dtype=np.float32).view(np.int32))
    chosen = [ops.less_equal(k, limit_key) for k in keys]
    counts = [ops.sum(ops.cast(c, "int32")) for c in chosen]
    highest = [ops.max(ops.where(c, k, _DEAD_KEY)) for c, k in zip(chosen, keys)]
    fetched = ops.convert_to_numpy(ops.stack(counts + highest)) if keys else np.zeros(0, np.int32)
    count, kth = int(np.sum(fetched[:len(keys)], dtype=np.int64)), int(np.max(fetched[len(keys):], initial=-1))
    if count == 0:
        return None, 0, None
    return chosen, count, _score_of(kth)


def _score_of(key: int) -> float:
    """The score a live key stands for; 0.0 for a dead one."""
    return float(np.array(key, dtype=np.int32).view(np.float32)) if key >= 0 else 0.0


def zero(variables: list, chosen: list) -> None:
    """Zeroes, in place on its device, the entries of each variable that
    its mask marks (a mask of the variable's shape, or one that broadcasts
    to it: a unit's column or row)."""
    values = [variable.value for variable in variables]
    if _zeroed_in_one_call(values):
        # NumPy masks go in as they are: no conversion compiled.
        for variable, value in zip(variables, _jax_zeroed()(values, list(chosen))):
            variable.assign(value)
        return
    for variable, value, removed in zip(variables, values, chosen):
        # A zero that broadcasts, not a weight-sized one (its allocation
        # and fill cost as much as the `where`).
        variable.assign(ops.where(removed, ops.zeros((), value.dtype), value))


def _zeroed_in_one_call(values: list) -> bool:
    """Whether `zero` zeroes these JAX arrays in one jitted call: where all
    are in the host's memory, on one device. Eager `where`s are compiled one
    by one, for each shape, on their first call (25 ms each on 2 CPU cores),
    where a function of the list is compiled once for its shapes (for the
    hold's masks, a function of the same form, a KerasHub encoder's 58
    weights of 9 shapes: 0.09 s against 0.2). Not on an accelerator: the
    call holds every weight's new value at once beside the old, where one
    `where` at a time holds one weight's more."""
    return keras.backend.backend() == "jax" and _on_one_device(values) and all(map(_in_host_memory, values))


def zero_at(variables: list, positions: list) -> None:
    """Zeroes the entries of each of `variables` at its `positions`: flat
    indices (C order), or a boolean mask of its entries, flat (a dense
    weight's cut: no index of half its entries). A PyTorch parameter is
    written in place, at those entries only (a late cut zeroes a few
    percent of a weight); elsewhere by `zero`. Where `zero` makes one call
    of them all (JAX on the CPU), every variable goes to it, those with
    nothing to zero too: the same list at every cut, so its function is
    compiled once. TensorFlow's in-place scatter is not used: it turns the
    variable to copy-on-read, after which every read (each train step's)
    copies it."""
    touched = [(v, p) for v, p in zip(variables, positions) if (p.any() if p.dtype == bool else p.size)]
    if not touched:
        return
    if _zeroed_in_one_call([v.value for v in variables]):
        touched = list(zip(variables, positions))
    later, masks = [], []
    for variable, where in touched:
        value, shape = variable.value, tuple(variable.shape)
        if keras.backend.backend() == "torch" and value.is_contiguous():
            import torch

            with torch.no_grad():
                value.view(-1)[torch.as_tensor(where, device=value.device)] = 0
            continue
        if where.dtype == bool:
            removed = where
        else:
            removed = np.zeros(int(np.prod(shape)), dtype=bool)
            removed[where] = True
        later.append(variable)
        masks.append(removed.reshape(shape))
    if later:
        zero(later, masks)


def count_zeros(variables: list) -> tuple[int, int]:
    """Exact zeros among `variables`' entries, and how many entries there
    are: on the host by NumPy where every variable is on the CPU, else by
    ops where they are (an accelerator; a JAX array sharded over several
    devices, whose device is a sharding)."""
    if not variables:
        return 0, 0
    total = sum(int(np.prod(v.shape)) for v in variables)
    if all(on_cpu(v) for v in variables):
        # On the host: NumPy's passes (the eager ops made three passes, two
        # temporaries and a dispatch each: a decision's fixed cost on a small
        # model). `== 0` first: `count_nonzero` of a float array branches on
        # every entry, 3-13x slower than of the booleans (a 2048x2048
        # kernel, two-thirds zeros: 3-13 ms against 1).
        try:
            return sum(int(np.count_nonzero(host_view(v.value) == 0)) for v in variables), total
        except (TypeError, RuntimeError, ValueError):
            pass  # a tensor NumPy cannot read here: counted by ops
    zeros = ops.stack([ops.sum(ops.cast(ops.equal(v.value, 0), "int32")) for v in variables])
    return int(np.sum(ops.convert_to_numpy(zeros), dtype=np.int64)), total


def on_cpu(variable) -> bool:
    """Whether `variable` lives in the host's memory (its tensor's device
    names the CPU under every backend)."""
    return _in_host_memory(variable.value)


def _in_host_memory(value) -> bool:
    return "cpu" in str(getattr(value, "device", "cpu")).lower()


def host_array(value) -> np.ndarray | None:
    """`host_view(value)` where the tensor is in the host's memory; None on
    an accelerator, or sharded over several devices (its device is then a
    sharding)."""
    if not _in_host_memory(value):
        return None
    try:
        return host_view(value)
    except (TypeError, RuntimeError, ValueError):
        return None


def nonzero_masks(values: list) -> list:
    """Per tensor of `values`, 1 where its entry is not an exact zero, 0
    where it is (a hold's masks), on its device, in `mask_dtype`. Under JAX
    one jitted function makes them all, compiled once per process for a set
    of shapes: eager ops are compiled one by one, each for each shape, on
    their first call (on 2 CPU cores, 0.23 s of a first shrink's compiles)."""
    values = list(values)
    if keras.backend.backend() != "jax":
        return [ops.cast(ops.not_equal(v, 0), mask_dtype(v)) for v in values]
    if len({getattr(v, "sharding", None) for v in values}) == 1:
        return _jax_nonzero_masks()(values)
    # One call takes arrays on one set of devices only (a model placed by hand).
    return [_jax_nonzero_masks()([v])[0] for v in values]


def mask_dtype(value) -> str:
    """The dtype a hold keeps its mask of `value` in. Under JAX uint8: the
    compiled step converts it as it multiplies, so each step reads a
    quarter of a float32 mask's bytes (the after-step multiply of 5.26 M
    entries: 0.59 ms against 1.05 on 2 CPU cores). Elsewhere the weight's
    own: an eager or graph multiply would convert it, a copy, each step. Not
    bool: XLA turns a product by a boolean into a select, whose zeros lose
    the sign the product gives them."""
    return "uint8" if keras.backend.backend() == "jax" else keras.backend.standardize_dtype(value.dtype)


def _on_one_device(values: list) -> bool:
    """Whether JAX arrays `values` all live on one and the same device (a
    jitted call takes arrays on one set of devices only: not a model placed
    by hand, or one sharded over several)."""
    import jax

    devices = set()
    for value in values:
        sharding = getattr(value, "sharding", None)
        if not isinstance(sharding, jax.sharding.SingleDeviceSharding):
            return False
        devices |= sharding.device_set
    return len(devices) == 1


_jax_zero = None


def _jax_zeroed():
    global _jax_zero
    if _jax_zero is None:
        import jax
        import jax.numpy as jnp

        _jax_zero = jax.jit(lambda values, chosen: [jnp.where(c, jnp.zeros((), v.dtype), v)
                                                    for v, c in zip(values, chosen)])
    return _jax_zero


_jax_masks = None


def _jax_nonzero_masks():
    global _jax_masks
    if _jax_masks is None:
        import jax

        _jax_masks = jax.jit(lambda values: [(v != 0).astype(mask_dtype(v)) for v in values])
    return _jax_masks


def host_view(value) -> np.ndarray:
    """A tensor in the host's memory as a read-only NumPy array, for
    reading at once, with no copy: under JAX and PyTorch it shares the
    tensor's memory (so it changes with the variable); under TensorFlow it
    shares a read of the variable's buffer, which the variable's next
    assignment leaves as it was (TensorFlow copies a buffer that a read
    still holds before writing it). `ops.convert_to_numpy` copies: a
    4 M-entry kernel on the CPU took 1.3-8 ms to copy (more where the copy's
    fresh memory faults in), against 0.04 ms to view."""
    backend = keras.backend.backend()
    if backend == "torch" and hasattr(value, "detach"):
        value = value.detach()  # a trainable parameter refuses a view while it requires grad
    elif backend == "tensorflow" and hasattr(value, "read_value"):
        value = value.read_value()  # NumPy's own read of a variable copies it
    try:
        view = np.asarray(value)
    except (TypeError, RuntimeError, ValueError):
        # On a device NumPy cannot read; or TensorFlow's 0-d bfloat16, whose
        # `__array__` gives a scalar (Keras' `convert_to_numpy` fails on it too).
        if backend == "tensorflow":
            return np.asarray(value.numpy())
        return np.asarray(ops.convert_to_numpy(value))
    view.flags.writeable = False  # under PyTorch it is the parameter's own memory
    return view


def _histogram(bins: list, length: int):
    """Entries per bin over all of `bins` (int32 counts: exact at any size)."""
    counts = [ops.bincount(ops.reshape(b, (-1,)), minlength=length) for b in bins]
    return ops.sum(ops.stack(counts), axis=0) if len(counts) > 1 else counts[0]


def _bin_of(histogram, k):
    """The bin holding the `k`-th entry (1-based; the first bin when k is
    0), and `k`'s rank within it."""
    cumulative = ops.cumsum(histogram)
    index = ops.minimum(ops.sum(ops.cast(ops.less(cumulative, k), "int32")), int(histogram.shape[0]) - 1)
    return index, k - (ops.take(cumulative, index) - ops.take(histogram, index))


def _first_ties(keys: list, kth: int, ties_taken: int) -> list:
    """Masks of the keys below `kth` and of the first `ties_taken` equal to
    it, by position across the weights in order."""
    chosen, before = [], ops.zeros((), "int32")
    for k in keys:
        tied = ops.cast(ops.equal(k, kth), "int32")
        running = ops.reshape(ops.cumsum(ops.reshape(tied, (-1,))), tuple(k.shape)) + before
        chosen.append(ops.logical_or(ops.less(k, kth), ops.logical_and(tied > 0, running <= ties_taken)))
        before = before + ops.sum(tied)
    return chosen
