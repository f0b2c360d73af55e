"""Differentiating through a solve (SPEC section 4): implicit differentiation at x*.

References: closed-form ridge regression, and central finite differences.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd

N_SAMPLES, N_FEATURES = 30, 5
A = jax.random.normal(jax.random.PRNGKey(0), (N_SAMPLES, N_FEATURES))
B = jax.random.normal(jax.random.PRNGKey(1), (N_SAMPLES,))
TIGHT = {"gtol": 1e-11, "ftol": 0.0}
METHODS = ["L-BFGS", "L-BFGS-B", "Newton", "GD"]


def ridge(x, lam, a, b):
    """Ridge regression over a dict: weights and a separate intercept."""
    resid = a @ x["w"] + x["c"] - b
    return 0.5 * jnp.sum(resid**2) + 0.5 * lam * jnp.sum(x["w"] ** 2)


def ridge_closed_form(lam, a, b):
    """Minimizer of ``ridge`` from the normal equations (the intercept unpenalized)."""
    design = jnp.concatenate([a, jnp.ones((a.shape[0], 1))], axis=1)
    penalty = jnp.diag(jnp.concatenate([jnp.full(a.shape[1], lam), jnp.zeros(1)]))
    z = jnp.linalg.solve(design.T @ design + penalty, design.T @ b)
    return {"w": z[:-1], "c": z[-1]}


X0 = {"w": jnp.zeros(N_FEATURES), "c": jnp.asarray(0.0)}


def _solve(lam, a, b, method):
    return jd.minimize(ridge, X0, args=(lam, a, b), method=method, options=TIGHT)


def _validation_loss(x):
    return jnp.sum(jnp.sin(x["w"])) + x["c"] ** 2


def _require(method):
    if method.lower() not in [m.lower() for m in jd.method_names()]:
        pytest.fail(f"method {method} is not registered")


@pytest.mark.parametrize("method", METHODS)
def test_ridge_gradient_matches_closed_form(method):
    _require(method)

    def through_solve(lam, a, b):
        return _validation_loss(_solve(lam, a, b, method).x)

    def closed(lam, a, b):
        return _validation_loss(ridge_closed_form(lam, a, b))

    ours = jax.jit(jax.grad(through_solve, argnums=(0, 1, 2)))(0.7, A, B)
    ref = jax.grad(closed, argnums=(0, 1, 2))(0.7, A, B)
    chex.assert_trees_all_close(ours, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["L-BFGS", "Newton"])
def test_jacobian_and_jvp_match_closed_form(method):
    _require(method)

    def solution(lam):
        return _solve(lam, A, B, method).x

    chex.assert_trees_all_close(
        jax.jacrev(solution)(0.3),
        jax.jacfwd(lambda l: ridge_closed_form(l, A, B))(0.3),
        atol=1e-7,
    )
    _, tangent = jax.jvp(solution, (0.3,), (1.0,))
    _, tangent_ref = jax.jvp(lambda l: ridge_closed_form(l, A, B), (0.3,), (1.0,))
    chex.assert_trees_all_close(tangent, tangent_ref, atol=1e-7)


def test_value_derivative_is_the_envelope_theorem():
    # d f(x*(lam), lam) / d lam = 0.5 |w*|^2 at the optimum.
    def optimal_value(lam):
        return _solve(lam, A, B, "Newton").fun

    x = ridge_closed_form(0.7, A, B)
    np.testing.assert_allclose(jax.grad(optimal_value)(0.7), 0.5 * jnp.sum(x["w"] ** 2), rtol=1e-9)


def soft_max_entropy(x, temperature, logits):
    """A smooth, strongly convex, non-quadratic problem: log-sum-exp plus a quadratic."""
    z = x["z"]
    return temperature * jax.nn.logsumexp(z / temperature) - logits @ z + 0.5 * z @ z


def test_non_quadratic_against_finite_differences():
    logits = jnp.asarray([0.3, -1.0, 2.0, 0.5])

    def loss(temperature, logits):
        res = jd.minimize(
            soft_max_entropy,
            {"z": jnp.zeros(4)},
            args=(temperature, logits),
            method="Newton",
            options=TIGHT,
        )
        return jnp.sum(res.x["z"] ** 3)

    grads = jax.grad(loss, argnums=(0, 1))(0.8, logits)
    eps = 1e-5
    fd_t = (loss(0.8 + eps, logits) - loss(0.8 - eps, logits)) / (2 * eps)
    fd_l = np.array(
        [
            (loss(0.8, logits.at[i].add(eps)) - loss(0.8, logits.at[i].add(-eps))) / (2 * eps)
            for i in range(4)
        ]
    )
    np.testing.assert_allclose(grads[0], fd_t, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grads[1], fd_l, rtol=1e-6, atol=1e-8)


def bounded_quadratic(x, c):
    """0.5|x - c|^2 + 0.1 (sum x)^2, coupled so free coordinates feel the active ones."""
    return 0.5 * jnp.sum((x - c) ** 2) + 0.1 * jnp.sum(x) ** 2


@pytest.mark.parametrize("method", ["L-BFGS-B", "GD"])
def test_active_bounds_have_zero_sensitivity(method):
    _require(method)
    c = jnp.asarray([0.5, 2.0, -1.0])

    def solution(c, upper):
        res = jd.minimize(
            bounded_quadratic,
            jnp.zeros(3),
            args=(c,),
            method=method,
            bounds=(0.0, upper),
            options=TIGHT,
        )
        return res.x

    x = solution(c, 1.0)
    # Coordinate 0 is free, 1 sits on its upper bound, 2 on its lower bound:
    # 1.2 x0 = c0 - 0.2 * (x1 + x2)  =>  x0 = (0.5 - 0.2) / 1.2.
    np.testing.assert_allclose(x, [0.25, 1.0, 0.0], atol=1e-9)
    jac_c = jax.jacobian(solution)(c, 1.0)
    np.testing.assert_allclose(jac_c, np.diag([1 / 1.2, 0.0, 0.0]), atol=1e-9)
    # Moving the active upper bound moves x1 one for one and x0 through the coupling.
    jac_upper = jax.jacobian(solution, argnums=1)(c, 1.0)
    np.testing.assert_allclose(jac_upper, [-0.2 / 1.2, 1.0, 0.0], atol=1e-9)


def test_grad_through_vmapped_solve():
    lams = jnp.asarray([0.1, 0.7, 2.0])

    def batch_loss(lams):
        res = jax.vmap(lambda lam: _solve(lam, A, B, "Newton"))(lams)
        return jnp.sum(jax.vmap(_validation_loss)(res.x))

    def batch_ref(lams):
        return jnp.sum(jax.vmap(lambda lam: _validation_loss(ridge_closed_form(lam, A, B)))(lams))

    np.testing.assert_allclose(jax.grad(batch_loss)(lams), jax.grad(batch_ref)(lams), rtol=1e-7)
    per_lane = jax.vmap(jax.grad(lambda lam: _validation_loss(_solve(lam, A, B, "Newton").x)))(lams)
    np.testing.assert_allclose(per_lane, jax.grad(batch_ref)(lams), rtol=1e-7)


def test_x0_gets_zero_cotangent_and_unconverged_solve_still_differentiates():
    def from_start(x0, lam):
        res = jd.minimize(
            ridge, x0, args=(lam, A, B), method="GD", options={"learning_rate": 1e-3, "maxiter": 5}
        )
        return _validation_loss(res.x), res

    (_, res), grads = jax.value_and_grad(from_start, argnums=(0, 1), has_aux=True)(X0, 0.7)
    assert not bool(res.success)
    chex.assert_trees_all_close(grads[0], jax.tree.map(jnp.zeros_like, X0))
    assert np.isfinite(grads[1])


def _closure_argmin(theta, method="L-BFGS"):
    """``fun`` closes over theta instead of taking it through args."""
    f = lambda x: jnp.sum((x - theta) ** 2 * (1.0 + theta**2)) + 0.1 * jnp.sum(x**4)
    return jd.minimize(f, jnp.zeros(2), method=method, options=TIGHT).x


def _args_argmin(theta, method="L-BFGS"):
    f = lambda x, t: jnp.sum((x - t) ** 2 * (1.0 + t**2)) + 0.1 * jnp.sum(x**4)
    return jd.minimize(f, jnp.zeros(2), (theta,), method=method, options=TIGHT).x


THETA = jnp.array([0.5, -1.0])


@pytest.mark.parametrize("method", ["L-BFGS", "Newton"])
def test_derivative_in_a_value_fun_closes_over(method):
    """``lambda x: f(x, theta)`` under ``jax.grad``: the derivative in theta was silently
    zero under jit, and outside jit JAX raised "No constant handler for type JVPTracer";
    tracers in fun's closure are now data, as args are."""
    expected = jax.jacrev(_args_argmin)(THETA, method)
    assert np.abs(np.diag(np.asarray(expected))).min() > 0.1
    for transform in (jax.jacrev, jax.jacfwd):
        np.testing.assert_allclose(
            jax.jit(transform(_closure_argmin), static_argnums=1)(THETA, method),
            expected,
            rtol=1e-9,
        )
    np.testing.assert_allclose(jax.jacrev(_closure_argmin)(THETA, method), expected, rtol=1e-9)
    # Second order, against the args form's.
    second = jax.hessian(lambda t: jnp.sum(_closure_argmin(t, method) ** 3))(THETA)
    reference = jax.hessian(lambda t: jnp.sum(_args_argmin(t, method) ** 3))(THETA)
    np.testing.assert_allclose(second, reference, rtol=1e-8, atol=1e-12)


