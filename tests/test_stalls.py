"""Success is never claimed for a stall (SPEC section 2): FTOL and XTOL are successes only
after progress (``res.fun < f(x0)``); GD and Newton have no relative-reduction stop by
default; an explicit ``ftol=0`` turns every f-based stop off."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd


def gentle_slope(x):
    """Gradient 0.1 far from the minimum at x = 1 (a pseudo-Huber function)."""
    return 1.0 + 0.1 * jnp.sum(jnp.sqrt(1.0 + (x - 1.0) ** 2))


def test_update_lost_to_rounding_is_not_a_success():
    """float32 x = 1e5 has an ulp of 0.0078: Adam's updates (1e-3 with its default
    learning rate) round away, x never moves, and the result said "Converged ... xtol"
    with success True."""
    x0 = jnp.full(2, 1e5, jnp.float32)
    # XTOL once x has held still for three times Adam's memory, 1 / (1 - b2) = 1000 steps
    # (``test_adam_does_not_stop_while_its_moments_settle``); before that, maxiter.
    res = jd.minimize(gentle_slope, x0, method="Adam", options={"maxiter": 5000})
    np.testing.assert_array_equal(np.asarray(res.x), np.asarray(x0))
    assert int(res.status) == jd.Status.XTOL and int(res.nit) == 3000
    assert not bool(res.success)
    assert "stall" in res.message and "Converged" not in res.message
    res = jd.minimize(gentle_slope, x0, method="Adam")
    assert int(res.status) == jd.Status.MAX_ITER and not bool(res.success)


def test_adam_does_not_stop_while_its_moments_settle():
    """float32 Adam on a steep bowl: x held still for 378 steps from step 4226 (updates
    lost to rounding while the second moment decays, 1 / (1 - b2) = 1000 steps), then
    moved on to gtol at step 9722. After 10 still steps the solve stopped there: XTOL,
    success, |g| = 1.8e-4 (18x gtol), f = 1e-12 against 3e-15."""
    target = jnp.array([1e-3, -2e-3], jnp.float32)
    res = jd.minimize(
        lambda x: 1e4 * jnp.sum((x - target) ** 2),
        jnp.ones(2, jnp.float32),
        method="Adam",
        options={"maxiter": 20000},
    )
    assert int(res.status) == jd.Status.CONVERGED, res.message
    assert float(jnp.max(jnp.abs(res.jac))) <= 1e-5


def test_momentum_builds_up_past_rounding():
    """The same start for momentum: its first updates round away too, but its velocity
    grows toward lr g / (1 - momentum) = 0.01, above half an ulp, and x moves. Stopping
    after two still steps called that a stall."""
    x0 = jnp.full(2, 1e5, jnp.float32)
    res = jd.minimize(gentle_slope, x0, method="momentum")
    assert np.all(np.asarray(res.x) < 1e5 - 1.0)
    assert int(res.status) != jd.Status.XTOL


def test_momentum_does_not_stop_at_a_turning_point():
    """float32 momentum near x = 300 (ulp 3e-5): at a turning point of the heavy ball one
    update rounds away while the velocity is still nonzero. That single still step ended
    the solve at iteration 116 with XTOL, success True and |g| = 9e-3; the same rule
    continued (optax) keeps moving down to |g| = 1.2e-4, float32's floor here."""
    c = 300.25
    res = jd.minimize(
        lambda x: jnp.sum((x - c) ** 2),
        jnp.asarray([c - 2.0], jnp.float32),
        method="momentum",
        options={"learning_rate": 1e-2},
    )
    assert int(res.nit) > 116
    assert float(jnp.max(jnp.abs(res.jac))) <= 5e-4, res


def coupled_quadratic(x):
    a = jnp.array([[1.0, 0.95], [0.95, 1.0]])
    d = x - jnp.array([1.0, -2.0])
    return 0.5 * d @ a @ d


def test_gd_runs_to_gtol_on_a_coupled_quadratic():
    """scipy's relative-reduction rule (ftol 2.2e-9) stopped GD with FTOL 1e-4 away from
    the minimizer of this quadratic (the decrease per step is small where the valley is
    narrow); by default GD has no such rule and runs to gtol."""
    res = jd.minimize(
        coupled_quadratic, jnp.zeros(2), method="GD", options={"gtol": 1e-10, "maxiter": 20000}
    )
    assert int(res.status) == jd.Status.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.x), [1.0, -2.0], atol=1e-8)
    # scipy's rule, asked for explicitly, still stops early: that is what it does.
    early = jd.minimize(
        coupled_quadratic,
        jnp.zeros(2),
        method="GD",
        options={"gtol": 1e-10, "maxiter": 20000, "ftol": 2.220446049250313e-09},
    )
    assert int(early.status) == jd.Status.FTOL
    assert int(early.nit) < int(res.nit)


def _rotated_quadratic(variant: int):
    """6-D quadratic 0.5 x^T A x - b^T x, A's eigenvalues geomspace(1, 3000), rotated by a
    Householder reflection so the valley is not along an axis (built without an RNG)."""
    n = 6
    v = np.cos(np.arange(1, n + 1) * (variant + 1.0))
    q = np.eye(n) - 2.0 * np.outer(v, v) / (v @ v)
    a = (q * np.geomspace(1.0, 3000.0, n)) @ q.T
    b = 3.0 * np.sin(np.arange(n) + variant)
    x0 = 2.0 * np.cos(3.0 * np.arange(n) + variant)
    return jnp.asarray(a), jnp.asarray(b), jnp.asarray(x0)


