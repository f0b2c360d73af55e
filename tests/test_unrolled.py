"""``options={"adjoint": "unrolled"}`` (SPEC section 4): reverse and forward mode through the
iterations themselves, so the derivatives of fixed-step runs and unconverged solves with
respect to x0, the data and numeric options are those of what was computed. Before, they
were silently zero (x0, learning rate) or the implicit derivative at a point that is not a
minimizer. Checked against closed forms and central differences of the same unrolled solve.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd
from jaxopt_dict._loop import checkpointed_loop
from jaxopt_dict._result import RUNNING
from jaxopt_dict.methods import lbfgs

UNROLLED = {"adjoint": "unrolled"}


def rosen(x, a):
    return jnp.sum(a * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def quadratic(x):
    return jnp.sum(x**2)


# ---- closed forms: three fixed steps of GD on sum(x^2) ---------------------------------
# x_k = x0 (1 - 2 lr)^k, so d x3 / d x0 = (1 - 2 lr)^3 I = 0.512 I at lr = 0.1 and
# d x3 / d lr = -6 x0 (1 - 2 lr)^2 = -3.84 x0 (issue 19: [0, 0] and 0 were returned).


def three_gd_steps(x0, lr):
    options = {"learning_rate": lr, "maxiter": 3, **UNROLLED}
    return jd.minimize(quadratic, x0, method="GD", options=options).x


X0 = np.array([1.0, -2.0])  # numpy: float64 once the module fixture turns x64 on


@pytest.mark.parametrize("transform", [jax.jacrev, jax.jacfwd])
def test_fixed_steps_derivative_in_x0_is_the_closed_form(transform):
    np.testing.assert_allclose(transform(three_gd_steps)(X0, 0.1), 0.512 * np.eye(2), rtol=1e-12)


@pytest.mark.parametrize("transform", [jax.jacrev, jax.jacfwd])
def test_fixed_steps_derivative_in_learning_rate_is_the_closed_form(transform):
    np.testing.assert_allclose(
        transform(three_gd_steps, argnums=1)(X0, 0.1), -3.84 * X0, rtol=1e-12
    )


def test_grad_through_fixed_steps_under_jit_and_vmap():
    loss = lambda lr, x0: jnp.sum(three_gd_steps(x0, lr))
    starts = jnp.asarray(np.stack([X0, 2.0 * X0, -X0]))
    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(0.1, starts)
    np.testing.assert_allclose(grads, -3.84 * starts.sum(axis=1), rtol=1e-12)


def test_implicit_default_still_says_zero_for_x0():
    """The default adjoint is implicit: the minimizer does not depend on x0."""
    solve = lambda x0: jd.minimize(quadratic, x0, method="GD", options={"maxiter": 3}).x
    np.testing.assert_array_equal(jax.jacrev(solve)(X0), np.zeros((2, 2)))


# ---- every method: same iterates as the while_loop, derivatives = central differences ----

# Every method's unrolled cell is in test_transformations.py (two iterations of a small
# convex problem); here the paths it does not reach, five iterations of Rosenbrock.
CASES = {
    "GD": ("GD", 3, None),  # Armijo backtracking
    "Newton-shifted": ("Newton", 20, None),  # n > 16: the shifted-Cholesky fallback
    "L-BFGS": ("L-BFGS", 3, None),  # two-loop recursion
    "L-BFGS-compact": ("L-BFGS", 20, None),  # the compact form (its threshold lowered below)
    "L-BFGS-B": ("L-BFGS-B", 3, (-2.0, 0.8)),  # Cauchy point and subspace step in a box
}
MAXITER = 5


def start(case):
    n = CASES[case][1]
    return jnp.linspace(-1.2, 1.0, n) if n == 3 else jnp.tile(jnp.array([-1.2, 1.0]), n // 2)


def solve(x0, a, case, adjoint="unrolled"):
    method, _, bounds = CASES[case]
    options = {"maxiter": MAXITER, "adjoint": adjoint}
    return jd.minimize(rosen, x0, (a,), method=method, bounds=bounds, options=options)


@pytest.mark.parametrize("case", list(CASES))
def test_unrolled_iterates_and_derivatives(case, monkeypatch, request):
    if case == "L-BFGS-compact":  # unbounded problems above the two-loop form's size
        monkeypatch.setattr(lbfgs, "TWO_LOOP_MAX_N", CASES[case][1] - 1)
        # The form is picked when a solve is traced: no program traced with the other
        # form may serve this case, nor one traced here serve a later test.
        jax.clear_caches()
        request.addfinalizer(jax.clear_caches)
    x0, a = start(case), 100.0
    forward = jax.jit(lambda x0, a: solve(x0, a, case))
    res, ref = forward(x0, a), solve(x0, a, case, adjoint="implicit")
    # The same iterations as the while_loop: x, counts and status.
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-13, atol=1e-15)
    assert (int(res.nit), int(res.nfev), int(res.status)) == (
        int(ref.nit),
        int(ref.nfev),
        int(ref.status),
    )
    assert int(res.nit) == MAXITER  # unconverged: the implicit derivative would not apply
    x_of = lambda x0, a: forward(x0, a).x
    # d x / d x0 in a few directions, d x / d a, by central differences.
    step = 1e-7
    jac_x0, jac_a = jax.jit(jax.jacrev(x_of, argnums=(0, 1)))(x0, a)
    for d in np.eye(x0.size)[:3]:
        central = (x_of(x0 + step * d, a) - x_of(x0 - step * d, a)) / (2 * step)
        np.testing.assert_allclose(jac_x0 @ d, central, rtol=1e-5, atol=1e-6)
    central = (x_of(x0, a + 1e-4) - x_of(x0, a - 1e-4)) / 2e-4
    np.testing.assert_allclose(jac_a, central, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(jac_x0)) and np.abs(jac_x0).max() > 0


def test_bounds_are_differentiable_when_unrolled():
    """A bound that stops the iterate passes its derivative on (the projection)."""

    def x_of(upper):
        options = {"maxiter": MAXITER, **UNROLLED}
        bounds = (-2.0, upper)
        return jd.minimize(
            rosen, start("L-BFGS-B"), (100.0,), "L-BFGS-B", bounds=bounds, options=options
        ).x

    derivative = jax.jacfwd(x_of)(0.8)
    central = (x_of(0.8 + 1e-6) - x_of(0.8 - 1e-6)) / 2e-6
    np.testing.assert_allclose(derivative, central, rtol=1e-5, atol=1e-7)
    assert np.abs(derivative).max() > 0.05  # the bound moves the iterate


def test_shifted_cholesky_solve_derivative_is_that_of_what_it_computes():
    """n > 16 and H indefinite: x = (H + tau I)^-1 r with tau found by doubling; tau is a
    power of two times beta or beta - min h_ii, a function of H that the derivative
    follows (holding tau fixed was off by 100% on Rosenbrock, n = 20)."""
    from jaxopt_dict._modified_cholesky import modified_cholesky_solve

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    hess = jnp.asarray(q @ np.diag(np.linspace(-3.0, 5.0, 20)) @ q.T)
    rhs = jnp.asarray(rng.standard_normal(20))
    direction = jnp.asarray(rng.standard_normal((20, 20)))
    direction = direction + direction.T
    along = lambda t: modified_cholesky_solve(hess + t * direction, rhs)
    derivative = jax.jacfwd(along)(0.0)
    central = (along(1e-7) - along(-1e-7)) / 2e-7
    np.testing.assert_allclose(derivative, central, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(jax.jacrev(along)(0.0), derivative, rtol=1e-10)
    # tau > 0 really: the plain Newton step is not what came out.
    assert not np.allclose(along(0.0), np.linalg.solve(hess, rhs))


# ---- the loop itself: bounded, checkpointed, about sqrt(trips) memory ------------------


class Countdown(NamedTuple):
    value: jax.Array
    left: jax.Array
    status: jax.Array


def countdown(v, trips, left):
    """A bare carry with a status: scales ``value`` by 0.9 per trip for ``left`` trips."""

    def body(c):
        status = jnp.where(c.left <= 1, 0, RUNNING).astype(jnp.int32)
        return c._replace(value=c.value * 0.9, left=c.left - 1, status=status)

    carry = Countdown(v, jnp.asarray(left, jnp.int32), jnp.asarray(RUNNING, jnp.int32))
    return checkpointed_loop(body, carry, trips).value


def test_checkpointed_loop_stops_and_differentiates():
    # Stops after `left` trips although the bound allows more; the bound wins when smaller.
    np.testing.assert_allclose(countdown(2.0, 50, 7), 2.0 * 0.9**7, rtol=1e-14)
    np.testing.assert_allclose(jax.grad(countdown)(2.0, 50, 7), 0.9**7, rtol=1e-14)
    np.testing.assert_allclose(countdown(2.0, 5, 7), 2.0 * 0.9**5, rtol=1e-14)


def _scan_lengths(jaxpr) -> list[int]:
    """Lengths of every scan in a jaxpr, nested ones included."""
    lengths = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            lengths.append(eqn.params["length"])
        for value in eqn.params.values():
            for item in value if isinstance(value, tuple) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    lengths += _scan_lengths(inner)
    return lengths


def test_loop_is_two_scans_of_about_sqrt_trips():
    """maxfun = 10,000 trips: an outer and an inner scan of 100 each (memory about
    2 sqrt(trips) carries in reverse mode), not one of 10,000."""

    def fun(x):
        options = {"maxfun": 10_000, **UNROLLED}
        return jd.minimize(quadratic, x, method="L-BFGS", options=options).x.sum()

    lengths = _scan_lengths(jax.make_jaxpr(jax.grad(fun))(X0).jaxpr)
    assert lengths and max(lengths) == 100, lengths


# ---- what the unrolled adjoint refuses, clearly ----------------------------------------


def test_unrolled_refuses_callback_and_disp():
    with pytest.raises(ValueError, match="callback or disp"):
        jd.minimize(quadratic, X0, method="GD", options=UNROLLED, callback=lambda r: None)
    with pytest.raises(ValueError, match="callback or disp"):
        jd.minimize(quadratic, X0, method="GD", options={"disp": True, **UNROLLED})


def test_unrolled_refuses_traced_maxfun():
    fun = lambda m: jd.minimize(quadratic, X0, method="GD", options={"maxfun": m, **UNROLLED}).x
    with pytest.raises(ValueError, match="maxfun"):
        jax.jit(fun)(10)


def test_minimize_batch_refuses_unrolled():
    with pytest.raises(ValueError, match="unrolled"):
        jd.minimize_batch(quadratic, jnp.ones((2, 2)), method="GD", options=UNROLLED)


def test_unknown_adjoint_is_refused():
    with pytest.raises(ValueError, match="'implicit', 'unrolled'"):
        jd.minimize(quadratic, X0, method="GD", options={"adjoint": "reverse"})
