"""The cut of entries on the host (NumPy scores: the shrink's path where the
weights are on the CPU) against the definition: the `count` lowest ranked
values, ties by position (a stable sort's first `count`), dead entries
first, nothing out of reach; and its order statistic found without
partitioning a large block of dead entries (over 1 % of them), which made
a late cut of a shrink (most entries dead) up to 30x slower (issue #41)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_regkit import weights as weights_lib
from keras_regkit.pruning import cut as cut_lib
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import scores as scores_lib
from keras_regkit.pruning import select


def by_definition(flat: np.ndarray, count: int) -> np.ndarray:
    """The `count` lowest entries, ties by position: a stable sort's first."""
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[np.argsort(flat, kind="stable")[:count]] = True
    return chosen


def mostly_dead(seed, size=4000, dead=0.85, levels=5, out_of_reach=0.05):
    """Ranked values as a late cut sees them: most entries dead (-1), the
    rest on few levels (many ties), some out of reach (+inf)."""
    rng = np.random.default_rng(seed)
    flat = rng.integers(0, levels, size).astype("float64") / levels
    flat[rng.random(size) < out_of_reach] = np.inf
    flat[rng.random(size) < dead] = -1.0
    return flat


@pytest.mark.parametrize("seed", range(3))
def test_lowest_by_position_is_a_stable_sorts_first_count_when_most_entries_tie(seed):
    flat = mostly_dead(seed)
    dead, finite = int(np.sum(flat == -1)), int(np.sum(np.isfinite(flat)))
    given = flat.copy()
    for count in (0, 1, dead - 1, dead, dead + 1, dead + 7, (dead + finite) // 2, finite - 1, finite, finite + 3):
        chosen = cut_lib.lowest_by_position(flat, count)
        np.testing.assert_array_equal(flat, given)  # the caller's array, not reordered
        assert int(chosen.sum()) == count
        np.testing.assert_array_equal(chosen, by_definition(given, count), err_msg=f"count={count}")


def test_the_order_statistic_partitions_only_what_is_above_the_dead_block(monkeypatch):
    flat = mostly_dead(0, size=20000)
    live = int(np.sum((flat > -1) & np.isfinite(flat)))
    sizes = []
    partitioned_at = cut_lib._partitioned_at
    monkeypatch.setattr(cut_lib, "_partitioned_at", lambda a, *args: sizes.append(a.size) or partitioned_at(a, *args))
    count = int(np.sum(flat == -1)) + live // 2
    np.testing.assert_array_equal(cut_lib.lowest_by_position(flat, count), by_definition(flat, count))
    assert sizes == [live]


@pytest.mark.parametrize(("block", "out_of_reach", "partitioned"), [
    (0.005, 0.0, "all"),  # a small block at the lowest value: the whole array, no copy of the rest
    (0.02, 0.0, "rest"),  # over 1 %: set apart (a partition next to a large block slows down)
    (0.0, 0.001, "rest"),  # +inf: set apart
    # NaN: the minimum is NaN, so the whole array is partitioned (NaN last), as before this
    # rule; the case pins the result, not the rule.
    (0.0, float("nan"), "all"),
])
def test_the_order_statistic_sets_apart_only_a_large_lowest_block_or_what_is_out_of_reach(
        monkeypatch, block, out_of_reach, partitioned):
    rng = np.random.default_rng(0)
    flat = rng.random(20000)
    flat[rng.random(flat.size) < block] = 0.0
    if np.isnan(out_of_reach):
        flat[[7, 300]] = np.nan
    elif out_of_reach:
        flat[rng.random(flat.size) < out_of_reach] = np.inf
    rest = int(np.sum((flat > np.nanmin(flat)) & (flat < np.inf)))
    sizes = []
    partitioned_at = cut_lib._partitioned_at
    monkeypatch.setattr(cut_lib, "_partitioned_at", lambda a, *args: sizes.append(a.size) or partitioned_at(a, *args))
    for count in (int(np.sum(flat == np.nanmin(flat))) + 1, flat.size // 2):
        sizes.clear()
        np.testing.assert_array_equal(cut_lib.lowest_by_position(flat, count), by_definition(flat, count))
        assert sizes == [flat.size if partitioned == "all" else rest], count


def test_host_cut_of_a_mostly_dead_model_takes_the_exact_count_ties_by_position(monkeypatch):
    # Only the live entries are ranked: never every entry.
    monkeypatch.setattr(granularity_lib.Granularity, "rank", lambda *args: pytest.fail("every entry ranked"))
    inputs = keras.Input((40,))
    outputs = keras.layers.Dense(30, name="b")(keras.layers.Dense(50, name="a")(inputs))
    model = keras.Model(inputs, outputs)
    refs = weights_lib.select_weights(model, "*", ("kernel",))
    rng = np.random.default_rng(0)
    ranked, scores = [], []
    for ref in refs:
        shape = tuple(ref.variable.shape)
        w = rng.normal(size=shape).astype("float32")
        w[rng.random(shape) < 0.85] = 0.0
        s = (rng.integers(1, 4, shape) / 4).astype("float32")  # three levels: ties everywhere
        ref.variable.assign(w)
        scores.append(s)
        ranked.append(np.where(w == 0, -1.0, s).reshape(-1))
    flat = np.concatenate(ranked)
    count = int(round(0.9 * flat.size))
    made = cut_lib.cut(refs, scores, granularity_lib.Weights(), sparsity=0.9)
    expected = by_definition(flat, count)
    zeros = np.concatenate([(ops.convert_to_numpy(ref.variable.value) == 0).reshape(-1) for ref in refs])
    np.testing.assert_array_equal(zeros, expected)
    assert (made.zeros, made.total) == (count, flat.size)
    assert made.threshold == pytest.approx(float(flat[expected].max()))


class RankedAsTheBaseClass(granularity_lib.Weights):
    """The base class's ranking, overridden: the cut takes its general path
    (every entry ranked), the reference for the path over live entries."""

    def rank(self, refs, scores):
        return super().rank(refs, scores)


def two_layer_model(weights):
    inputs = keras.Input((weights[0].shape[0],))
    x = keras.layers.Dense(weights[0].shape[1], use_bias=False, name="a")(inputs)
    outputs = keras.layers.Dense(weights[1].shape[1], use_bias=False, name="b")(x)
    model = keras.Model(inputs, outputs)
    for layer, w in zip(("a", "b"), weights):
        model.get_layer(layer).kernel.assign(w)
    return model, weights_lib.select_weights(model, "*", ("kernel",))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.6, 0.85, 0.9, 1.0])