@pytest.mark.parametrize("variant", [0, 1])
def test_gd_line_search_does_not_stall_on_a_run_down_step(variant):
    """GD's next first step follows the last decrease (Nocedal & Wright 3.60). Zigzagging
    across this valley, a search ended on a step so short that f did not change by an ulp,
    and the one-ulp rule stopped the solve: FTOL, success, at |g| = 1e-4 (variant 0) and
    4.6e-5 (variant 1) against gtol 1e-5. Such a search now starts over at the first-step
    scale before the solve may stop, and the solve runs to gtol."""
    a, b, x0 = _rotated_quadratic(variant)
    res = jd.minimize(
        lambda x: 0.5 * x @ (a @ x) - b @ x,
        x0,
        method="GD",
        options={"maxiter": 20000, "maxfun": 100000},
    )
    assert int(res.status) == jd.Status.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.x), np.linalg.solve(a, b), atol=1e-6)


def penalty_1(x):
    """Moré, Garbow & Hillstrom (1981), problem 23, n = 4: f* = 2.24997873e-5."""
    return 1e-5 * jnp.sum((x - 1.0) ** 2) + (jnp.sum(x**2) - 0.25) ** 2


def test_newton_runs_to_gtol_on_penalty_1():
    res = jd.minimize(
        penalty_1, jnp.arange(1.0, 5.0), method="Newton", options={"gtol": 1e-6, "maxiter": 500}
    )
    assert int(res.status) == jd.Status.CONVERGED, res.message
    np.testing.assert_allclose(float(res.fun), 2.24997873e-5, rtol=1e-6)


def eggholder(v):
    x, y = v[0], v[1]
    return -(y + 47.0) * jnp.sin(jnp.sqrt(jnp.abs(x / 2.0 + y + 47.0))) - x * jnp.sin(
        jnp.sqrt(jnp.abs(x - (y + 47.0)))
    )


def test_explicit_ftol_zero_disables_every_f_stop_in_float32():
    """In float32 the one-ulp rule stopped L-BFGS on the eggholder from (100, 100) with
    ftol=0 given explicitly (FTOL at |g| = 4e-5, gtol 1e-5); now no FTOL at all: the
    solve runs until no step can decrease f (LINESEARCH_FAILED, honest in float32)."""
    x0 = jnp.array([100.0, 100.0], jnp.float32)
    default = jd.minimize(eggholder, x0, method="L-BFGS")
    assert int(default.status) == jd.Status.FTOL  # the float32 guard, left at its default
    res = jd.minimize(eggholder, x0, method="L-BFGS", options={"ftol": 0.0})
    assert int(res.status) != jd.Status.FTOL, res.message
    assert int(res.nit) > int(default.nit)
    assert float(res.fun) <= float(default.fun)


def test_ftol_and_xtol_success_needs_progress():
    """Started one ulp from its minimizer with gtol 0, GD's step (0.2 ulp) rounds to
    nothing: XTOL with f == f(x0), not a success. From elsewhere the same XTOL is one."""
    eps = float(np.finfo(np.float64).eps)
    at_min = jd.minimize(
        lambda x: jnp.sum((x - 1.0) ** 2), jnp.array([1.0 + eps, 1.0]), method="GD",
        options={"learning_rate": 0.1, "gtol": 0.0},
    )  # fmt: skip
    assert float(at_min.fun) > 0.0
    assert int(at_min.status) == jd.Status.XTOL and not bool(at_min.success)
    moved = jd.minimize(
        coupled_quadratic, jnp.zeros(2), method="GD",
        options={"learning_rate": 0.1, "gtol": 0.0, "maxiter": 100000},
    )  # fmt: skip
    assert int(moved.status) == jd.Status.XTOL, moved.message
    assert bool(moved.success)


def test_a_batch_lane_starts_each_problem_with_no_still_steps():
    """In minimize_batch's queue a lane takes problem after problem. A momentum stall
    (x = 1e7 in float32: ulp 1, the velocity never reaches half of it) ends with XTOL after
    10 still steps; the next problem in that lane must not inherit the count (it would
    stop at its first step lost to rounding, where alone it moves on)."""

    def slope(x, center):
        return 1.0 + 0.1 * jnp.sum(jnp.sqrt(1.0 + (x - center) ** 2))

    x0 = jnp.asarray([[1e7, 1e7], [1e5, 1e5]], jnp.float32)
    centers = jnp.asarray([1.0, 1.0], jnp.float32)
    batch = jd.minimize_batch(slope, x0, (centers,), method="momentum", lanes=1)
    alone = jd.minimize(slope, x0[1], (centers[1],), method="momentum")
    assert int(batch.status[0]) == jd.Status.XTOL and not bool(batch.success[0])
    assert int(batch.nit[1]) == int(alone.nit) and int(batch.status[1]) == int(alone.status)
    np.testing.assert_array_equal(np.asarray(batch.x[1]), np.asarray(alone.x))


def test_still_step_counts_are_those_the_docs_give_in_either_dtype():
    """docs/methods.md: 30 still steps for momentum 0.9, 3,000 for Adam's b2 0.999. With
    ceil, 1 / (1 - 0.9) = 10.000000000000002 made 31 in float64 (and Adam 3,001 in
    float32)."""
    from jaxopt_dict.methods.optax_rules import _still_steps

    def memory(decay, dtype):
        return 1.0 / (1.0 - jnp.asarray(decay, dtype))

    for dtype in (jnp.float32, jnp.float64):
        assert int(_still_steps(memory(0.9, dtype))) == 30
        assert int(_still_steps(memory(0.999, dtype))) == 3000
        assert int(_still_steps(memory(0.0, dtype))) == 10  # at least STILL_STEPS
