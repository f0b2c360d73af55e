"""The tree reductions every solve runs on each trip (``_tree.vdot``, ``inf_norm``,
``inf_norms``, ``dots``, ``all_finite``), against numpy in float64: random pytrees whose
leaves straddle ``SMALL_LEAF`` (written out term by term at or below it, one reduction
above), NaN and inf entries included, and each tree through both paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxopt_dict import _tree

SIZES = st.integers(1, 2 * _tree.SMALL_LEAF + 1)
ENTRY = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf]),
)


@st.composite
def trees(draw, finite: bool = False):
    """A dict of 1-4 float32/float64 leaves of sizes 1 to 2 * SMALL_LEAF + 1 (some
    2-D), and its twin of the same structure (for the inner products)."""
    entry = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False) if finite else ENTRY
    leaves, twins = {}, {}
    for i in range(draw(st.integers(1, 4))):
        size = draw(SIZES)
        shape = (size,) if size % 2 or draw(st.booleans()) else (2, size // 2)
        dtype = draw(st.sampled_from([np.float32, np.float64]))
        for out in (leaves, twins):
            values = draw(st.lists(entry, min_size=size, max_size=size))
            out[f"leaf{i}"] = jnp.asarray(np.asarray(values, dtype).reshape(shape))
    return leaves, twins


def as_float64(tree) -> list[np.ndarray]:
    return [np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)]


def max_abs(tree) -> float:
    entries = np.concatenate(as_float64(tree))
    return np.nan if np.isnan(entries).any() else float(np.max(np.abs(entries)))


@pytest.fixture(params=["as set", "all written out", "none written out"])
def small_leaf(request, monkeypatch):
    """Each case through ``SMALL_LEAF`` as it is, and with every leaf (none) below it."""
    limit = {"as set": _tree.SMALL_LEAF, "all written out": 10**6, "none written out": 0}
    monkeypatch.setattr(_tree, "SMALL_LEAF", limit[request.param])


def result_dtype(tree):
    return jnp.result_type(*jax.tree.leaves(tree))


@given(trees())
def test_inf_norm_and_all_finite_are_exact(small_leaf, pair):
    tree, other = pair
    norm = _tree.inf_norm(tree)
    np.testing.assert_array_equal(np.float64(norm), max_abs(tree))  # NaN if any is NaN
    assert norm.dtype == result_dtype(tree)
    finite = all(np.isfinite(v).all() for v in as_float64(tree))
    assert bool(_tree.all_finite(tree)) is finite
    both = _tree.inf_norms(tree, other)
    np.testing.assert_array_equal(np.float64(both[0]), max_abs(tree))
    np.testing.assert_array_equal(np.float64(both[1]), max_abs(other))


@given(trees(finite=True))
def test_vdot_is_the_inner_product(small_leaf, pair):
    a, b = pair
    got = _tree.vdot(a, b)
    want = sum(float(np.dot(u, v)) for u, v in zip(as_float64(a), as_float64(b)))
    assert got.dtype == result_dtype(a)
    # Each leaf's products round in its own dtype; the sum then in the promoted one.
    eps = max(float(jnp.finfo(leaf.dtype).eps) for leaf in jax.tree.leaves(a))
    scale = sum(float(np.dot(np.abs(u), np.abs(v))) for u, v in zip(as_float64(a), as_float64(b)))
    assert abs(float(got) - want) <= 8 * eps * scale + 1e-30


@given(st.integers(1, 2 * _tree.SMALL_LEAF + 1), st.integers(0, 2**31 - 1))
def test_dots_are_inner_products(small_leaf, n, seed):
    u, v, w = np.random.default_rng(seed).standard_normal((3, n))
    got = _tree.dots((jnp.asarray(u), jnp.asarray(v)), (jnp.asarray(w), jnp.asarray(w)))
    np.testing.assert_allclose(np.asarray(got), [u @ v, w @ w], rtol=1e-13, atol=1e-13)


def test_a_nan_or_inf_is_seen_at_every_leaf_size(small_leaf):
    """A bad entry anywhere (first, last, alone) shows in the norm and in all_finite,
    whether its leaf is written out or reduced whole."""
    for size in range(1, 10):
        for where in {0, size - 1}:
            for bad in (np.nan, np.inf, -np.inf):
                leaf = np.ones(size)
                leaf[where] = bad
                tree = {"ok": jnp.ones(3), "bad": jnp.asarray(leaf)}
                assert not bool(_tree.all_finite(tree))
                norm = float(_tree.inf_norm(tree))
                assert np.isnan(norm) if np.isnan(bad) else norm == np.inf


def test_reductions_batch_and_compile_alike():
    """Under ``jit`` and ``vmap`` (the solves' setting) the written-out path gives each
    problem's own result."""
    rng = np.random.default_rng(0)
    batch = {
        "small": rng.standard_normal((5, _tree.SMALL_LEAF)),
        "large": rng.standard_normal((5, 9)),
    }
    batch["small"][2, 1] = np.nan
    norms = jax.jit(jax.vmap(_tree.inf_norm))(batch)
    sums = jax.jit(jax.vmap(lambda t: _tree.vdot(t, t)))(batch)
    for i in range(5):
        row = {k: v[i] for k, v in batch.items()}
        np.testing.assert_array_equal(np.asarray(norms[i]), max_abs(row))
        want = sum(float(v[i].ravel() @ v[i].ravel()) for v in batch.values())
        np.testing.assert_allclose(float(sums[i]), want, rtol=1e-13)


def branches(scale):
    """Two branches of one output structure: scalars of three dtypes (one passed
    through, one repeated), an array, nested containers."""
    x = jnp.asarray(scale, jnp.float64)

    def true_fun():
        return {"a": x * 2.0, "b": (x, jnp.arange(3.0) * x), "k": jnp.int32(7), "p": x > 1}, x

    def false_fun():
        return {"a": x, "b": (x - 1.0, jnp.ones(3)), "k": jnp.int32(-1), "p": x < 1}, x + 1.0

    return true_fun, false_fun


@pytest.mark.parametrize("pred", [True, False])
def test_cond_stacked_is_cond(pred):
    """``cond_stacked`` returns what ``lax.cond`` returns, leaf for leaf (values, dtypes,
    structure), eagerly, under ``jit``, under ``vmap`` (a batched predicate), and its
    derivative is ``lax.cond``'s."""
    true_fun, false_fun = branches(1.5)
    want = jax.lax.cond(pred, true_fun, false_fun)
    for got in (
        _tree.cond_stacked(pred, true_fun, false_fun),
        jax.jit(lambda p: _tree.cond_stacked(p, *branches(1.5)))(pred),
    ):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))

    preds = jnp.array([True, False, pred])
    scales = jnp.array([0.5, 1.5, 2.5])
    both = jax.vmap(lambda p, s: _tree.cond_stacked(p, *branches(s)))(preds, scales)
    for i in range(3):
        alone = jax.lax.cond(bool(preds[i]), *branches(float(scales[i])))
        for g, w in zip(jax.tree.leaves(both), jax.tree.leaves(alone)):
            np.testing.assert_array_equal(np.asarray(g[i]), np.asarray(w))

    def total(fn):
        def f(s):
            out, extra = fn(pred, *branches(s))
            return out["a"] + out["b"][0] * 3.0 + jnp.sum(out["b"][1]) + extra

        return f

    np.testing.assert_allclose(
        float(jax.grad(total(_tree.cond_stacked))(1.5)),
        float(jax.grad(total(jax.lax.cond))(1.5)),
    )