@pytest.mark.parametrize("special", [None, np.inf, np.nan])
@pytest.mark.parametrize("dead", [(0.6, 0.6), (0.0, 0.6), (0.0, 0.0)], ids=["sparse", "one-dense", "dense"])
def test_cut_over_live_entries_equals_the_general_ranking(seed, sparsity, special, dead):
    # A dense weight (a shrink's first cut) is zeroed by its mask, the
    # others at the positions cut among their live entries.
    rng = np.random.default_rng(seed)
    weights, scores = [], []
    for shape, dead_share in zip(((20, 15), (15, 9)), dead):
        w = rng.integers(1, 4, shape).astype("float32")
        w[rng.random(shape) < dead_share] = 0.0  # dead: ranked first
        s = (rng.integers(0, 4, shape) / 4).astype("float32")  # ties, and live entries scored 0
        if special is not None:
            s[rng.random(shape) < 0.1] = special  # out of reach
        weights.append(w)
        scores.append(s)
    made, zeros = [], []
    for granularity in (granularity_lib.Weights(), RankedAsTheBaseClass()):
        model, refs = two_layer_model(weights)
        made.append(cut_lib.cut(refs, [s.copy() for s in scores], granularity, sparsity=sparsity))
        zeros.append([ops.convert_to_numpy(ref.variable.value) == 0 for ref in refs])
    assert made[0] == made[1]
    for fast, general in zip(*zeros):
        np.testing.assert_array_equal(fast, general)


def test_a_live_entry_scored_below_zero_ranks_below_the_dead_as_the_general_path_has_it():
    weights = [np.array([[0.0, 1.0, 2.0, 3.0]], "float32"), np.ones((4, 1), "float32")]
    scores = [np.array([[0.5, -2.0, 0.1, 0.2]], "float32"), np.ones((4, 1), "float32")]
    model, refs = two_layer_model(weights)
    # Whatever ranks below 0 goes, however low the sparsity: the dead and the -2.
    made = cut_lib.cut(refs, scores, granularity_lib.Weights(), sparsity=0.0)
    assert (made.zeros, made.total) == (2, 8)
    np.testing.assert_array_equal(ops.convert_to_numpy(refs[0].variable.value), [[0.0, 0.0, 2.0, 3.0]])


