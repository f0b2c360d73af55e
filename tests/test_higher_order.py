"""Second derivatives through a solve (SPEC section 4): exact at the solution for every
method, checked against central differences of the first derivative. Before, L-BFGS and
L-BFGS-B gave a silently wrong Hessian (the loop's own forward derivative, 2.057 where
2.764 is right) and reverse-over-reverse raised for every method; and a linear solve of
the implicit rule that does not converge gives NaN, not a wrong number."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd


def objective(x, a):
    return jnp.sum((x - a) ** 2 * (1.0 + a)) + 0.1 * jnp.sum(x**4)


A = jnp.array([0.5, -0.3, 1.2])
TIGHT = {"gtol": 1e-12, "ftol": 0.0}
CASES = {
    "L-BFGS": ("L-BFGS", TIGHT, None),
    "L-BFGS-B": ("L-BFGS-B", TIGHT, None),
    # x[1] held at its bound 0 (its unbounded minimizer is negative): a fixed coordinate.
    "L-BFGS-B-active": ("L-BFGS-B", TIGHT, (jnp.array([-5.0, 0.0, -5.0]), 5.0)),
    "Newton": ("Newton", {"gtol": 1e-12}, None),
    "GD": ("GD", {"gtol": 1e-11, "maxiter": 20000}, None),
}


def readout(a, case):
    method, options, bounds = CASES[case]
    res = jd.minimize(objective, jnp.zeros(3), args=(a,), method=method, options=options,
                      bounds=bounds)  # fmt: skip
    return jnp.sum(res.x * a**2)


@functools.cache
def finite_difference_hessian(case: str) -> np.ndarray:
    grad = jax.jit(jax.grad(functools.partial(readout, case=case)))
    step = 1e-5
    rows = [(grad(A.at[i].add(step)) - grad(A.at[i].add(-step))) / (2 * step) for i in range(3)]
    return np.asarray(rows)


TRANSFORMS = {
    "hessian": jax.hessian,
    "jacfwd-jacfwd": lambda f: jax.jacfwd(jax.jacfwd(f)),
    "jacrev-jacrev": lambda f: jax.jacrev(jax.jacrev(f)),
    "jacfwd-jacrev": lambda f: jax.jacfwd(jax.jacrev(f)),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("case", list(CASES))
def test_second_derivatives_match_finite_differences(case, transform):
    hess = TRANSFORMS[transform](functools.partial(readout, case=case))(A)
    # Differences of L-BFGS's derivative serve every solve of the same problem: GD's own
    # solutions are accurate to about 1e-9 (its search compares f), too noisy to difference.
    reference = "L-BFGS-B-active" if case == "L-BFGS-B-active" else "L-BFGS"
    np.testing.assert_allclose(np.asarray(hess), finite_difference_hessian(reference), atol=2e-5)


@pytest.mark.parametrize("case", ["L-BFGS", "Newton"])
def test_grad_of_grad(case):
    """Reverse over reverse of a scalar function of one arg."""

    def first(s):
        return jax.grad(lambda t: readout(A * t, case))(s)

    second = jax.grad(first)(1.0)
    step = 1e-5
    reference = (first(1.0 + step) - first(1.0 - step)) / (2 * step)
    np.testing.assert_allclose(float(second), float(reference), rtol=1e-5)


def saddle(x, a):
    return (x[0] - a) ** 2 - (x[1] - a) ** 2


def test_implicit_solve_that_breaks_down_gives_nan():
    """Started at the saddle (a, a) the gradient is 0: CONVERGED at nit 0. The Hessian
    there, diag(2, -2), is indefinite and conjugate gradients break down on it (p^T H p
    = 0): the derivative is NaN (it was inf), never a number that looks right."""

    def out(a):
        res = jd.minimize(saddle, jnp.array([0.7, 0.7]), args=(a,), method="L-BFGS")
        return jnp.sum(res.x)

    assert int(jd.minimize(saddle, jnp.array([0.7, 0.7]), args=(0.7,)).nit) == 0
    assert np.isnan(float(jax.grad(out)(0.7)))