def test_closure_over_a_traced_value_in_jac_and_least_squares():
    """A gradient function, and least squares' residuals, closing over theta."""

    def with_jac(theta):
        f = lambda x: jnp.sum((x - theta) ** 2)
        g = lambda x: 2.0 * (x - theta)
        return jd.minimize(f, jnp.zeros(2), jac=g, method="L-BFGS", options=TIGHT).x

    np.testing.assert_allclose(jax.jit(jax.jacrev(with_jac))(THETA), np.eye(2), atol=1e-10)

    def fit(theta):
        return jd.least_squares(lambda x: (x - theta) * jnp.array([1.0, 3.0]), jnp.zeros(2)).x

    np.testing.assert_allclose(jax.jit(jax.jacfwd(fit))(THETA), np.eye(2), atol=1e-8)
    np.testing.assert_allclose(jax.jacrev(fit)(THETA), np.eye(2), atol=1e-8)


def test_closure_under_vmap_and_grad():
    """vmap of grad over a closure: each problem's own derivative."""
    thetas = jnp.stack([THETA, THETA[::-1] + 0.1])
    got = jax.vmap(jax.jacrev(_closure_argmin))(thetas)
    expected = jnp.stack([jax.jacrev(_args_argmin)(t) for t in thetas])
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_closure_with_a_transformation_between_grad_and_the_solve():
    """A jit, checkpoint, scan or vmap between the derivative and the solve: the value fun
    closes over is the staged (or batched) one, not the derivative's tracer, and it was
    left in the closure: JAX raised "No constant handler for type DynamicJaxprTracer".
    It is data of the solve now, differentiated like args."""
    expected = jax.jacrev(_args_argmin)(THETA)
    for transform in (jax.jit, jax.checkpoint):
        for derivative in (jax.jacrev, jax.jacfwd):
            got = derivative(transform(_closure_argmin))(THETA)
            np.testing.assert_allclose(got, expected, rtol=1e-9)
    inside_vmap = jax.jacrev(lambda t: jax.vmap(_closure_argmin)(t[None])[0])(THETA)
    np.testing.assert_allclose(inside_vmap, expected, rtol=1e-9)

    def scanned(thetas):
        return jax.lax.scan(lambda c, t: (c + jnp.sum(_closure_argmin(t)), None), 0.0, thetas)[0]

    thetas = jnp.stack([THETA, THETA + 0.1])
    reference = jnp.stack([jax.jacrev(_args_argmin)(t).sum(0) for t in thetas])
    np.testing.assert_allclose(jax.grad(scanned)(thetas), reference, rtol=1e-9)