@given(
    st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=1, max_size=9),
    st.integers(-5, 5),
    st.booleans(),
)
def test_select_first_is_jnp_select(conditions, default, python_ints):
    """``select_first`` (the driver's status) picks what ``jnp.select`` picks, in its
    dtype: the value of the first true condition, else the default; per element, also
    under ``vmap``; with int32 values or Python ints (the driver's ``Status`` members),
    also under strict dtype promotion."""
    conditions = [jnp.asarray(c) for c in conditions]
    values = [10 + i if python_ints else jnp.int32(10 + i) for i in range(len(conditions))]
    rules = list(zip(conditions, values))
    want = jnp.select(conditions, values, default)
    with jax.numpy_dtype_promotion("strict"):
        got = _tree.select_first(rules, default)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    stacked = jnp.stack(conditions, axis=1)  # (4, rules): vmap over the 4 elements
    batched = jax.vmap(lambda row: _tree.select_first(list(zip(row, values)), default))
    np.testing.assert_array_equal(np.asarray(batched(stacked)), np.asarray(want))


def test_materialize_is_the_identity_and_batches():
    """``materialize`` returns its input exactly (NaN, -0.0, bools, ints): as is in a
    single trace (no reduction in its program), through its group reductions under
    ``vmap``; derivatives pass through."""
    tree = {
        "f": jnp.array([1.5, np.nan, -0.0]),
        "b": jnp.array([True, False, True]),
        "i": jnp.array([3, -7, 0], jnp.int32),
    }
    alone = jax.jit(_tree.materialize)(tree)
    batched = jax.jit(jax.vmap(_tree.materialize))(tree)
    for got in (alone, batched):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(tree)):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
        assert np.signbit(np.asarray(got["f"])[2])
    reductions = lambda fn: str(jax.make_jaxpr(fn)(tree)).count("reduce_max")
    assert reductions(_tree.materialize) == 0
    assert reductions(jax.vmap(_tree.materialize)) == 3  # one per dtype group
    grad = jax.vmap(jax.grad(lambda v: _tree.materialize({"v": v * 2.0})["v"]))(jnp.ones(3))
    np.testing.assert_array_equal(np.asarray(grad), 2.0)
