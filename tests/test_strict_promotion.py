"""Every method under ``jax.numpy_dtype_promotion("strict")`` (issue 18).

Strict promotion (optimistix's test setting, and some users') refuses every implicit mix
of int32 with int64 and of float32 with float64; with x64 on, ``jnp.arange`` is int64
while the package's counters are int32, and ``jnp.eye`` is float64 whatever x is. Each
solve here runs inside the strict context, in float64 (x64 on), float32 with x64 on, and
float32 with x64 off, on ``sum(w * (x - c)**2)`` whose minimizer is ``c`` (clipped to the
box where there is one). The sizes pick the code paths: n = 3 runs L-BFGS's two-loop
recursion (so does n = 20, where Newton takes its shifted Cholesky, n > 16), n = 260 the
compact form without bounds (n > ``TWO_LOOP_MAX_N``), and n = 70 with a box L-BFGS-B's
windowed Cauchy point (n > 64).

x64 is switched on for this module by a fixture and restored after it; the x64-off cases
switch it off around their solve only. Arrays are made inside each test, in its mode.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_dict as jd
from jaxopt_dict.methods.lbfgs import TWO_LOOP_MAX_N

MODES = ("float64", "float32", "float32-x64-off")
DTYPES = {"float64": jnp.float64, "float32": jnp.float32, "float32-x64-off": jnp.float32}
BOX = (-0.5, 0.5)
ATOL = 1e-4  # gtol 1e-5 and w >= 1: |x - c| <= 5e-6 at a converged point


@contextlib.contextmanager
def strict(mode: str):
    """Strict promotion, and x64 off for the x64-off mode; yields x's dtype."""
    with contextlib.ExitStack() as stack:
        if mode == "float32-x64-off":
            stack.enter_context(jax.enable_x64(False))
        stack.enter_context(jax.numpy_dtype_promotion("strict"))
        yield DTYPES[mode]


def quadratic(x, w, c):
    return jnp.sum(w * (x - c) ** 2)


def problem(n: int, dtype):
    """Weights, centers and x0 (zeros) in ``dtype``."""
    w = jnp.asarray(np.linspace(1.0, 3.0, n), dtype)
    c = jnp.asarray(np.linspace(-1.0, 1.0, n), dtype)
    return w, c, jnp.zeros((n,), dtype)


def identity(x):
    return x


COMPACT_N = TWO_LOOP_MAX_N + 4  # unbounded L-BFGS(-B) in the compact form
SGD = optax.sgd(0.1)  # one object: every solve with it shares the cached method

METHODS = {
    "GD-linesearch": ("GD", {}),
    "GD-fixed": ("GD", {"learning_rate": 0.1}),
    "momentum": ("momentum", {"learning_rate": 0.1, "momentum": 0.5}),
    "Adam": ("Adam", {"learning_rate": 0.1, "maxiter": 2000}),
    "Newton-linesearch": ("Newton", {}),
    "Newton-fixed": ("Newton", {"learning_rate": 0.5}),
    "L-BFGS": ("L-BFGS", {}),
    "L-BFGS-B": ("L-BFGS-B", {}),
    "PG-numerical-inverse": ("PG", {"physics": identity}),
    "PG-physics_inv": ("PG", {"physics": identity, "physics_inv": identity}),
    "optax-sgd": (SGD, {}),
}
BOXED = {
    "L-BFGS-B-box": ("L-BFGS-B", {}),
    "Adam-box": ("Adam", {"learning_rate": 0.1, "maxiter": 2000}),
}


def _solve_cases():
    """(case, n, boxed, mode). A box takes L-BFGS-B's compact path at any n: n = 3 and
    n = 70 cover both Cauchy point paths. With x64 off there is no int64 or float64 to mix
    in, and fewer cases run."""
    cases = []
    for mode in MODES:
        x64_on = mode != "float32-x64-off"
        sizes = (3, 20) if x64_on else (20,)
        cases += [(name, n, False, mode) for n in sizes for name in METHODS]
        cases += [(name, COMPACT_N, False, mode) for name in ("L-BFGS", "L-BFGS-B")]
        cases += [(name, 3, True, mode) for name in BOXED]
        if x64_on:
            cases.append(("L-BFGS-B-box", 70, True, mode))
    return cases