class FixedScores(scores_lib.Score):
    """A score of your own: given arrays, by `scores` only (the base
    class's `scores_at` reads them there)."""

    def __init__(self, arrays):
        self.arrays = arrays

    def scores(self, refs, optimizer=None):
        return [a.copy() for a in self.arrays]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sparsity", [0.0, 0.6, 0.85, 0.9, 1.0])
@pytest.mark.parametrize("dead", [0.0, 0.6], ids=["dense", "sparse"])
def test_a_score_computed_on_the_host_cuts_as_its_arrays_do(seed, sparsity, dead):
    # `OnHost` (the shrink's path on the CPU) scores the live entries at
    # their positions (a dense weight: all of them, with no index); the
    # cut must be the one of every entry's scores.
    rng = np.random.default_rng(seed)
    weights, scores = [], []
    for shape in ((20, 15), (15, 9)):
        w = rng.integers(1, 4, shape).astype("float32")
        w[rng.random(shape) < dead] = 0.0
        s = (rng.integers(0, 4, shape) / 4).astype("float32")
        s[rng.random(shape) < 0.1] = np.inf
        weights.append(w)
        scores.append(s)
    made, zeros = [], []
    for given in ("arrays", "on host"):
        model, refs = two_layer_model(weights)
        how = [s.copy() for s in scores] if given == "arrays" else scores_lib.OnHost(FixedScores(scores), refs)
        made.append(cut_lib.cut(refs, how, granularity_lib.Weights(), sparsity=sparsity))
        zeros.append([ops.convert_to_numpy(ref.variable.value) == 0 for ref in refs])
    assert made[0] == made[1]
    for on_host, from_arrays in zip(*zeros):
        np.testing.assert_array_equal(on_host, from_arrays)


