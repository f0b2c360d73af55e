"""Objectives with domain edges and overflow (SPEC section 2): a line search backs away from
a trial where f or its gradient is not finite, and the solve goes on.

Each objective is solved by every line-search method (GD and Newton with backtracking,
L-BFGS, L-BFGS-B, with and without a box) and compared with a closed form or with scipy's
answer; the objectives count the non-finite evaluations they return on the host, so each
case is checked to really meet one. Fixed-step methods still end with ``NONFINITE`` and
the last finite iterate.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import jaxopt_dict as jd
from jaxopt_dict.methods.lbfgs import TWO_LOOP_MAX_N

LINE_SEARCH_METHODS = ["GD", "Newton", "L-BFGS", "L-BFGS-B"]

# Non-finite values each objective returned, by objective name.
NONFINITE_SEEN: collections.Counter = collections.Counter()


def _count(name: str, finite) -> None:
    if not bool(finite):
        NONFINITE_SEEN[name] += 1


def counting(name: str, fun):
    """``fun`` that also counts, on the host, the evaluations where it is not finite."""

    def counted(x, *args):
        value = fun(x, *args)
        jax.debug.callback(functools.partial(_count, name), jnp.isfinite(value))
        return value

    counted.__name__ = name
    return counted


# f = sum(a x - log x): minimum at 1/a; from 0.5 the first full steps land at x <= 0.
BARRIER_A = np.array([100.0, 40.0, 10.0])
# x - 2 sqrt(x): minimum at 1 (the dict-minimize report: [1.11, 3.14] before).
# exp(x) - 1000 x: minimum at log(1000); Newton's first step from 0 is 999 (exp overflows).
# Poisson regression: counts up to ~1e4, so the first Newton step from 0
# lands where exp(X w) overflows.
_RNG = np.random.default_rng(7)
POISSON_X = np.concatenate([np.ones((40, 1)), _RNG.normal(size=(40, 2))], axis=1)
POISSON_W = np.array([4.0, 1.5, -1.0])
POISSON_Y = _RNG.poisson(np.exp(POISSON_X @ POISSON_W)).astype(float)
# Jennrich-Sampson (Moré, Garbow & Hillstrom 1981, problem 6, m = 10): exp(10 x) overflows
# at trial points; minimum 124.362182355 at x1 = x2 = 0.2578252.
JS_I = np.arange(1.0, 11.0)


def barrier(x):
    return jnp.sum(BARRIER_A * x - jnp.log(x))


def sqrt_edge(x):
    return jnp.sum(x - 2.0 * jnp.sqrt(x))


def exp_overflow(x):
    return jnp.sum(jnp.exp(x) - 1000.0 * x)


def poisson(w):
    eta = POISSON_X @ w
    return jnp.sum(jnp.exp(eta) - POISSON_Y * eta)


def jennrich_sampson(x):
    return jnp.sum((2.0 + 2.0 * JS_I - (jnp.exp(JS_I * x[0]) + jnp.exp(JS_I * x[1]))) ** 2)


def _scipy_answer(fun, x0, bounds=None):
    """scipy's L-BFGS-B on the same objective, kept inside its domain by ``bounds``."""
    res = so.minimize(
        lambda v: float(fun(jnp.asarray(v))),
        np.asarray(x0, float),
        jac=lambda v: np.asarray(jax.grad(fun)(jnp.asarray(v))),
        method="L-BFGS-B",
        bounds=bounds,
        options={"gtol": 1e-10, "ftol": 1e-15},
    )
    assert res.success, res.message
    return res.x


# name -> (fun, x0, the answer, methods that must meet a non-finite trial)
CASES = {
    "barrier": (barrier, np.full(3, 0.5), 1.0 / BARRIER_A, LINE_SEARCH_METHODS),
    "sqrt_edge": (sqrt_edge, np.array([0.05, 9.0]), np.ones(2), LINE_SEARCH_METHODS),
    "exp_overflow": (exp_overflow, np.zeros(2), np.full(2, np.log(1000.0)), ["Newton"]),
    "poisson": (poisson, np.zeros(3), None, ["Newton"]),
    "jennrich_sampson": (
        jennrich_sampson,
        np.array([0.3, 0.4]),
        np.full(2, 0.2578252),
        ["L-BFGS", "L-BFGS-B"],
    ),
}