SOLVE_CASES = _solve_cases()
# vmap, grad and minimize_batch run with x64 on (where int64 and float64 are), on a float32
# or float64 x (a float32 x with x64 on is where float64 constants meet float32 arrays),
# one case or two each to keep the module's compilations few.


def _assert_solved(res, c, dtype, bounds=None, atol=ATOL):
    assert bool(res.success), res.message
    assert res.x.dtype == dtype and res.fun.dtype == dtype
    expected = np.asarray(c, np.float64)
    if bounds is not None:
        expected = np.clip(expected, *bounds)
    np.testing.assert_allclose(np.asarray(res.x, np.float64), expected, atol=atol)


@pytest.mark.parametrize(
    ("case", "n", "boxed", "mode"), SOLVE_CASES, ids=[f"{c}-n{n}-{m}" for c, n, _, m in SOLVE_CASES]
)
def test_every_method_solves_under_strict_promotion(case, n, boxed, mode):
    method, options = (BOXED if boxed else METHODS)[case]
    bounds = BOX if boxed else None
    with strict(mode) as dtype:
        w, c, x0 = problem(n, dtype)
        res = jd.minimize(quadratic, x0, args=(w, c), method=method, options=options, bounds=bounds)
        _assert_solved(res, c, dtype, bounds)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["Newton", "GD"])
def test_traced_learning_rate_under_jit(method, mode):
    with strict(mode) as dtype:
        w, c, x0 = problem(20, dtype)

        @jax.jit
        def solve(learning_rate):
            options = {"learning_rate": learning_rate}
            return jd.minimize(quadratic, x0, args=(w, c), method=method, options=options)

        _assert_solved(solve(jnp.asarray(0.1, dtype)), c, dtype)


def test_vmap_of_a_bounded_solve():
    with strict("float32") as dtype:
        w, c, x0 = problem(20, dtype)
        centers = jnp.stack([c, 0.5 * c])
        solve = lambda c: jd.minimize(quadratic, x0, args=(w, c), bounds=BOX)
        res = jax.vmap(solve)(centers)
        assert bool(res.success.all())
        assert res.x.dtype == dtype
        expected = np.clip(np.asarray(centers, np.float64), *BOX)
        np.testing.assert_allclose(np.asarray(res.x, np.float64), expected, atol=ATOL)


@pytest.mark.parametrize(
    ("boxed", "mode"),
    [(False, "float64"), (True, "float32")],
    ids=["L-BFGS-float64", "L-BFGS-B-box-float32"],
)
def test_grad_through_a_solve(boxed, mode):
    # x*(c) = c (clipped): d/dc sum(x*^2) = 2 x* where x* is free, 0 on an active bound.
    method, bounds = ("L-BFGS-B", BOX) if boxed else ("L-BFGS", None)
    with strict(mode) as dtype:
        w, c, x0 = problem(20, dtype)

        def loss(c):
            res = jd.minimize(quadratic, x0, args=(w, c), method=method, bounds=bounds)
            return jnp.sum(res.x**2)

        grad = jax.grad(loss)(c)
        assert grad.dtype == dtype
        c64 = np.asarray(c, np.float64)
        expected = 2.0 * c64 if bounds is None else np.where(np.abs(c64) < 0.5, 2.0 * c64, 0.0)
        np.testing.assert_allclose(np.asarray(grad, np.float64), expected, atol=1e-3)


@pytest.mark.parametrize(
    ("method", "n", "bounds", "mode"),
    [("L-BFGS-B", 20, BOX, "float32"), ("L-BFGS", 3, None, "float64")],
    ids=["L-BFGS-B-box-float32", "L-BFGS-float64"],
)
def test_minimize_batch(method, n, bounds, mode):
    with strict(mode) as dtype:
        w, c, x0 = problem(n, dtype)
        centers = jnp.stack([c, 0.5 * c, -c])
        res = jd.minimize_batch(
            quadratic,
            jnp.stack([x0, x0, x0]),
            args=(w, centers),
            args_axes=(None, 0),
            method=method,
            bounds=bounds,
            lanes=2,
        )
        assert bool(res.success.all())
        assert res.x.dtype == dtype
        expected = np.asarray(centers, np.float64)
        if bounds is not None:
            expected = np.clip(expected, *bounds)
        np.testing.assert_allclose(np.asarray(res.x, np.float64), expected, atol=ATOL)


