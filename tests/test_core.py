"""Core contract (SPEC sections 1, 2, 3 and 5) for GD, momentum, Adam and Newton.

Methods x problems from the zoo in ``problems.py``; the expensive variants (jit, disp,
callback, trace) run on a small smoke subset only. x64 is enabled for this module; float32
cases pass explicit float32 arrays.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from problems import (
    BOUNDED_METHODS,
    COSH,
    COUPLED,
    FIXED_STEP_METHODS,
    METHODS,
    PROBLEMS,
    QUAD_MIXED,
    Pair,
    mixed_dtypes,
    primitive_counts,
    quad_mixed,
    quad_mixed_args,
)

import jaxopt_dict as jd
from jaxopt_dict._linesearch import Backtracking, backtracking_advance

GTOL = 1e-5  # SPEC section 2 default


def inf_norm(tree) -> float:
    return max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(tree))


def solve(problem, method_id, dtype=jnp.float64, *, options=None, **kwargs):
    method, base = METHODS[method_id]
    return jd.minimize(
        problem.fun, problem.x0(dtype), method=method, options={**base, **(options or {})}, **kwargs
    )


def atol_for(method_id: str, dtype) -> float:
    # gtol=1e-5 with Hessian eigenvalues >= 1 puts x within 1e-5 of the answer; GD's line
    # search may stop on scipy's ftol rule instead, and in float32 that rule is floored at
    # float32's epsilon (relative decrease 1.2e-7 of f), a few 1e-4 away in x.
    if method_id == "GD-linesearch":
        return 2e-3 if dtype == jnp.float32 else 1e-4
    return 1e-4


def assert_same_structure_shapes_dtypes(tree, like):
    assert jax.tree.structure(tree) == jax.tree.structure(like)
    chex.assert_trees_all_equal_shapes_and_dtypes(tree, like)


# ---------------------------------------------------------------------------------------
# Convergence (SPEC 5) and the result (SPEC 2)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method_id", list(METHODS))
@pytest.mark.parametrize("problem_id", list(PROBLEMS))
def test_converges_to_known_minimizer(problem_id, method_id):
    problem = PROBLEMS[problem_id]
    res = solve(problem, method_id)
    assert bool(res.success), res.message
    assert_same_structure_shapes_dtypes(res.x, problem.x0())  # float64 leaves
    assert int(res.status) in (jd.Status.CONVERGED, jd.Status.FTOL, jd.Status.XTOL)
    chex.assert_trees_all_close(res.x, problem.xstar(), atol=atol_for(method_id, jnp.float64))
    assert float(res.fun) == pytest.approx(problem.fstar, abs=1e-8)
    # res.fun and res.jac belong to res.x.
    f, g = jax.value_and_grad(problem.fun)(res.x)
    np.testing.assert_allclose(float(res.fun), float(f), rtol=1e-12, atol=1e-15)
    chex.assert_trees_all_close(res.jac, g, rtol=1e-10, atol=1e-14)
    if int(res.status) == jd.Status.CONVERGED:
        assert inf_norm(res.jac) <= GTOL
    # Every iteration costs at least one evaluation; fixed steps exactly one.
    assert int(res.nfev) >= int(res.nit) + 1
    if method_id in FIXED_STEP_METHODS:
        assert int(res.nfev) == int(res.nit) + 1
    assert int(res.njev) == int(res.nfev)


@pytest.mark.parametrize("problem_id", list(PROBLEMS))
def test_zoo_numpy_twin_and_scipy_agree_with_known_minimizer(problem_id):
    """The zoo itself: the NumPy twin is the JAX objective, and scipy finds the answer."""
    problem = PROBLEMS[problem_id]
    x0 = problem.x0()
    f_np, g_np = problem.np_fun(jax.tree.map(np.asarray, x0))
    f, g = jax.value_and_grad(problem.fun)(x0)
    np.testing.assert_allclose(f_np, float(f), rtol=1e-12)
    chex.assert_trees_all_close(g_np, jax.tree.map(np.asarray, g), rtol=1e-12)
    scipy_res, unravel = problem.scipy_minimize(options={"gtol": 1e-10, "ftol": 1e-15})
    # (scipy may end with ABNORMAL once f is exactly f*; the point is what matters here.)
    assert scipy_res.fun == pytest.approx(problem.fstar, abs=1e-12)
    chex.assert_trees_all_close(
        unravel(scipy_res.x), jax.tree.map(np.asarray, problem.xstar()), atol=1e-5
    )
    ours = solve(problem, "Newton-linesearch")
    np.testing.assert_allclose(float(ours.fun), scipy_res.fun, atol=1e-10)


DTYPE_KINDS = {
    "float32": jnp.float32,
    "mixed": mixed_dtypes,  # float32 and float64 leaves in one x0
}


# float64 x every method is covered by the convergence test; float32 runs every method,
# mixed leaves a subset (one of each family) to keep compile time down.
STRUCTURE_CASES = [("float32", m) for m in METHODS] + [
    ("mixed", m) for m in ("GD-linesearch", "Adam", "Newton-linesearch")
]


@pytest.mark.parametrize(("dtype_kind", "method_id"), STRUCTURE_CASES)
def test_result_keeps_structure_shapes_and_dtypes(dtype_kind, method_id):
    dtype = DTYPE_KINDS[dtype_kind]
    x0 = QUAD_MIXED.x0(dtype)
    if dtype_kind == "mixed":
        assert {leaf.dtype for leaf in jax.tree.leaves(x0)} == {
            np.dtype("float32"),
            np.dtype("float64"),
        }
    res = solve(QUAD_MIXED, method_id, dtype)
    assert_same_structure_shapes_dtypes(res.x, x0)
    assert_same_structure_shapes_dtypes(res.jac, x0)
    assert isinstance(res.x["pair"], Pair)
    assert isinstance(res.x["nested"], dict)
    assert res.fun.shape == ()
    assert res.fun.dtype == jax.eval_shape(quad_mixed, x0).dtype
    assert bool(res.success), res.message
    atol = atol_for(method_id, jnp.float32)  # float32 leaves in both kinds
    chex.assert_trees_all_close(
        jax.tree.map(lambda v: v.astype(jnp.float64), res.x), QUAD_MIXED.xstar(), atol=atol
    )


def test_ordered_dict_and_tuple_structures_survive():
    res = solve(COSH, "GD-linesearch")
    x0 = COSH.x0()
    assert isinstance(res.x, OrderedDict)
    assert list(res.x) == list(x0) == ["b", "a"]  # insertion order, not sorted
    assert_same_structure_shapes_dtypes(res.x, x0)
    res = solve(COUPLED, "Newton-linesearch")
    assert type(res.x) is tuple
    assert_same_structure_shapes_dtypes(res.x, COUPLED.x0())


def test_result_fields_and_dtypes():
    res = solve(QUAD_MIXED, "GD-fixed")
    assert isinstance(res, jd.OptimizeResult)
    for name in ("x", "fun", "jac", "nit", "nfev", "njev", "status", "success"):
        assert name in res._fields
        assert res[name] is getattr(res, name)  # scipy's OptimizeResult is a dict
    assert res.status.dtype == jnp.int32 and res.status.shape == ()
    assert res.success.dtype == jnp.bool_ and res.success.shape == ()
    for name in ("nit", "nfev", "njev"):
        assert jnp.issubdtype(getattr(res, name).dtype, jnp.integer), name
    assert res.trace is None
    assert isinstance(res.message, str)
    assert res.message == jd.Status(int(res.status)).message
    assert bool(res.success) == jd.Status(int(res.status)).success
    # A registered pytree: flattens to arrays and rebuilds.
    leaves, treedef = jax.tree.flatten(res)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert isinstance(jax.tree.unflatten(treedef, leaves), jd.OptimizeResult)


def test_status_enum():
    expected = {
        "CONVERGED": (0, True),
        "MAX_ITER": (1, False),
        "LINESEARCH_FAILED": (2, False),
        "NONFINITE": (3, False),
        "FTOL": (4, True),
        "XTOL": (5, True),  # FTOL and XTOL: success only after progress (res.success)
        "CALLBACK_STOP": (6, False),
    }
    assert issubclass(jd.Status, int)
    assert {s.name: (int(s), s.success) for s in jd.Status} == expected
    messages = [s.message for s in jd.Status]
    assert all(isinstance(m, str) and m for m in messages)
    assert len(set(messages)) == len(messages)
    assert "gtol" in jd.Status.CONVERGED.message
    assert "ftol" in jd.Status.FTOL.message
    assert "xtol" in jd.Status.XTOL.message
    assert "StopIteration" in jd.Status.CALLBACK_STOP.message


def test_method_names_are_case_insensitive():
    reference = solve(QUAD_MIXED, "GD-fixed")
    for name in ("gd", "Gd", "GD"):
        res = jd.minimize(quad_mixed, QUAD_MIXED.x0(), method=name, options={"learning_rate": 0.2})
        assert int(res.nit) == int(reference.nit)
        chex.assert_trees_all_close(res.x, reference.x, rtol=0, atol=0)


def _quad_mixed_value_and_grad(x):
    return jax.value_and_grad(quad_mixed)(x)


def _quad_mixed_grad(x):
    return jax.grad(quad_mixed)(x)


@pytest.mark.parametrize("jac_kind", ["jac=True", "jac=callable"])
def test_jac_true_and_callable_match_autodiff(jac_kind):
    reference = solve(QUAD_MIXED, "GD-fixed")
    if jac_kind == "jac=True":
        fun, jac = _quad_mixed_value_and_grad, True
    else:
        fun, jac = quad_mixed, _quad_mixed_grad
    res = jd.minimize(fun, QUAD_MIXED.x0(), method="GD", jac=jac, options={"learning_rate": 0.2})
    assert int(res.nit) == int(reference.nit)
    chex.assert_trees_all_close(res.x, reference.x, rtol=1e-12)
    chex.assert_trees_all_close(res.jac, reference.jac, rtol=1e-9, atol=1e-15)


# ---------------------------------------------------------------------------------------
# The update rules (SPEC 5), checked step by step against NumPy
# ---------------------------------------------------------------------------------------


def _np_flat_grad(problem, flat, unravel):
    _, g = problem.np_fun(jax.tree.map(np.asarray, unravel(flat)))
    return np.asarray(ravel_pytree(jax.tree.map(np.asarray, g))[0])


def _trace_rows(res, rows):
    flat = [ravel_pytree(jax.tree.map(lambda a, k=k: a[k], res.trace.x))[0] for k in rows]
    return [np.asarray(v) for v in flat]


def test_momentum_is_the_tf_heavy_ball_rule():
    # TF core-API: change = lr * g + momentum * change_prev; x -= change.
    lr, p = 0.1, 0.5
    x0 = COSH.x0()
    res = jd.minimize(
        COSH.fun,
        x0,
        method="momentum",
        options={"learning_rate": lr, "momentum": p, "maxiter": 3, "gtol": 0.0, "trace": True},
    )
    flat, unravel = ravel_pytree(x0)
    x, change = np.asarray(flat), np.zeros_like(flat)
    expected = []
    for _ in range(3):
        change = lr * _np_flat_grad(COSH, x, unravel) + p * change
        x = x - change
        expected.append(x)
    np.testing.assert_allclose(_trace_rows(res, [1, 2, 3]), expected, rtol=1e-12)


def test_adam_is_the_bias_corrected_rule():
    # optax / TF: m, v moving averages; m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t);
    # x -= lr * m_hat / (sqrt(v_hat) + eps).
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    x0 = COSH.x0()
    res = jd.minimize(
        COSH.fun,
        x0,
        method="Adam",
        options={"learning_rate": lr, "maxiter": 3, "gtol": 0.0, "trace": True},
    )
    flat, unravel = ravel_pytree(x0)
    x = np.asarray(flat)
    m, v = np.zeros_like(x), np.zeros_like(x)
    expected = []
    for t in range(1, 4):
        g = _np_flat_grad(COSH, x, unravel)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        expected.append(x)
    np.testing.assert_allclose(_trace_rows(res, [1, 2, 3]), expected, rtol=1e-10)
    # Bias correction makes the first step lr * sign(g) (here no gradient entry is zero).
    np.testing.assert_allclose(np.abs(expected[0] - np.asarray(flat)), lr, rtol=1e-6)


def double_well(x):
    """Minima at x = +-1 (y = 0), a saddle at x = 0 where the Hessian is indefinite."""
    return 0.25 * x[0] ** 4 - 0.5 * x[0] ** 2 + x[1] ** 2


def test_newton_is_safeguarded_on_an_indefinite_hessian():
    # At x = 0.1 the Hessian has a negative eigenvalue: a raw Newton step would head for
    # the saddle at 0; the safeguarded one descends into the minimum at x = 1.
    res = jd.minimize(double_well, jnp.asarray([0.1, 1.0]), method="Newton")
    assert int(res.status) == jd.Status.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.x), [1.0, 0.0], atol=1e-5)
    assert float(res.fun) == pytest.approx(-0.25)


# Backtracking halves a rejected step, but cuts it by 10 when a quadratic fit says it
# overshot more than 10x, and follows the fit (within [0.1, 0.5]) from the third rejection
# in a row. Each of these hit LINESEARCH_FAILED at iteration 0 with 20 plain halvings,
# where scipy's trust-exact (Newton) converges.
def _log_cosh_at_one(x):
    return jnp.sum(jnp.logaddexp(x - 1.0, 1.0 - x))


def _quartic_well(x):
    return jnp.sum(x**4 - x**2)


_TINY_SCALE = 1e-7


def _tiny_scale_quadratic(x):
    return jnp.sum((x / _TINY_SCALE - 1.0) ** 2 * jnp.asarray([1.0, 3.0]))


@pytest.mark.parametrize(
    ("fun", "x0", "method", "options", "xstar"),
    [
        # Hessian ~ 4e-9 at x = 11: the Newton step is ~1e8 long.
        (_log_cosh_at_one, [11.0], "Newton", {}, [1.0]),
        # Hessian exactly 0 at the inflection point 1/sqrt(6).
        (_quartic_well, [1 / np.sqrt(6.0)], "Newton", {}, [1 / np.sqrt(2.0)]),
        # The first GD trial moves 1 in the inf-norm, 1e7 times too far.
        (
            _tiny_scale_quadratic,
            [-1.2 * _TINY_SCALE, _TINY_SCALE],
            "GD",
            {"gtol": 1e-5 / _TINY_SCALE},
            [_TINY_SCALE, _TINY_SCALE],
        ),
    ],
    ids=["newton-flat", "newton-singular", "gd-tiny-scale"],
)
def test_backtracking_recovers_from_a_far_too_long_first_step(fun, x0, method, options, xstar):
    res = jd.minimize(fun, jnp.asarray(x0), method=method, options=options)
    assert bool(res.success), res.message
    np.testing.assert_allclose(res.x, xstar, rtol=1e-5)


@pytest.mark.parametrize(
    ("minimizer", "trials_before", "expected"),
    [
        (0.3, 0, 0.5),  # a mild overshoot: halved (longer accepted steps, fewer evaluations)
        (0.01, 0, 0.1),  # the model says 100x too long: cut by 10
        (0.3, 2, 0.3),  # the third rejection in a row: the model's minimizer
        (0.01, 2, 0.1),  # ... kept within [0.1, 0.5]
        (0.45, 5, 0.45),
    ],
)
def test_backtracking_shrink_rule(minimizer, trials_before, expected):
    # Along the ray x = t (from x = 0, f(0) = 0, g(0) = -1), the trial t = 1 is rejected
    # with f(1) = 1 / (2 m) - 1: the quadratic through these has its minimum at t = m.
    search = Backtracking(
        x=jnp.zeros(1),
        f=jnp.asarray(0.0),
        g=-jnp.ones(1),
        direction=jnp.ones(1),
        step_size=jnp.asarray(1.0),
        trials=jnp.asarray(trials_before, jnp.int32),
        fresh=jnp.asarray(False),
    )
    trial = jd.Evaluation(jnp.ones(1), jnp.asarray(1 / (2 * minimizer) - 1), jnp.zeros(1))
    search, accepted, failed = backtracking_advance(search, trial, maxls=20)
    assert not bool(accepted) and not bool(failed)
    np.testing.assert_allclose(float(search.step_size), expected, rtol=1e-12)


def _power_one_and_a_half(x):
    return jnp.sum(x**2) + jnp.sum(jnp.abs(x) ** 1.5)


def test_newton_falls_back_to_steepest_descent_where_the_hessian_is_not_finite():
    # At x = (0, 1), f and g are finite but d2/dx2 |x|^1.5 is infinite: the Newton
    # direction is NaN, and the solve ended NONFINITE at nit 0. Steepest descent instead.
    res = jd.minimize(_power_one_and_a_half, jnp.asarray([0.0, 1.0]), method="Newton")
    assert bool(res.success), res.message
    assert int(res.nit) > 0
    np.testing.assert_allclose(res.x, [0.0, 0.0], atol=1e-6)


# ---------------------------------------------------------------------------------------
# jit (SPEC 3): smoke subset
# ---------------------------------------------------------------------------------------

SMOKE = ["GD-linesearch", "Adam", "Newton-linesearch"]


@pytest.mark.parametrize("method_id", SMOKE)
def test_jit_and_nojit_agree(method_id):
    method, options = METHODS[method_id]
    x0 = QUAD_MIXED.x0()
    eager = jd.minimize(quad_mixed, x0, method=method, options=options)
    jitted = jax.jit(lambda x: jd.minimize(quad_mixed, x, method=method, options=options))(x0)
    assert isinstance(jitted, jd.OptimizeResult)
    chex.assert_trees_all_close(jitted.x, eager.x, rtol=1e-9, atol=1e-12)
    chex.assert_trees_all_close(jitted.jac, eager.jac, rtol=1e-7, atol=1e-12)
    chex.assert_trees_all_close(jitted.fun, eager.fun, rtol=1e-9, atol=1e-15)
    for name in ("nit", "nfev", "status", "success"):
        assert int(getattr(jitted, name)) == int(getattr(eager, name)), name


@pytest.mark.parametrize("method_id", ["GD-fixed", "Newton-linesearch"])
def test_jit_with_traced_x0_and_args(method_id):
    method, options = METHODS[method_id]

    @jax.jit
    def run(x0, target):
        return jd.minimize(quad_mixed_args, x0, args=(target,), method=method, options=options)

    x0 = QUAD_MIXED.x0()
    target_a = QUAD_MIXED.xstar()
    target_b = jax.tree.map(lambda t: 0.5 - 2.0 * t, target_a)
    for target in (target_a, target_b):
        res = run(x0, target)  # one compiled program, two different targets
        assert bool(res.success), res.message
        chex.assert_trees_all_close(res.x, target, atol=1e-4)
        assert_same_structure_shapes_dtypes(res.x, x0)
    # A traced x0 really is used: start elsewhere, same answer, different path.
    far = jax.tree.map(lambda v: v + 1.0, x0)
    res_far = run(far, target_a)
    chex.assert_trees_all_close(res_far.x, target_a, atol=1e-4)


def test_jit_with_traced_hyperparameters():
    @jax.jit
    def run(learning_rate, gtol):
        return jd.minimize(
            quad_mixed,
            QUAD_MIXED.x0(),
            method="GD",
            options={"learning_rate": learning_rate, "gtol": gtol},
        )

    slow = run(jnp.asarray(0.1), jnp.asarray(1e-6))
    fast = run(jnp.asarray(0.3), jnp.asarray(1e-3))
    for res in (slow, fast):
        assert bool(res.success), res.message
    assert inf_norm(fast.jac) <= 1e-3 and inf_norm(slow.jac) <= 1e-6
    assert int(fast.nit) < int(slow.nit)
    eager = jd.minimize(
        quad_mixed, QUAD_MIXED.x0(), method="GD", options={"learning_rate": 0.1, "gtol": 1e-6}
    )
    assert int(eager.nit) == int(slow.nit)


# ---------------------------------------------------------------------------------------
# Bounds by projection (SPEC 1): every evaluated point inside the box
# ---------------------------------------------------------------------------------------

_EVALUATED: list = []


def _record_point(x):
    _EVALUATED.append(jax.tree.map(np.asarray, x))


def quad_mixed_recorded(x):
    """quad_mixed that reports every point it is evaluated at to the host."""
    jax.debug.callback(_record_point, x)
    return quad_mixed(x)


def cosh_recorded(x):
    jax.debug.callback(_record_point, x)
    return COSH.fun(x)


def _evaluated_points(res):
    jax.effects_barrier()
    points = list(_EVALUATED)
    assert len(points) == int(res.nfev), "the recorder must see every evaluation"
    return points


def _assert_inside(point, lower, upper):
    for x, lo, hi in zip(jax.tree.leaves(point), jax.tree.leaves(lower), jax.tree.leaves(upper)):
        assert np.all(x >= np.asarray(lo)) and np.all(x <= np.asarray(hi)), (x, lo, hi)


BOUNDS_CASES = [pytest.param(m, jnp.float64, id=f"float64-{m}") for m in BOUNDED_METHODS] + [
    pytest.param(m, jnp.float32, id=f"float32-{m}") for m in ("GD-linesearch", "Adam")
]


@pytest.mark.parametrize(("method_id", "dtype"), BOUNDS_CASES)
def test_bounds_every_evaluated_point_inside_the_box(method_id, dtype):
    method, options = METHODS[method_id]
    lower, upper = QUAD_MIXED.bounds(dtype)
    x0 = QUAD_MIXED.x0(dtype)
    assert float(x0["s"]) > float(upper["s"])  # x0 starts outside the box
    _EVALUATED.clear()
    res = jd.minimize(
        quad_mixed_recorded, x0, method=method, options=options, bounds=(lower, upper)
    )
    points = _evaluated_points(res)
    for point in points:
        _assert_inside(point, lower, upper)
    # x0 is projected onto the box before the first evaluation (as scipy does).
    chex.assert_trees_all_close(
        points[0], jax.tree.map(lambda v, lo, hi: np.clip(v, lo, hi), x0, lower, upper)
    )
    assert bool(res.success), res.message
    assert_same_structure_shapes_dtypes(res.x, x0)
    atol = 2e-3 if dtype == jnp.float32 else 1e-4
    chex.assert_trees_all_close(res.x, QUAD_MIXED.xstar_bounded(dtype), atol=atol)
    # The reported gradient is the plain gradient at res.x (active bounds included).
    chex.assert_trees_all_close(res.jac, jax.grad(quad_mixed)(res.x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method_id", ["GD-linesearch", "Adam"])
@pytest.mark.parametrize(
    "bounds", [(-0.5, 0.5), (None, 0.5), (-0.5, None)], ids=["scalar", "upper-only", "lower-only"]
)
def test_scalar_and_one_sided_bounds(method_id, bounds):
    method, options = METHODS[method_id]
    lo = -np.inf if bounds[0] is None else bounds[0]
    hi = np.inf if bounds[1] is None else bounds[1]
    _EVALUATED.clear()
    res = jd.minimize(cosh_recorded, COSH.x0(), method=method, options=options, bounds=bounds)
    for point in _evaluated_points(res):
        for leaf in jax.tree.leaves(point):
            assert np.all(leaf >= lo) and np.all(leaf <= hi)
    assert bool(res.success), res.message
    expected = jax.tree.map(lambda t: np.clip(t, lo, hi), COSH.xstar())
    chex.assert_trees_all_close(res.x, expected, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Options (SPEC 1, 2)
# ---------------------------------------------------------------------------------------


def test_method_none_is_the_default_l_bfgs_b():
    # scipy.optimize.minimize(method=None) picks its default; wrappers forward None.
    x0 = QUAD_MIXED.x0()
    default = jd.minimize(quad_mixed, x0)
    via_none = jd.minimize(quad_mixed, x0, method=None)
    named = jd.minimize(quad_mixed, x0, method="l-bfgs-b")
    for res in (via_none, named):
        assert (int(res.nit), int(res.nfev)) == (int(default.nit), int(default.nfev))
        chex.assert_trees_all_close(res.x, default.x, rtol=0, atol=0)


def test_structural_option_as_a_concrete_jax_scalar():
    # jnp.asarray(3) is as concrete as 3; only a traced maxiter cannot set the loop's size.
    method, options = METHODS["GD-fixed"]
    x0 = QUAD_MIXED.x0()
    res = jd.minimize(quad_mixed, x0, method=method, options={**options, "maxiter": 3})
    via_array = jd.minimize(
        quad_mixed, x0, method=method, options={**options, "maxiter": jnp.asarray(3)}
    )
    assert int(res.nit) == int(via_array.nit) == 3
    chex.assert_trees_all_close(via_array.x, res.x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="maxiter"):
        jax.jit(
            lambda m: jd.minimize(quad_mixed, x0, method=method, options={**options, "maxiter": m})
        )(3)


def test_tol_sets_gtol():
    x0 = QUAD_MIXED.x0()
    via_tol = jd.minimize(quad_mixed, x0, method="momentum", tol=1e-2)
    via_options = jd.minimize(quad_mixed, x0, method="momentum", options={"gtol": 1e-2})
    tight = jd.minimize(quad_mixed, x0, method="momentum", tol=1e-7)
    assert int(via_tol.status) == jd.Status.CONVERGED
    assert inf_norm(via_tol.jac) <= 1e-2
    assert int(via_tol.nit) == int(via_options.nit)
    chex.assert_trees_all_close(via_tol.x, via_options.x, rtol=0, atol=0)
    assert int(tight.nit) > int(via_tol.nit)
    assert inf_norm(tight.jac) <= 1e-7


def test_tol_sets_ftol_for_line_search_methods_and_options_take_precedence():
    x0 = QUAD_MIXED.x0()
    via_tol = jd.minimize(quad_mixed, x0, method="GD", tol=1e-3)
    via_options = jd.minimize(quad_mixed, x0, method="GD", options={"gtol": 1e-3, "ftol": 1e-3})
    assert int(via_tol.nit) == int(via_options.nit)
    assert int(via_tol.status) == int(via_options.status)
    chex.assert_trees_all_close(via_tol.x, via_options.x, rtol=0, atol=0)
    # As scipy: tol fills in gtol/ftol only where options do not give them.
    explicit = jd.minimize(
        quad_mixed, x0, method="GD", tol=1e-3, options={"gtol": 0.0, "ftol": 0.0}
    )
    assert int(explicit.nit) > int(via_tol.nit)


def _takes_ftol(method_id) -> bool:
    method = METHODS[method_id][0]
    return any(spec.name == "ftol" for spec in jd.option_specs(jd.methods.resolve_method(method)))


# momentum shares the optax-rule path with GD-fixed and Adam.
@pytest.mark.parametrize("method_id", [m for m in METHODS if m != "momentum"])
def test_maxiter_k_gives_exactly_k_iterations(method_id):
    method, options = METHODS[method_id]
    options = {**options, "maxiter": 3, "gtol": 0.0}
    if _takes_ftol(method_id):
        options["ftol"] = 0.0
    x0 = COSH.x0()
    res = jd.minimize(COSH.fun, x0, method=method, options=options)
    assert int(res.nit) == 3
    assert int(res.status) == jd.Status.MAX_ITER
    assert not bool(res.success)
    if method_id in FIXED_STEP_METHODS:
        assert int(res.nfev) == 4
    assert float(res.fun) < float(COSH.fun(x0))


@pytest.mark.parametrize("method_id", ["GD-fixed", "Newton-linesearch"])
def test_maxiter_zero_returns_x0(method_id):
    method, options = METHODS[method_id]
    x0 = QUAD_MIXED.x0()
    res = jd.minimize(quad_mixed, x0, method=method, options={**options, "maxiter": 0})
    assert int(res.nit) == 0 and int(res.nfev) == 1
    assert int(res.status) == jd.Status.MAX_ITER
    chex.assert_trees_all_close(res.x, x0, rtol=0, atol=0)
    np.testing.assert_allclose(float(res.fun), float(quad_mixed(x0)))


@pytest.mark.parametrize(
    "method_id, maxiter",
    [(m, None) for m in [*METHODS, "L-BFGS", "L-BFGS-B", "optax"]]
    + [(m, 0) for m in ["momentum", "Adam", "optax"]],
)
def test_x0_already_optimal_converges_with_no_iteration(method_id, maxiter):
    # Momentum methods ask for gtol at two consecutive iterates, but at x0 they have not
    # moved yet: one small gradient there ends the solve, as for every method.
    method, options = METHODS.get(method_id, (method_id, {}))
    if method_id == "optax":
        method = OPTAX_ADAM
    if maxiter is not None:
        options = {**options, "maxiter": maxiter}
    xstar = QUAD_MIXED.xstar()
    res = jd.minimize(quad_mixed, xstar, method=method, options=options)
    assert int(res.status) == jd.Status.CONVERGED, res.message
    assert int(res.nit) == 0 and int(res.nfev) == 1
    chex.assert_trees_all_close(res.x, xstar, rtol=0, atol=0)


@pytest.mark.parametrize("method_id", ["GD-fixed", "GD-linesearch", "Newton-linesearch"])
def test_maxfun(method_id):
    method, options = METHODS[method_id]
    free = jd.minimize(COSH.fun, COSH.x0(), method=method, options=options)
    assert int(free.nfev) > 3
    res = jd.minimize(COSH.fun, COSH.x0(), method=method, options={**options, "maxfun": 3})
    assert int(res.nfev) == 3
    assert int(res.status) == jd.Status.MAX_ITER
    assert not bool(res.success)
    assert int(res.nit) <= 2


def _trace_options(method_id, **extra):
    method, options = METHODS[method_id]
    return method, {**options, "trace": True, "maxiter": 200, **extra}


def test_xtol_stops_on_a_small_step():
    method, options = _trace_options("GD-fixed")
    x0 = QUAD_MIXED.x0()
    baseline = jd.minimize(quad_mixed, x0, method=method, options=options)
    res = jd.minimize(quad_mixed, x0, method=method, options={**options, "xtol": 1e-3})
    assert int(res.status) == jd.Status.XTOL and bool(res.success), res.message
    assert int(res.nit) < int(baseline.nit)
    n = int(res.nit)
    path = [np.asarray(leaf) for leaf in jax.tree.leaves(res.trace.x)]
    steps = [max(np.max(np.abs(a[k + 1] - a[k])) for a in path) for k in range(n)]
    assert steps[-1] <= 1e-3
    assert all(step > 1e-3 for step in steps[:-1])


def _relative_reduction(f_old, f_new):
    return (f_old - f_new) / max(abs(f_old), abs(f_new), 1.0)


@pytest.mark.parametrize("method_id", ["GD-linesearch", "Newton-linesearch"])
def test_ftol_stops_line_search_methods_by_scipys_rule(method_id):
    method, options = _trace_options(method_id, gtol=0.0, ftol=1e-3)
    res = jd.minimize(cosh_tree_far, COSH.x0(), method=method, options=options)
    assert int(res.status) == jd.Status.FTOL and bool(res.success), res.message
    fun = np.asarray(res.trace.fun)
    n = int(res.nit)
    assert n >= 2
    assert _relative_reduction(fun[n - 1], fun[n]) <= 1e-3
    assert all(_relative_reduction(fun[k], fun[k + 1]) > 1e-3 for k in range(n - 1))


def cosh_tree_far(x):
    """COSH shifted by 1: f* = 1 > 0, so the relative rule has something to measure."""
    return COSH.fun(x) + 1.0


def test_ftol_is_not_used_by_fixed_step_gd():
    method, options = METHODS["GD-fixed"]
    x0 = QUAD_MIXED.x0()
    default = jd.minimize(quad_mixed, x0, method=method, options=options)
    loose = jd.minimize(quad_mixed, x0, method=method, options={**options, "ftol": 0.5})
    assert int(loose.status) == int(default.status) == jd.Status.CONVERGED
    assert int(loose.nit) == int(default.nit)


@pytest.mark.parametrize("method", ["momentum", "Adam"])
def test_ftol_is_not_an_option_of_momentum_and_adam(method):
    with pytest.raises(TypeError, match="ftol"):
        jd.minimize(quad_mixed, QUAD_MIXED.x0(), method=method, options={"ftol": 1e-3})


# ---------------------------------------------------------------------------------------
# disp, callback, trace (SPEC 1): under jit
# ---------------------------------------------------------------------------------------

# Under vmap, each line starts with the problem's index ("problem 3  iter ...").
_ITER_LINE = re.compile(r"^\s*(?:problem\s+\d+\s+)?iter\s+(\d+)\b")


@pytest.mark.parametrize("method_id", ["GD-fixed", "GD-linesearch"])
def test_disp_prints_one_line_per_iteration_under_jit(method_id, capsys):
    method, options = METHODS[method_id]
    options = {**options, "disp": True, "maxiter": 5, "gtol": 0.0}
    capsys.readouterr()
    res = jax.jit(lambda x: jd.minimize(COSH.fun, x, method=method, options=options))(COSH.x0())
    jax.effects_barrier()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    iters = [int(m.group(1)) for m in map(_ITER_LINE.match, lines) if m]
    assert int(res.nit) == 5
    assert iters == list(range(6)), lines  # iteration 0 (x0), then one line per iteration
    assert len(lines) == 7, lines  # ... and one final line
    assert jd.Status.MAX_ITER.message in lines[-1]
    for line in lines[1:-1]:  # iteration, f, projected gradient norm, step
        assert "f =" in line and "|pg|" in line and "|step|" in line, line
    if method_id == "GD-linesearch":
        assert int(res.nfev) > 6  # trials were rejected, yet printed once per iteration


def test_no_output_without_disp(capsys):
    capsys.readouterr()
    solve(QUAD_MIXED, "GD-fixed")
    jax.effects_barrier()
    assert capsys.readouterr().out == ""


_CALLBACK_SEEN: list = []


def _callback(intermediate_result):
    _CALLBACK_SEEN.append(intermediate_result)


def test_callback_once_per_iteration_under_jit():
    method, options = METHODS["GD-linesearch"]
    _CALLBACK_SEEN.clear()
    x0 = QUAD_MIXED.x0()
    res = jax.jit(
        lambda x: jd.minimize(quad_mixed, x, method=method, options=options, callback=_callback)
    )(x0)
    jax.effects_barrier()
    seen = list(_CALLBACK_SEEN)
    assert int(res.nfev) > int(res.nit) + 1  # rejected trials are not iterations
    assert len(seen) == int(res.nit)
    assert [int(r.nit) for r in seen] == list(range(1, int(res.nit) + 1))
    for r in seen:
        assert isinstance(r, jd.OptimizeResult)
        assert_same_structure_shapes_dtypes(jax.tree.map(jnp.asarray, r.x), x0)
        np.testing.assert_allclose(float(r.fun), float(quad_mixed(r.x)), rtol=1e-12)
        # Not finished yet: status -1 (README), none of the final ones.
        assert (int(r.status), bool(r.success), r.message) == (-1, False, "Iterating.")
    chex.assert_trees_all_close(jax.tree.map(jnp.asarray, seen[-1].x), res.x, rtol=0, atol=0)
    funs = [float(r.fun) for r in seen]
    assert all(b < a for a, b in itertools.pairwise(funs))  # Armijo: f decreases


def _quartic(x, c):
    return jnp.sum((x - 1.0) ** 2) + c * jnp.sum(x**4)


def test_callback_and_disp_under_vmap_report_each_problems_own_iterations(capsys):
    # Under vmap the loop body runs for every problem until the slowest stops; a finished
    # problem is frozen, and its discarded trips must not reach callback or disp.
    coefs = jnp.array([0.0, 1.0, 3.0])
    options = {"disp": True}

    def run(c):
        return jd.minimize(
            _quartic, jnp.zeros(2), args=(c,), method="L-BFGS", options=options, callback=_callback
        )

    def reports(solve, *a):
        _CALLBACK_SEEN.clear()
        capsys.readouterr()
        res = solve(*a)
        jax.effects_barrier()
        lines = capsys.readouterr().out.splitlines()
        iters = [int(m.group(1)) for m in map(_ITER_LINE.match, lines) if m]
        return res, sorted(int(r.nit) for r in _CALLBACK_SEEN), sorted(iters)

    batch, batch_nits, batch_lines = reports(jax.jit(jax.vmap(run)), coefs)
    solo_nits, solo_lines = [], []
    for k, c in enumerate(coefs):
        res, nits, lines = reports(run, c)
        assert int(res.nit) == int(batch.nit[k])
        assert nits == list(range(1, int(res.nit) + 1))
        solo_nits += nits
        solo_lines += lines
    assert len(set(np.asarray(batch.nit).tolist())) > 1  # some problems finish first
    assert batch_nits == sorted(solo_nits)
    assert batch_lines == sorted(solo_lines)


@pytest.mark.parametrize("method_id", ["GD-fixed", "GD-linesearch"])
def test_trace_shapes_and_contents_under_jit(method_id):
    method, options = _trace_options(method_id)
    x0 = QUAD_MIXED.x0()
    res = jax.jit(lambda x: jd.minimize(quad_mixed, x, method=method, options=options))(x0)
    trace = res.trace
    assert isinstance(trace, jd.Trace)
    n = int(res.nit)
    assert 0 < n < 200  # converged before maxiter, so there are entries past nit
    assert trace.fun.shape == (201,)
    assert jax.tree.structure(trace.x) == jax.tree.structure(x0)
    for buf, leaf in zip(jax.tree.leaves(trace.x), jax.tree.leaves(x0)):
        assert buf.shape == (201,) + leaf.shape and buf.dtype == leaf.dtype
    first = jax.tree.map(lambda a: a[0], trace.x)
    chex.assert_trees_all_close(first, x0, rtol=0, atol=0)
    np.testing.assert_allclose(float(trace.fun[0]), float(quad_mixed(x0)), rtol=1e-12)
    # Entries nit..maxiter repeat the final value.
    np.testing.assert_array_equal(np.asarray(trace.fun[n:]), float(res.fun))
    for buf, leaf in zip(jax.tree.leaves(trace.x), jax.tree.leaves(res.x)):
        np.testing.assert_array_equal(np.asarray(buf[n:]), np.broadcast_to(leaf, buf[n:].shape))
    # Each entry is an iterate with its own f; f decreases along the path.
    np.testing.assert_allclose(trace.fun, jax.vmap(quad_mixed)(trace.x), rtol=1e-12)
    assert np.all(np.diff(np.asarray(trace.fun[: n + 1])) < 0)


# ---------------------------------------------------------------------------------------
# No host callback in the compiled program unless asked for (SPEC 1)
# ---------------------------------------------------------------------------------------


def _jaxpr_primitives(method_id, **kwargs):
    method, options = METHODS[method_id]
    options = {**options, **kwargs.pop("options", {})}

    @jax.jit
    def wrapper(x):
        return jd.minimize(quad_mixed, x, method=method, options=options, **kwargs)

    return set(primitive_counts(jax.make_jaxpr(wrapper)(QUAD_MIXED.x0()).jaxpr))


@pytest.mark.parametrize("method_id", list(METHODS))
def test_no_callback_primitive_without_callback_or_disp(method_id):
    names = _jaxpr_primitives(method_id)
    assert "while" in names  # the walk reaches the solve's loop
    assert not [n for n in names if "callback" in n], names


@pytest.mark.parametrize(
    "kwargs", [{"options": {"disp": True}}, {"callback": _callback}], ids=["disp", "callback"]
)
def test_callback_primitive_present_with_callback_or_disp(kwargs):
    names = _jaxpr_primitives("GD-fixed", **kwargs)
    assert [n for n in names if "callback" in n], names


# ---------------------------------------------------------------------------------------
# optax transformations as methods (SPEC 1)
# ---------------------------------------------------------------------------------------

# Module-level, so the compiled solve is reused (methods are cached by identity).
OPTAX_ADAM = optax.adam(0.05)
OPTAX_ADAM_FAST = optax.adam(0.5)
OPTAX_SGD = optax.sgd(0.2)


def test_optax_transformation_runs_to_convergence():
    res = jd.minimize(quad_mixed, QUAD_MIXED.x0(), method=OPTAX_ADAM)
    assert int(res.status) == jd.Status.CONVERGED, res.message
    assert inf_norm(res.jac) <= GTOL
    chex.assert_trees_all_close(res.x, QUAD_MIXED.xstar(), atol=1e-4)
    assert_same_structure_shapes_dtypes(res.x, QUAD_MIXED.x0())


def test_optax_sgd_is_the_same_loop_as_fixed_step_gd():
    ours = solve(QUAD_MIXED, "GD-fixed")
    theirs = jd.minimize(quad_mixed, QUAD_MIXED.x0(), method=OPTAX_SGD)
    assert int(theirs.nit) == int(ours.nit)
    assert int(theirs.nfev) == int(ours.nfev)
    chex.assert_trees_all_close(theirs.x, ours.x, rtol=1e-12)


def test_optax_transformation_with_bounds_projects():
    lower, upper = QUAD_MIXED.bounds()
    res = jd.minimize(quad_mixed, QUAD_MIXED.x0(), method=OPTAX_ADAM, bounds=(lower, upper))
    assert bool(res.success), res.message
    chex.assert_trees_all_close(res.x, QUAD_MIXED.xstar_bounded(), atol=1e-4)


OPTAX_POLYAK = optax.polyak_sgd(max_learning_rate=1.0)


def test_optax_transformation_gets_the_value_it_asks_for():
    # Polyak's step (f - 0) / |g|^2 on f = |x - 1|^2 is 1/4, so each update halves x - 1:
    # x_k = 1 - 0.5^k from x0 = 0. optax.polyak_sgd takes f through optax's extra args.
    def f(x):
        return jnp.sum((x - 1.0) ** 2)

    options = {"maxiter": 3, "gtol": 0.0}
    res = jd.minimize(f, jnp.zeros(3), method=OPTAX_POLYAK, options=options)
    assert int(res.nit) == 3
    chex.assert_trees_all_close(res.x, jnp.full(3, 0.875), rtol=1e-12)


def test_optax_transformation_with_its_own_line_search_is_refused_clearly():
    # optax.lbfgs calls fun itself (value_fn); that cannot sit in a one-evaluation trip.
    with pytest.raises(TypeError, match="value_fn.*L-BFGS"):
        jd.minimize(quad_mixed, QUAD_MIXED.x0(), method=optax.lbfgs())


@pytest.mark.parametrize("method", ["Adam", "momentum"])
def test_float64_hyperparameters_do_not_promote_float32_x(method):
    # Strongly typed float64 arrays (not Python floats) as every numeric hyperparameter: the
    # optax state would be promoted to float64 if the driver did not keep the carry's types.
    f64 = {
        "Adam": {"learning_rate": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8},
        "momentum": {"learning_rate": 0.1, "momentum": 0.5},
    }[method]
    options = {k: jnp.asarray(v, jnp.float64) for k, v in f64.items()}
    x0 = QUAD_MIXED.x0(jnp.float32)
    res = jd.minimize(quad_mixed, x0, method=method, options=options)
    assert_same_structure_shapes_dtypes(res.x, x0)
    assert res.fun.dtype == jnp.float32
    assert bool(res.success), res.message


def tiny_curvature(x):
    return 1e-6 * jnp.sum(x**2)


def test_default_xtol_zero_stops_when_the_iterate_stops_changing():
    # float32 x = 1e4 has an ulp of ~1e-3; the step 0.01 * 2e-6 * 1e4 = 2e-4 rounds away,
    # so x stops changing while the gradient is still far above gtol: XTOL (xtol=0).
    x0 = jnp.asarray([1e4, 1e4], jnp.float32)
    res = jd.minimize(
        tiny_curvature, x0, method="GD", options={"learning_rate": 0.01, "gtol": 1e-9}
    )
    assert int(res.status) == jd.Status.XTOL, res.message
    # x never moved, so f never went below f(x0): a stall, not a success (SPEC section 2).
    assert not bool(res.success)
    assert "stall" in res.message
    assert int(res.nit) == 1
    np.testing.assert_array_equal(np.asarray(res.x), np.asarray(x0))


def _inside_the_box(x):
    return jnp.sum((x - 0.9) ** 2)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("Adam", {"learning_rate": 0.5}),
        ("momentum", {"learning_rate": 0.3, "momentum": 0.9}),
        (OPTAX_ADAM_FAST, {}),
    ],
    ids=["Adam", "momentum", "optax-adam"],
)
def test_a_step_cut_off_by_the_box_does_not_stop_a_rule_with_velocity(method, options):
    # From -1 the velocity carries x into the bound at 1 (the minimum 0.9 is inside): the
    # projected step is 0 while the velocity still pushes outward. That stopped the solve
    # with XTOL (success) at x = 1; now xtol also sees the update the box cut off, so the
    # velocity turns around and x comes back to 0.9.
    res = jd.minimize(
        _inside_the_box, jnp.asarray([-1.0]), method=method, bounds=(-1.0, 1.0), options=options
    )
    assert int(res.status) == jd.Status.CONVERGED, res.message
    np.testing.assert_allclose(res.x, [0.9], atol=1e-4)


def test_a_rule_with_velocity_converges_against_the_bound_it_presses():
    # The minimum over the box is on the bound: the update keeps being cut off there, and
    # the projected gradient (0 at the bound) ends the solve, CONVERGED.
    res = jd.minimize(
        lambda x: jnp.sum((x - 2.0) ** 2),
        jnp.asarray([-1.0]),
        method="Adam",
        bounds=(-1.0, 1.0),
        options={"learning_rate": 0.5},
    )
    assert int(res.status) == jd.Status.CONVERGED, res.message
    np.testing.assert_array_equal(res.x, [1.0])