def trained_model(seed=0):
    """A model whose Adam second moments are set (one step), with 80 % of
    its kernels' entries dead."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(seed)
    model.train_on_batch(rng.normal(size=(32, 12)).astype("float32"), rng.normal(size=(32, 3)).astype("float32"))
    refs = weights_lib.select_weights(model, "*", ("kernel",))
    for ref in refs:
        w = ops.convert_to_numpy(ref.variable.value)
        ref.variable.assign(np.where(rng.random(w.shape) < 0.8, 0.0, w).astype("float32"))
    return model, refs


@pytest.mark.parametrize("score", [scores_lib.Magnitude(), scores_lib.Curvature()], ids=lambda s: s.name)
def test_a_built_in_score_at_positions_is_its_score_there_bit_for_bit(score):
    model, refs = trained_model()
    rng = np.random.default_rng(1)
    positions = [np.sort(rng.choice(int(np.prod(refs[0].variable.shape)), 40, replace=False)), None]  # None: all
    every = score.scores(refs, model.optimizer)
    at = score.scores_at(refs, model.optimizer, positions)
    for full, some, p in zip(every, at, positions):
        assert some.dtype == np.float32
        np.testing.assert_array_equal(some, full.reshape(-1) if p is None else full.reshape(-1)[p])


def test_the_shrink_cut_on_the_host_scores_only_the_live_entries(monkeypatch):
    model, refs = trained_model()
    expected_model, expected_refs = trained_model()  # the same weights, cut from every entry's scores
    cut_lib.cut(expected_refs, scores_lib.Curvature().scores(expected_refs, expected_model.optimizer),
                RankedAsTheBaseClass(), sparsity=0.9)
    monkeypatch.setattr(scores_lib.Curvature, "scores", lambda *args: pytest.fail("every entry scored"))
    made = cut_lib.cut(refs, scores_lib.for_cut(scores_lib.Curvature(), refs, model.optimizer),
                       granularity_lib.Weights(), sparsity=0.9)
    assert made.zeros == int(round(0.9 * made.total))
    for ref, expected in zip(refs, expected_refs):
        np.testing.assert_array_equal(ops.convert_to_numpy(ref.variable.value),
                                      ops.convert_to_numpy(expected.variable.value))


def test_curvature_with_no_live_moment_above_zero_lets_every_entry_decide():
    # Moments all 0 (no step taken): the cut falls back to |w| and warns,
    # as the scores of every entry decide it.
    model, refs = trained_model()
    for variable in model.optimizer.variables:
        variable.assign(ops.zeros(variable.shape, variable.dtype))
    expected_model, expected_refs = trained_model()
    cut_lib.cut(expected_refs, scores_lib.Magnitude().scores(expected_refs), RankedAsTheBaseClass(), sparsity=0.9)
    with pytest.warns(UserWarning, match="has not taken a step yet"):
        cut_lib.cut(refs, scores_lib.OnHost(scores_lib.Curvature(), refs, model.optimizer),
                    granularity_lib.Weights(), sparsity=0.9)
    for ref, expected in zip(refs, expected_refs):
        np.testing.assert_array_equal(ops.convert_to_numpy(ref.variable.value),
                                      ops.convert_to_numpy(expected.variable.value))


@pytest.mark.parametrize("shape", [(7,), (6, 5), (3, 3, 2, 4)])
@pytest.mark.parametrize("given", ["positions", "mask"])
def test_zero_at_zeroes_exactly_the_positions_given(shape, given):
    # As flat indices, or as a flat boolean mask (a dense weight's cut); a
    # second variable with nothing to zero is left as it was.
    rng = np.random.default_rng(0)
    values = rng.normal(size=shape).astype("float32") + 5.0  # no zeros of its own
    other_values = rng.normal(size=(4, 3)).astype("float32") + 5.0
    variable, other = keras.Variable(values), keras.Variable(other_values)
    size = values.size
    positions = np.sort(rng.choice(size, size // 3, replace=False))
    mask = np.zeros(size, dtype=bool)
    mask[positions] = True

    def nothing(n):
        return np.zeros(0, np.int64) if given == "positions" else np.zeros(n, dtype=bool)

    select.zero_at([variable, other], [positions if given == "positions" else mask, nothing(other_values.size)])
    select.zero_at([variable, other], [nothing(size), nothing(other_values.size)])  # nothing to zero: nothing changes
    expected = values.reshape(-1).copy()
    expected[positions] = 0.0
    np.testing.assert_array_equal(ops.convert_to_numpy(variable.value).reshape(-1), expected)
    np.testing.assert_array_equal(ops.convert_to_numpy(other.value), other_values)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX compiles its eager ops for each shape")
def test_under_jax_the_cuts_zeroing_is_compiled_once_for_its_weights_whichever_they_touch():
    variables = [keras.Variable(np.ones(shape, "float32")) for shape in [(5, 9), (9,), (9, 5)]]  # shapes of this test only
    function = select._jax_zeroed()
    before = function._cache_size()
    flat = [np.zeros(v.shape, bool).reshape(-1) for v in variables]
    for touched in ([0, 1, 2], [0], [2], [1, 2]):  # the cuts' weights that lose an entry
        removed = [f.copy() for f in flat]
        for i in touched:
            removed[i][0] = True
        select.zero_at(variables, removed)
    assert function._cache_size() - before == 1
    assert all(float(ops.convert_to_numpy(v.value).reshape(-1)[0]) == 0.0 for v in variables)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's arrays carry their placement (a sharding)")
def test_under_jax_weights_not_all_on_one_device_are_zeroed_one_by_one_not_in_one_call():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    plain, placed = keras.Variable(np.ones((4, 3), "float32")), keras.Variable(np.ones((3, 4), "float32"))
    # Placed by a mesh (as a distribution places it), if over one device only.
    placed.assign(jax.device_put(placed.value, NamedSharding(Mesh(np.array(jax.devices()[:1]), ("x",)), PartitionSpec())))
    assert isinstance(placed.value.sharding, NamedSharding)
    assert select._zeroed_in_one_call([plain.value]) and not select._zeroed_in_one_call([plain.value, placed.value])
    removed = [np.eye(4, 3, dtype=bool), np.eye(3, 4, dtype=bool)]
    select.zero([plain, placed], removed)
    for variable, mask in zip((plain, placed), removed):
        np.testing.assert_array_equal(ops.convert_to_numpy(variable.value), np.where(mask, 0.0, 1.0))


def test_a_live_entry_scored_minus_infinity_ranks_below_the_dead_as_the_general_path_has_it():
    weights = [np.array([[0.0, 1.0, 2.0, 3.0]], "float32"), np.ones((4, 1), "float32")]
    scores = [np.array([[0.5, -np.inf, 0.1, 0.2]], "float32"), np.ones((4, 1), "float32")]
    made, zeros = [], []
    for granularity in (granularity_lib.Weights(), RankedAsTheBaseClass()):
        model, refs = two_layer_model(weights)
        made.append(cut_lib.cut(refs, scores_lib.OnHost(FixedScores(scores), refs), granularity, sparsity=0.25))
        zeros.append([ops.convert_to_numpy(ref.variable.value) == 0 for ref in refs])
    assert made[0] == made[1]
    assert made[0].zeros == int(sum(z.sum() for z in zeros[0]))  # the count is the zeros made
    for on_host, general in zip(*zeros):
        np.testing.assert_array_equal(on_host, general)


class CountedScores(FixedScores):
    calls = 0

    def scores(self, refs, optimizer=None):
        CountedScores.calls += 1
        return super().scores(refs, optimizer)


def test_a_score_of_your_own_is_computed_once_where_the_cut_falls_back_to_every_entry():
    weights = [np.array([[0.0, 1.0, 2.0, 3.0]], "float32"), np.ones((4, 1), "float32")]
    scores = [np.array([[0.5, -2.0, 0.1, 0.2]], "float32"), np.ones((4, 1), "float32")]  # below 0: general path
    model, refs = two_layer_model(weights)
    CountedScores.calls = 0
    cut_lib.cut(refs, scores_lib.OnHost(CountedScores(scores), refs), granularity_lib.Weights(), sparsity=0.0)
    assert CountedScores.calls == 1


class DoubledMagnitude(scores_lib.Magnitude):
    """A built-in score's subclass that scores its own way."""

    def scores(self, refs, optimizer=None):
        return [np.where(np.arange(s.size).reshape(s.shape) % 2 == 0, 2 * s, s)
                for s in super().scores(refs, optimizer)]