def test_trace_under_strict_promotion():
    with strict("float64") as dtype:
        w, c, x0 = problem(20, dtype)
        options = {"trace": True, "maxiter": 50}
        res = jd.minimize(quadratic, x0, args=(w, c), method="L-BFGS", options=options)
        _assert_solved(res, c, dtype)
        assert float(res.trace.fun[int(res.nit)]) == float(res.fun)


F64_OPTION_CASES = [
    pytest.param("GD", {"learning_rate": 0.1}, id="GD-fixed"),
    pytest.param("momentum", {"learning_rate": 0.1, "momentum": 0.5}, id="momentum"),
    pytest.param("Adam", {"learning_rate": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8}, id="Adam"),
    pytest.param("PG", {"learning_rate": 0.5}, id="PG"),
    pytest.param(
        "Newton",
        {"learning_rate": 0.5},
        id="Newton-fixed",
    ),
    pytest.param(
        "L-BFGS",
        {"gtol": 1e-6, "ftol": 1e-9},
        id="L-BFGS-gtol-ftol",
    ),
]


@pytest.mark.parametrize(("method", "options"), F64_OPTION_CASES)
def test_float64_options_with_float32_x(method, options):
    # Strongly typed float64 options (not Python floats) with a float32 x, x64 on.
    with strict("float32") as dtype:
        options = {k: jnp.asarray(v, jnp.float64) for k, v in options.items()}
        if method == "PG":
            options.update(physics=identity, physics_inv=identity)
        w, c, x0 = problem(20, dtype)
        res = jd.minimize(quadratic, x0, args=(w, c), method=method, options=options)
        _assert_solved(res, c, dtype)


def mixed_quadratic(x, ca, cb):
    # The user's own sum of a float32 and a float64 term is explicit under strict rules.
    return jnp.sum((x["a"] - ca) ** 2).astype(jnp.float64) + jnp.sum(2.0 * (x["b"] - cb) ** 2)


MIXED_CASES = [
    pytest.param("momentum", {"learning_rate": 0.1, "momentum": 0.5}, None, id="momentum"),
    pytest.param(
        "L-BFGS",
        {},
        None,
        id="L-BFGS",
    ),
    pytest.param(
        "L-BFGS-B",
        {},
        BOX,
        id="L-BFGS-B-box",
    ),
    # GD's Armijo search: its trial point, slope and step norms promote across leaves.
    pytest.param("GD", {}, None, id="GD-linesearch"),
    pytest.param("GD", {}, BOX, id="GD-linesearch-box"),
    pytest.param("Newton", {}, None, id="Newton"),
]


@pytest.mark.parametrize(("method", "options", "bounds"), MIXED_CASES)
def test_mixed_float32_float64_leaves(method, options, bounds):
    with strict("float64"):
        ca = jnp.asarray(np.linspace(-1.0, 1.0, 20), jnp.float32)
        cb = jnp.asarray([0.25, -0.25], jnp.float64)
        x0 = {"a": jnp.zeros(20, jnp.float32), "b": jnp.zeros(2, jnp.float64)}
        res = jd.minimize(
            mixed_quadratic, x0, args=(ca, cb), method=method, options=options, bounds=bounds
        )
        assert bool(res.success), res.message
        assert res.x["a"].dtype == jnp.float32 and res.x["b"].dtype == jnp.float64
        expected_a = np.asarray(ca, np.float64)
        if bounds is not None:
            expected_a = np.clip(expected_a, *bounds)
        np.testing.assert_allclose(np.asarray(res.x["a"], np.float64), expected_a, atol=ATOL)
        np.testing.assert_allclose(np.asarray(res.x["b"]), [0.25, -0.25], atol=ATOL)