@functools.cache
def _answer(name: str) -> np.ndarray:
    """The closed form, or scipy's answer (Poisson, started inside the region where exp
    does not overflow)."""
    fun, _, answer, _ = CASES[name]
    return answer if answer is not None else _scipy_answer(fun, 0.9 * POISSON_W)


@functools.cache
def _solve(name: str, method: str):
    fun, x0, _, _ = CASES[name]
    key = f"{name}/{method}"
    options = {"gtol": 1e-8}
    if method == "GD":
        options["maxiter"] = 20000
    res = jd.minimize(counting(key, fun), jnp.asarray(x0), method=method, options=options)
    return res, NONFINITE_SEEN[key]


@pytest.mark.parametrize("method", LINE_SEARCH_METHODS)
@pytest.mark.parametrize("name", list(CASES))
def test_line_search_backs_away_from_nonfinite_trials(name, method):
    res, nonfinite = _solve(name, method)
    assert bool(res.success), (res.message, res.x)
    assert np.isfinite(float(res.fun))
    np.testing.assert_allclose(np.asarray(res.x), _answer(name), rtol=2e-5, atol=1e-7)
    if method in CASES[name][3]:
        assert nonfinite > 0, "the case no longer meets a non-finite trial"


def test_jennrich_sampson_beats_scipys_stop():
    """scipy's L-BFGS-B stops at f = 214.3 (FTOL) after the overflowing trials; the search
    that backs away reaches the minimum 124.362182355 (MGH 1981, problem 6)."""
    res, _ = _solve("jennrich_sampson", "L-BFGS-B")
    np.testing.assert_allclose(float(res.fun), 124.362182355, rtol=1e-9)


def test_bounded_searches_back_away_at_the_bound():
    """In the box [0, 1] the first projected steps reach x = 0, where log is -inf: the
    projected searches of L-BFGS-B and GD back away, never leaving the box. (From 0.3:
    from 0.5 GD's first halving lands 4e-17 from the bound, a point no projected
    gradient step recovers from in 20 halvings: LINESEARCH_FAILED, a scaling matter.)"""
    box = (np.zeros(3), np.ones(3))
    for method in ("L-BFGS-B", "GD"):
        key = f"barrier_box/{method}"
        options = {"gtol": 1e-8, "maxiter": 20000}
        res = jd.minimize(
            counting(key, barrier), jnp.full(3, 0.3), method=method, bounds=box, options=options
        )
        assert bool(res.success), res.message
        np.testing.assert_allclose(np.asarray(res.x), 1.0 / BARRIER_A, rtol=1e-4)
        assert NONFINITE_SEEN[key] > 0


def test_float32_barrier():
    """float32: the same backing away, to float32 accuracy (GD is left out: on this
    conditioning its decreases fall below one ulp of f, an FTOL stop, before 1e-3)."""
    x0 = jnp.full(3, 0.5, jnp.float32)
    for method in ("L-BFGS", "L-BFGS-B", "Newton"):
        res = jd.minimize(barrier, x0, method=method, options={"gtol": 1e-3, "maxiter": 5000})
        assert res.x.dtype == jnp.float32
        assert bool(res.success), (method, res.message)
        np.testing.assert_allclose(np.asarray(res.x), 1.0 / BARRIER_A, rtol=1e-3)


def test_nonfinite_at_x0_ends_the_solve():
    """Nothing to back away to: f(x0) not finite ends every method at nit 0."""
    for method in LINE_SEARCH_METHODS:
        res = jd.minimize(barrier, jnp.array([0.5, -1.0, 0.5]), method=method)
        assert int(res.status) == jd.Status.NONFINITE and int(res.nit) == 0, method
        np.testing.assert_array_equal(np.asarray(res.x), [0.5, -1.0, 0.5])