def test_kept_callables_closing_over_a_differentiated_value_are_refused():
    """least squares' loss and PG's physics are part of the compiled program: closing over
    the grad variable, the implicit derivative was zero in it under jit (and JAX raised
    "No constant handler" outside jit). Now a clear error; without a derivative, fine."""

    def fit(c):
        loss = lambda z: jnp.stack([c * z, c * jnp.ones_like(z), jnp.zeros_like(z)])
        return jd.least_squares(lambda x: x - jnp.array([1.0, 2.0]), jnp.zeros(2), loss=loss).x

    with pytest.raises(ValueError, match="loss closes over a value"):
        jax.jit(jax.jacrev(fit))(2.0)
    np.testing.assert_allclose(jax.jit(fit)(2.0), [1.0, 2.0], atol=1e-8)

    def pg(s):
        options = {"physics": lambda x: s * x, "gtol": 1e-10, "maxiter": 50}
        return jd.minimize(lambda y: jnp.sum((y - 1.0) ** 2), jnp.zeros(2), method="PG",
                           options=options).x  # fmt: skip

    with pytest.raises(ValueError, match=r"options\['physics'\] closes over a value"):
        jax.jacrev(pg)(2.0)
    np.testing.assert_allclose(jax.jit(pg)(2.0), [0.5, 0.5], atol=1e-8)