class LargestFirstCurvature(scores_lib.Curvature):
    """A built-in score's subclass that gives its own tensors: large
    weights rank lowest."""

    def tensors(self, refs, optimizer=None):
        return [1.0 / (1.0 + ops.abs(ref.variable.value)) for ref in refs]


def test_a_subclass_of_a_built_in_score_with_tensors_of_its_own_is_followed_on_the_host():
    model, refs = trained_model()
    score = LargestFirstCurvature()
    own = [ops.convert_to_numpy(t) for t in score.tensors(refs, model.optimizer)]
    for got, expected in zip(score.scores(refs, model.optimizer), own):
        np.testing.assert_array_equal(got, expected)
    expected_model, expected_refs = trained_model()
    cut_lib.cut(expected_refs, own, RankedAsTheBaseClass(), sparsity=0.9)
    cut_lib.cut(refs, scores_lib.OnHost(score, refs, model.optimizer), granularity_lib.Weights(), sparsity=0.9)
    for ref, expected in zip(refs, expected_refs):
        np.testing.assert_array_equal(ops.convert_to_numpy(ref.variable.value),
                                      ops.convert_to_numpy(expected.variable.value))


def test_off_the_cpu_a_subclass_that_scores_its_own_way_is_not_ranked_by_the_built_in_tensors(monkeypatch):
    model, refs = trained_model()
    monkeypatch.setattr(scores_lib, "on_cpu", lambda variable: False)  # as on an accelerator
    assert not isinstance(scores_lib.for_cut(scores_lib.Magnitude(), refs, model.optimizer), scores_lib.OnHost)
    assert not isinstance(scores_lib.for_cut(LargestFirstCurvature(), refs, model.optimizer), scores_lib.OnHost)
    assert isinstance(scores_lib.for_cut(DoubledMagnitude(), refs, model.optimizer), scores_lib.OnHost)


def test_a_subclass_of_a_built_in_score_that_scores_its_own_way_is_followed_on_the_host():
    model, refs = trained_model()
    expected_model, expected_refs = trained_model()
    cut_lib.cut(expected_refs, DoubledMagnitude().scores(expected_refs), RankedAsTheBaseClass(), sparsity=0.9)
    cut_lib.cut(refs, scores_lib.OnHost(DoubledMagnitude(), refs), granularity_lib.Weights(), sparsity=0.9)
    for ref, expected in zip(refs, expected_refs):
        np.testing.assert_array_equal(ops.convert_to_numpy(ref.variable.value),
                                      ops.convert_to_numpy(expected.variable.value))