def test_search_that_finds_no_finite_trial_ends_nonfinite():
    """f finite only at x0's exact coordinates (NaN anywhere else): every trial is
    non-finite, the search runs out of its budget, and the solve ends NONFINITE at x0."""

    def only_at_start(x):
        return jnp.where(jnp.all(x == 0.5), jnp.sum(x**2), jnp.nan)

    for method in LINE_SEARCH_METHODS:
        res = jd.minimize(only_at_start, jnp.full(2, 0.5), method=method, options={"maxls": 5})
        assert int(res.status) == jd.Status.NONFINITE, (method, res.message)
        np.testing.assert_array_equal(np.asarray(res.x), [0.5, 0.5])
        assert np.isfinite(float(res.fun))


@pytest.mark.parametrize(
    "method, options",
    [
        ("GD", {"learning_rate": 0.01}),
        ("momentum", {"learning_rate": 0.01}),
        ("Adam", {"learning_rate": 0.6}),
        ("Newton", {"learning_rate": 1.0}),
    ],
)
def test_fixed_step_methods_end_nonfinite_with_the_last_finite_iterate(method, options):
    """No line search to back away with: the first non-finite iterate ends the solve,
    and ``res.x`` is the iterate before it (what a run stopped one step earlier returns)."""
    fun, x0 = (exp_overflow, jnp.zeros(2)) if method == "Newton" else (barrier, jnp.full(3, 0.5))
    res = jd.minimize(fun, x0, method=method, options={**options, "gtol": 0.0})
    assert int(res.status) == jd.Status.NONFINITE, res.message
    assert not bool(res.success)
    assert np.all(np.isfinite(np.asarray(res.x))) and np.isfinite(float(res.fun))
    before = jd.minimize(fun, x0, method=method, options={**options, "maxiter": int(res.nit)})
    np.testing.assert_array_equal(np.asarray(res.x), np.asarray(before.x))


@pytest.mark.parametrize("n", [2, TWO_LOOP_MAX_N + 4])  # the two-loop form, the compact form
def test_a_value_that_overflows_in_x_dtype_is_rejected(n):
    """``fun`` returns float64 for a float32 x; past x[0] = 2 its value, -1e300, is
    -inf in x's dtype. The Wolfe test that skips the interpolation accepted it (single
    solves stopped there with success); the interpolation rejects it, as vmap did."""

    def cliff(x):
        drop = jnp.where(x[0] > 2.0, -1e300, 0.0)
        return jnp.sum((x - 3.0) ** 2).astype(jnp.float64) + drop

    x0 = jnp.zeros(n, jnp.float32)
    single = jd.minimize(cliff, x0, method="L-BFGS")
    batch = jax.vmap(lambda x: jd.minimize(cliff, x, method="L-BFGS"))(jnp.stack([x0, x0]))
    assert not bool(single.success) and np.isfinite(single.fun), single
    assert float(single.x[0]) <= 2.0, single.x
    assert int(single.status) == int(batch.status[0]), (single.status, batch.status)


@pytest.mark.parametrize("n", [2, TWO_LOOP_MAX_N + 4])  # the two-loop form, the compact form
def test_float32_gradient_past_the_range_of_its_square_is_never_a_success(n):
    """float32, gradient entries of 2e19: ``|g|^2`` overflows, and the L-BFGS forms cannot
    take a first step (``docs/faq.md``, "Can a float32 objective be too steep"). Whatever
    they return is not a success at a point that is not the minimum; GD and Newton, which
    form no such products, solve it."""

    def steep(x):
        return 1e19 * jnp.sum((x - 1.0) ** 2)

    x0 = jnp.zeros(n, jnp.float32)
    for method in ("L-BFGS", "L-BFGS-B", "GD", "Newton"):
        res = jd.minimize(steep, x0, method=method)
        assert res.x.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(res.x)))
        solved = np.allclose(np.asarray(res.x), 1.0, rtol=1e-5)
        assert solved or not bool(res.success), (method, res.message, res.x)
        if method in ("GD", "Newton"):
            assert bool(res.success) and solved, (method, res.message)
