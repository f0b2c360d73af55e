"""The transformation matrix (SPEC sections 3 and 4; README "What composes"): every method
under jit, vmap, grad, jacfwd, jacrev, hessian, grad(grad), shard_map, pmap, scan,
checkpoint and the unrolled adjoint, each cell checked against solves alone or central
differences. One small problem per method keeps the compiled programs few.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec

import jaxopt_dict as jd


def objective(x, a):
    """Strictly convex in x; its minimizer depends smoothly on a (2 entries)."""
    return jnp.sum((x - a) ** 2 * (1.0 + a**2)) + 0.1 * jnp.sum(x**4)


def physics(x):  # PG: L(physics(x)), the simulator invertible
    return x * 2.0


def physics_inv(y):
    return y / 2.0


TIGHT = {"gtol": 1e-11}
METHODS = {
    "GD": ("GD", {**TIGHT, "maxiter": 20_000}),
    "momentum": ("momentum", {**TIGHT, "learning_rate": 0.05, "maxiter": 20_000}),
    "Adam": ("Adam", {"gtol": 1e-9, "learning_rate": 0.05, "maxiter": 20_000}),
    "Newton": ("Newton", TIGHT),
    "L-BFGS": ("L-BFGS", {**TIGHT, "ftol": 0.0}),
    "L-BFGS-B": ("L-BFGS-B", {**TIGHT, "ftol": 0.0}),
    "PG": ("PG", {**TIGHT, "physics": physics, "physics_inv": physics_inv, "maxiter": 2000}),
    "optax": (optax.sgd(0.05), {**TIGHT, "maxiter": 20_000}),
}
A = np.array([0.5, -0.3])
WEIGHTS = np.array([1.0, 2.0])


def solve(a, name, adjoint="implicit", maxiter=None):
    method, options = METHODS[name]
    options = {**options, "adjoint": adjoint}
    if maxiter is not None:
        options["maxiter"] = maxiter
    return jd.minimize(objective, jnp.zeros(2), (a,), method, options=options)


def readout(a, name):
    """A scalar of the solution, as a model would use it."""
    return jnp.sum(solve(a, name).x * WEIGHTS * a)


def central(f, a, step=1e-5):
    """Central differences of f (scalar or vector valued) at a, columns per entry of a."""
    columns = [(f(a + step * e) - f(a - step * e)) / (2 * step) for e in np.eye(a.size)]
    return np.stack([np.asarray(c) for c in columns], axis=-1)


# The references' difference step. GD stops at one ulp of f (|g| ~ 1e-9, not gtol 1e-11),
# and where it stops moves x by ~4e-10 from solve to solve: over a step of 1e-5 that is
# 4e-5 in a derivative (entries ~0.9); over 1e-3, 4e-7, with a truncation error of ~2e-7.
STEP = 1e-3


@functools.cache
def reference(name):
    """Solves alone, and the derivatives by central differences of jitted solves."""
    x_of = jax.jit(lambda a: solve(a, name).x)
    grad_of = jax.jit(jax.grad(functools.partial(readout, name=name)))
    read = jax.jit(functools.partial(readout, name=name))
    return {
        "x": np.asarray(x_of(A)),
        "x_other": np.asarray(x_of(A[::-1] + 0.1)),
        "grad": central(read, A, STEP),
        "jac": central(x_of, A, STEP),
        "hessian": central(grad_of, A, STEP),
    }


CELLS = (
    "jit",
    "vmap",
    "grad",
    "jacfwd",
    "jacrev",
    "hessian",
    "grad(grad)",
    "shard_map",
    "pmap",
    "scan",
    "checkpoint",
    "unrolled",
)


def check_cell(name: str, cell: str) -> None:
    ref = reference(name)
    a = jnp.asarray(A)
    read = functools.partial(readout, name=name)
    x_of = lambda a: solve(a, name).x
    both = jnp.stack([a, a[::-1] + 0.1])
    # Central differences of solves (``STEP``) resolve the derivatives to about 1e-6.
    rtol, atol = 1e-5, 1e-5
    if cell == "jit":
        np.testing.assert_allclose(jax.jit(x_of)(a), ref["x"], rtol=1e-12, atol=1e-14)
    elif cell == "vmap":
        out = jax.vmap(x_of)(both)
        np.testing.assert_allclose(out, [ref["x"], ref["x_other"]], rtol=1e-10, atol=1e-12)
    elif cell == "grad":
        np.testing.assert_allclose(jax.grad(read)(a), ref["grad"], rtol=rtol, atol=atol)
    elif cell == "jacfwd":
        np.testing.assert_allclose(jax.jacfwd(x_of)(a), ref["jac"], rtol=rtol, atol=atol)
    elif cell == "jacrev":
        np.testing.assert_allclose(jax.jacrev(x_of)(a), ref["jac"], rtol=rtol, atol=atol)
    elif cell == "hessian":
        np.testing.assert_allclose(jax.hessian(read)(a), ref["hessian"], rtol=1e-4, atol=1e-4)
    elif cell == "grad(grad)":
        second = jax.grad(lambda a: jax.grad(read)(a)[0])(a)
        np.testing.assert_allclose(second, ref["hessian"][0], rtol=1e-4, atol=1e-4)
    elif cell == "shard_map":
        mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))
        spec = PartitionSpec("batch")
        mapped = jax.shard_map(jax.vmap(x_of), mesh=mesh, in_specs=spec, out_specs=spec)
        out = jax.jit(mapped)(both)
        np.testing.assert_allclose(out, [ref["x"], ref["x_other"]], rtol=1e-10, atol=1e-12)
    elif cell == "pmap":
        out = jax.pmap(x_of)(a[None])
        np.testing.assert_allclose(out[0], ref["x"], rtol=1e-10, atol=1e-12)
    elif cell == "scan":
        _, out = jax.lax.scan(lambda c, a: (c, x_of(a)), 0.0, both)
        np.testing.assert_allclose(out, [ref["x"], ref["x_other"]], rtol=1e-10, atol=1e-12)
    elif cell == "checkpoint":
        grad = jax.grad(jax.checkpoint(read))(a)
        np.testing.assert_allclose(grad, ref["grad"], rtol=rtol, atol=atol)
    elif cell == "unrolled":
        # Two iterations, far from converged: the derivative of what was computed, in x0
        # and in a, against central differences of the same unrolled solve.
        def x2(x0, a):
            method, options = METHODS[name]
            options = {**options, "adjoint": "unrolled", "maxiter": 2}
            return jd.minimize(objective, x0, (a,), method, options=options).x

        x2 = jax.jit(x2)
        x0 = jnp.array([1.0, -1.0])
        jac_x0, jac_a = jax.jit(jax.jacrev(x2, argnums=(0, 1)))(x0, a)
        np.testing.assert_allclose(jac_x0, central(lambda x: x2(x, a), x0), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(jac_a, central(lambda v: x2(x0, v), a), rtol=1e-6, atol=1e-8)
        # Not zero: two iterations from x0 still depend on it (PG's too: 0.28).
        assert np.abs(jac_x0).max() > 1e-3
        assert np.abs(jac_a).max() > 1e-4
    else:  # pragma: no cover
        raise AssertionError(cell)


@pytest.mark.parametrize("name", list(METHODS))
def test_transformation_matrix(name):
    """One row of the matrix: every transformation for one method (a failing cell is named
    in the assertion message)."""
    failures = []
    for cell in CELLS:
        try:
            check_cell(name, cell)
        except Exception as error:  # noqa: BLE001 (collected, reported below)
            failures.append(f"{cell}: {type(error).__name__}: {str(error)[:300]}")
    assert not failures, f"{name}:\n" + "\n".join(failures)
