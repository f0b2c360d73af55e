"""Property tests (hypothesis; derandomized, no database, small max_examples: see conftest):
random pytree structures, random boxes, random SPD quadratics with closed-form answers."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import BOUNDED_METHODS, METHODS, Pair

import jaxopt_dict as jd

# ---------------------------------------------------------------------------------------
# Random pytree structures on a separable quadratic
# ---------------------------------------------------------------------------------------


class Leaf(NamedTuple):
    shape: tuple[int, ...]
    dtype: str


_leaf = st.builds(
    Leaf,
    st.lists(st.integers(1, 3), max_size=2).map(tuple),
    st.sampled_from(["float32", "float64"]),
)


def _containers(children):
    return st.one_of(
        st.dictionaries(st.sampled_from("abcwz"), children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=3).map(tuple),
        st.tuples(children, children).map(lambda uv: Pair(*uv)),
    )


_structures = st.recursive(_leaf, _containers, max_leaves=5)


def _build(node, rng, scale):
    if isinstance(node, Leaf):
        return jnp.asarray(scale * rng.standard_normal(node.shape), node.dtype)
    if isinstance(node, Pair):
        return Pair(_build(node.u, rng, scale), _build(node.v, rng, scale))
    if isinstance(node, tuple):
        return tuple(_build(child, rng, scale) for child in node)
    return {key: _build(child, rng, scale) for key, child in node.items()}


def separable_quadratic(x, target):
    """sum over leaves of |x - t|^2 / 2: the minimizer is the target, whatever the tree."""
    terms = jax.tree.map(lambda xi, t: 0.5 * jnp.sum((xi - t) ** 2), x, target)
    return sum(jax.tree.leaves(terms))


@settings(max_examples=10)
@given(
    structure=_structures,
    method_id=st.sampled_from(list(METHODS)),
    seed=st.integers(0, 2**16),
)
def test_random_structures_keep_structure_and_converge(structure, method_id, seed):
    rng = np.random.default_rng(seed)
    x0 = _build(structure, rng, 1.0)
    target = _build(structure, rng, 1.0)
    name, options = METHODS[method_id]
    res = jd.minimize(separable_quadratic, x0, args=(target,), method=name, options=options)
    assert jax.tree.structure(res.x) == jax.tree.structure(x0)
    assert jax.tree.structure(res.jac) == jax.tree.structure(x0)
    for got, want in zip(jax.tree.leaves(res.x), jax.tree.leaves(x0)):
        assert got.shape == want.shape and got.dtype == want.dtype
    assert bool(res.success), res.message
    has_f32 = any(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(x0))
    atol = 2e-3 if (has_f32 and method_id == "GD-linesearch") else 1e-4
    for got, want in zip(jax.tree.leaves(res.x), jax.tree.leaves(target)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=atol)


# ---------------------------------------------------------------------------------------
# Random boxes: projected methods stay inside and reach the clipped minimizer
# ---------------------------------------------------------------------------------------

_BOX_POINTS: list = []


def _record(x):
    _BOX_POINTS.append(jax.tree.map(np.asarray, x))


def boxed_quadratic(x, target):
    jax.debug.callback(_record, x)
    return separable_quadratic(x, target)


_finite = st.floats(-3.0, 3.0, allow_nan=False, width=64)
_side = st.one_of(_finite, st.just(np.inf))


@st.composite
def _boxes(draw, n):
    """Per coordinate: a finite or infinite lower and upper bound with lower <= upper."""
    lower, upper = [], []
    for _ in range(n):
        a, b = draw(_finite), draw(_finite)
        lo, hi = min(a, b), max(a, b)
        if draw(st.booleans()):
            lo = -np.inf
        if draw(st.booleans()):
            hi = np.inf
        if draw(st.integers(0, 9)) == 0:
            hi = lo if np.isfinite(lo) else hi  # a pinned coordinate now and then
        lower.append(lo)
        upper.append(hi)
    return np.asarray(lower), np.asarray(upper)


@pytest.mark.parametrize("method_id", BOUNDED_METHODS)
@settings(max_examples=4)
@given(
    box=_boxes(5),
    x0=st.lists(_finite, min_size=5, max_size=5),
    target=st.lists(_finite, min_size=5, max_size=5),
)
def test_random_boxes_stay_inside_and_reach_the_clipped_minimizer(method_id, box, x0, target):
    lower, upper = box

    def tree(v):  # a vector leaf and a scalar leaf
        v = np.asarray(v, np.float64)
        return {"v": jnp.asarray(v[:4]), "s": jnp.asarray(v[4])}

    name, options = METHODS[method_id]
    _BOX_POINTS.clear()
    res = jd.minimize(
        boxed_quadratic,
        tree(x0),
        args=(tree(target),),
        method=name,
        options=options,
        bounds=(tree(lower), tree(upper)),
    )
    jax.effects_barrier()
    assert len(_BOX_POINTS) == int(res.nfev)
    for point in _BOX_POINTS:
        flat = np.concatenate([point["v"], [point["s"]]])
        lo = np.concatenate([lower[:4], [lower[4]]])
        hi = np.concatenate([upper[:4], [upper[4]]])
        assert np.all(flat >= lo) and np.all(flat <= hi), (flat, lo, hi)
    assert bool(res.success), res.message
    expected = np.clip(np.asarray(target), lower, upper)
    got = np.concatenate([np.asarray(res.x["v"]), [float(res.x["s"])]])
    np.testing.assert_allclose(got, expected, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Random SPD quadratics with a closed-form minimizer (float64)
# ---------------------------------------------------------------------------------------


def spd_quadratic(x, a, b):
    """x^T A x / 2 - b^T x over a dict split of x; the minimizer solves A x = b."""
    z = jnp.concatenate([x["head"], x["tail"]])
    return 0.5 * z @ (a @ z) - b @ z


@st.composite
def _spd_problems(draw):
    n = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigenvalues = draw(st.lists(st.floats(1.0, 10.0), min_size=n, max_size=n))
    a = (q * np.asarray(eigenvalues)) @ q.T
    a = 0.5 * (a + a.T)
    b = rng.standard_normal(n) * 3.0
    x0 = rng.standard_normal(n)
    return a, b, x0


@pytest.mark.parametrize("method", ["Newton", "GD"])
@settings(max_examples=5)
@given(problem=_spd_problems())
def test_random_spd_quadratics_match_the_closed_form(method, problem):
    a, b, x0 = problem
    n = len(b)
    split = n // 2

    def tree(z):
        return {"head": jnp.asarray(z[:split]), "tail": jnp.asarray(z[split:])}

    res = jd.minimize(
        spd_quadratic,
        tree(x0),
        args=(jnp.asarray(a), jnp.asarray(b)),
        method=method,
        options={"gtol": 1e-9, "ftol": 0.0},
    )
    assert bool(res.success), res.message
    expected = np.linalg.solve(a, b)
    got = np.concatenate([np.asarray(res.x["head"]), np.asarray(res.x["tail"])])
    np.testing.assert_allclose(got, expected, atol=1e-7)
    np.testing.assert_allclose(float(res.fun), -0.5 * b @ expected, rtol=1e-9, atol=1e-12)
    if method == "Newton":
        assert int(res.nit) <= 2  # one full Newton step solves a quadratic
