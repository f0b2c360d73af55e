"""PG, the inverse-simulator update, on the Physics-based Deep Learning chapter's example.

The example (Thuerey et al., Physics-based Deep Learning, "Simple example comparing
different optimizers"): y(x) = [x0, x1^2], L(y) = |y|^2, x = [3, 3] in float32, ten PG
steps with eta = 0.3 and the analytic inverse physics_inv(y) = [y0, sqrt(y1)]. The
expected iterates below are the chapter's printed "PG iter 0..9" lines, copied verbatim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import primitive_counts

import jaxopt_dict as jd

# The chapter's printed "PG iter i" lines (analytic inverse, float32).
PBDL_PG_ITERATES = np.array(
    [
        [2.1, 2.5099802],
        [1.4699999, 2.1000001],
        [1.0289999, 1.7569861],
        [0.72029996, 1.47],
        [0.50421, 1.2298902],
        [0.352947, 1.029],
        [0.24706289, 0.86092323],
        [0.17294402, 0.7203],
        [0.12106082, 0.60264623],
        [0.08474258, 0.50421],
    ],
    dtype=np.float32,
)
# float32 rounding: the chapter inverts H explicitly, PG here solves by Cholesky; the
# measured worst relative difference over the ten iterates is 1.2e-7 (one ulp).
RTOL = 1e-6


def physics(x):
    return jnp.stack([x[0], x[1] ** 2])


def physics_inv(y):
    return jnp.stack([y[0], jnp.sqrt(y[1])])


def loss(y):
    return jnp.sum(y**2)


X0 = jnp.asarray([3.0, 3.0], jnp.float32)
TEXTBOOK = {"learning_rate": 0.3, "gtol": 0.0, "maxiter": 10, "trace": True}


def test_pg_reproduces_the_pbdl_iterates():
    options = {**TEXTBOOK, "physics": physics, "physics_inv": physics_inv}
    res = jd.minimize(loss, X0, method="PG", options=options)
    assert int(res.nit) == 10
    assert jd.Status(int(res.status)) is jd.Status.MAX_ITER
    assert res.x.dtype == jnp.float32
    np.testing.assert_allclose(res.trace.x[0], X0)
    np.testing.assert_allclose(res.trace.x[1:], PBDL_PG_ITERATES, rtol=RTOL)
    np.testing.assert_allclose(res.x, PBDL_PG_ITERATES[-1], rtol=RTOL)
    # The driver's objective is L(physics(x)): res.fun and res.jac refer to it, in x.
    np.testing.assert_allclose(res.fun, loss(physics(res.x)), rtol=RTOL)
    np.testing.assert_allclose(res.jac, jax.grad(lambda x: loss(physics(x)))(res.x), rtol=1e-5)
    np.testing.assert_allclose(
        res.trace.fun[1:], [loss(physics(x)) for x in res.trace.x[1:]], rtol=RTOL
    )


def test_pg_analytic_runs_under_jit_and_takes_a_traced_learning_rate():
    def solve(x0, learning_rate):
        options = {
            **TEXTBOOK,
            "learning_rate": learning_rate,
            "physics": physics,
            "physics_inv": physics_inv,
        }
        return jd.minimize(loss, x0, method="PG", options=options)

    res = jax.jit(solve)(X0, jnp.float32(0.3))
    np.testing.assert_allclose(res.trace.x[1:], PBDL_PG_ITERATES, rtol=RTOL)


def test_pg_numerical_inverse_agrees_with_the_analytic_one_under_jit():
    @jax.jit
    def solve(x0):
        return jd.minimize(loss, x0, method="PG", options={**TEXTBOOK, "physics": physics})

    res = solve(X0)
    assert int(res.nit) == 10
    # The chapter's scipy-based numerical inverse lands within 3e-6 of the analytic one.
    np.testing.assert_allclose(res.trace.x[1:], PBDL_PG_ITERATES, atol=1e-4)


def _doubled(x):
    return 2.0 * x


def _half(y):
    return y / 2.0


def _to_one(y, target):
    return jnp.sum((y - target) ** 2)


HALVING = {"physics": _doubled, "learning_rate": 0.5, "gtol": 0.0, "maxiter": 40}


def test_pg_numerical_inverse_takes_k_steps_as_the_analytic_one():
    # SPEC section 5: with gtol = 0 and maxiter = k, PG takes exactly k steps. Each step
    # halves y - 1; the numerical inverse's absolute inner gtol (1e-5) once left its warm
    # start in place for a step below ~1e-6: x stopped with XTOL (success) at nit 19.
    target = jnp.ones(2)
    numerical = jd.minimize(_to_one, jnp.zeros(2), (target,), method="PG", options=HALVING)
    analytic = jd.minimize(
        _to_one, jnp.zeros(2), (target,), method="PG", options={**HALVING, "physics_inv": _half}
    )
    for res in (numerical, analytic):
        assert int(res.nit) == 40 and int(res.status) == jd.Status.MAX_ITER, res
    np.testing.assert_allclose(numerical.x, analytic.x, rtol=1e-12)
    assert float(jnp.max(jnp.abs(numerical.jac))) <= 1e-11


def test_pg_numerical_inverse_differentiates_unrolled():
    # Reverse mode through the numerical inverse's while_loop raised JAX's "does not work
    # for lax.while_loop" error; unrolled, the inner solve is a checkpointed loop too.
    options = {**HALVING, "maxiter": 5, "adjoint": "unrolled"}

    def solution(target, inverse):
        opts = {**options, "physics_inv": inverse}
        return jd.minimize(_to_one, jnp.zeros(2), (target,), method="PG", options=opts).x

    target = jnp.asarray([1.0, -2.0])
    numerical = jax.jacrev(solution)(target, None)
    # Five steps of y <- y + 0.5 (target - y) from 0: x = (1 - 0.5**5) target / 2.
    np.testing.assert_allclose(numerical, (1 - 0.5**5) / 2 * np.eye(2), atol=1e-9)
    np.testing.assert_allclose(numerical, jax.jacrev(solution)(target, _half), atol=1e-9)
    # A full step lands on the target: later steps in y are exactly 0, where the inner
    # tolerance's scale (|dy|) must carry no derivative (the norm's is NaN there).
    options["learning_rate"] = 1.0
    np.testing.assert_allclose(jax.jacrev(solution)(target, None), 0.5 * np.eye(2), atol=1e-9)


def test_pg_converges_by_gtol_on_the_composite_gradient():
    # learning_rate=1 is a full Newton step in y: y_target = 0, so x = 0 after one step,
    # where the gradient of L(physics(x)) in x vanishes.
    options = {"physics": physics, "physics_inv": physics_inv}
    res = jd.minimize(loss, X0, method="PG", options=options)
    assert jd.Status(int(res.status)) is jd.Status.CONVERGED
    assert int(res.nit) == 1
    # y1 = 9 - 0.9999999 * 9 ~ 1e-6 in float32, so x1 = sqrt(y1) ~ 1e-3 (still converged:
    # the gradient there, 4 x1^3, is ~4e-9).
    np.testing.assert_allclose(res.x, [0.0, 0.0], atol=2e-3)
    assert float(jnp.max(jnp.abs(res.jac))) <= 1e-5


def test_pg_on_a_dict_with_jac_true_loss():
    # x is a dict; y an array of another shape; L is given with its gradient (jac=True).
    target = jnp.asarray([1.0, 4.0, 0.5])

    def physics_dict(x):
        return jnp.concatenate([x["a"], x["b"][None] ** 3])

    def physics_dict_inv(y):
        return {"a": y[:2], "b": jnp.cbrt(y[2])}

    def loss_and_grad(y, t):
        r = y - t
        return jnp.sum(r**2), 2.0 * r

    x0 = {"a": jnp.zeros(2), "b": jnp.asarray(2.0)}
    options = {"physics": physics_dict, "physics_inv": physics_dict_inv, "maxiter": 50}
    res = jd.minimize(loss_and_grad, x0, args=(target,), method="PG", jac=True, options=options)
    assert bool(res.success)
    np.testing.assert_allclose(res.x["a"], [1.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(res.x["b"], 0.5 ** (1 / 3), rtol=1e-6)


def test_pg_without_physics_is_a_value_error_before_fun_is_traced():
    calls = []

    def counting_loss(y):
        calls.append(1)
        return jnp.sum(y**2)

    with pytest.raises(ValueError, match="physics"):
        jd.minimize(counting_loss, X0, method="PG")
    with pytest.raises(ValueError, match="physics"):
        jd.minimize(counting_loss, X0, method="pg", options={"physics_inv": physics_inv})
    assert calls == []


def test_pg_rejects_bad_physics():
    # A non-callable option value is a wrong value (SPEC 1); a physics_inv returning the
    # wrong structure is a wrong kind of return, like fun's.
    with pytest.raises(ValueError, match="physics"):
        jd.minimize(loss, X0, method="PG", options={"physics": 3.0})
    with pytest.raises(ValueError, match="physics_inv"):
        jd.minimize(loss, X0, method="PG", options={"physics": physics, "physics_inv": "inv"})
    with pytest.raises(TypeError, match="physics_inv"):
        jd.minimize(
            loss,
            X0,
            method="PG",
            options={"physics": physics, "physics_inv": lambda y: {"x": y}},
        )
    with pytest.raises(ValueError, match="does not take bounds"):
        jd.minimize(loss, X0, method="PG", bounds=(0.0, 1.0), options={"physics": physics})


def test_pg_numerical_inverse_is_one_inner_loop_in_the_program():
    """The inner L-BFGS solve appears once (in the step), not also in an init outside
    the loop: the first trip starts the method (``Stepper.step_starts``)."""

    def solve(x0):
        return jd.minimize(loss, x0, method="PG", options={**TEXTBOOK, "physics": physics})

    with_inverse = primitive_counts(jax.make_jaxpr(solve)(X0).jaxpr)["while"]
    # The outer loop and one inner loop; the analytic inverse has the outer one only.
    assert with_inverse == 2
    analytic = {**TEXTBOOK, "physics": physics, "physics_inv": physics_inv}
    no_inverse = jax.make_jaxpr(lambda x: jd.minimize(loss, x, method="PG", options=analytic))
    assert primitive_counts(no_inverse(X0).jaxpr)["while"] == 1
