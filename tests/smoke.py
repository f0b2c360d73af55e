"""Smoke check of an installed jaxopt_dict: ``python tests/smoke.py``; exits 1 on a failure.

Not a pytest module (the name does not match ``test_*.py``): CI runs it in fresh virtualenvs
that hold only the runtime dependencies (jax, jaxlib, optax, numpy) at the declared floor
versions and at the newest ones, to check that the floors in pyproject.toml are true.

Each method once (GD, momentum, Adam, Newton, L-BFGS, L-BFGS-B with bounds, PG with and
without ``physics_inv``, an optax transformation), ``jit`` with traced data, ``vmap``,
``jax.grad`` through a solve (also with an active bound), and ``minimize_batch``; every
result is compared with its closed form.
"""

from __future__ import annotations

import sys
import time
import traceback

import jax
import jaxlib

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import optax

import jaxopt_dict as jd

# f(x; c) = sum_i d_i (x_i - c_i)^2 / 2 over a dict with leaves of different shapes:
# the minimizer is c, and in a box [lo, hi] it is clip(c, lo, hi) (d is diagonal).
D = {"a": jnp.asarray([1.0, 3.0]), "b": jnp.asarray([[2.0, 0.5], [1.5, 4.0]])}
C = {"a": jnp.asarray([0.5, -1.0]), "b": jnp.asarray([[1.0, 2.0], [-0.5, 0.25]])}
X0 = {"a": jnp.zeros(2), "b": jnp.zeros((2, 2))}


def quadratic(x, c):
    return sum(jnp.sum(0.5 * d * (v - w) ** 2) for d, v, w in zip(*map(jax.tree.leaves, (D, x, c))))


def close(got, want, atol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=atol)


def check_method(method, atol, options=None, bounds=None, want=C):
    res = jd.minimize(quadratic, X0, (C,), method, bounds=bounds, options=options)
    assert bool(res.success), f"{method}: {res.message} (status {int(res.status)})"
    close(res.x, want, atol)
    assert jax.tree.structure(res.x) == jax.tree.structure(X0)


def gd():
    check_method("GD", 1e-5)


def momentum():
    check_method("momentum", 1e-4, {"learning_rate": 0.05, "maxiter": 5000})


def adam():
    check_method("Adam", 1e-4, {"learning_rate": 0.05, "maxiter": 5000})


def newton():
    check_method("Newton", 1e-8)


def lbfgs():
    check_method("L-BFGS", 1e-6)


def lbfgsb_bounds():
    lo, hi = -0.4, 0.8
    want = jax.tree.map(lambda c: jnp.clip(c, lo, hi), C)
    check_method("L-BFGS-B", 1e-6, bounds=(lo, hi), want=want)


def optax_rule():
    check_method(optax.sgd(0.1, momentum=0.5), 1e-4, {"maxiter": 5000})


def _pg(physics_inv):
    # The PBDL chapter's example: L(y) = |y|^2, y = [x0, x1^2]. PG's Newton step in y space
    # scales y by (1 - lr), so after k steps y = (1 - lr)^k y0 and x = physics_inv(y).
    lr, k = 0.3, 10
    x0 = jnp.asarray([3.0, 3.0])
    opts = {
        "learning_rate": lr,
        "gtol": 0.0,
        "maxiter": k,
        "physics": lambda x: jnp.stack([x[0], x[1] ** 2]),
    }
    if physics_inv:
        opts["physics_inv"] = lambda y: jnp.stack([y[0], jnp.sqrt(y[1])])
    res = jd.minimize(lambda y: jnp.sum(y**2), x0, method="PG", options=opts)
    assert int(res.status) == jd.Status.MAX_ITER and int(res.nit) == k, res.message
    want = [3.0 * (1 - lr) ** k, 3.0 * (1 - lr) ** (k / 2)]
    np.testing.assert_allclose(np.asarray(res.x), want, rtol=1e-5)


def pg_physics_inv():
    _pg(physics_inv=True)


def pg_numerical_inverse():
    _pg(physics_inv=False)


def jit_traced_data():
    solve = jax.jit(lambda x0, c: jd.minimize(quadratic, x0, (c,), "L-BFGS", tol=1e-10))
    res = solve(X0, C)
    close(res.x, C, 1e-6)
    shifted = jax.tree.map(lambda c: c + 1.0, C)
    close(solve(X0, shifted).x, shifted, 1e-6)  # new data, same program


def vmap_batch():
    centers = jax.tree.map(lambda c: jnp.stack([c, 2 * c, -c]), C)
    solve = jax.vmap(lambda c: jd.minimize(quadratic, X0, (c,), "L-BFGS-B", tol=1e-10))
    res = jax.jit(solve)(centers)
    assert np.asarray(res.success).shape == (3,) and np.all(np.asarray(res.success))
    close(res.x, centers, 1e-6)


def grad_through_solve():
    # argmin_x sum(exp(x) - a x) = log(a): d sum(x*) / da = 1 / a.
    def fun(x, a):
        return jnp.sum(jnp.exp(x) - a * x)

    def total(a, method):
        return jnp.sum(jd.minimize(fun, jnp.zeros(3), (a,), method, tol=1e-12).x)

    a = jnp.asarray([0.5, 2.0, 4.0])
    for method in ("L-BFGS", "L-BFGS-B", "Newton"):
        np.testing.assert_allclose(jax.grad(total)(a, method), 1.0 / a, rtol=1e-6)


def grad_in_a_closure():
    # The same, fun closing over a instead of taking it through args (jax.closure_convert
    # at the front door; JAX's internal top-level test differs across versions).
    def total(a):
        fun = lambda x: jnp.sum(jnp.exp(x) - a * x)
        return jnp.sum(jd.minimize(fun, jnp.zeros(3), method="L-BFGS", tol=1e-12).x)

    a = jnp.asarray([0.5, 2.0, 4.0])
    np.testing.assert_allclose(jax.grad(total)(a), 1.0 / a, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(total))(a), 1.0 / a, rtol=1e-6)


def grad_with_active_bound():
    # In [-1, 1] x* = clip(log a, -1, 1): the bound held fixed gives derivative 0 there.
    def fun(x, a):
        return jnp.sum(jnp.exp(x) - a * x)

    def total(a):
        return jnp.sum(
            jd.minimize(fun, jnp.zeros(3), (a,), "L-BFGS-B", bounds=(-1, 1), tol=1e-12).x
        )

    a = jnp.asarray([0.1, 2.0, 10.0])  # log a = -2.3 (at -1), 0.69 (free), 2.3 (at 1)
    np.testing.assert_allclose(jax.grad(total)(a), [0.0, 0.5, 0.0], atol=1e-6)


def large_vmap_and_its_gradient():
    # 300 problems: jax.vmap(minimize) runs the queue (custom_vmap), each result its own,
    # and the gradient through it is each problem's implicit one: x* = log(a), dx*/da = 1/a.
    def fun(x, a):
        return jnp.sum(jnp.exp(x) - a * x)

    a = jnp.linspace(0.5, 4.0, 600).reshape(300, 2)
    one = lambda a: jd.minimize(fun, jnp.zeros(2), (a,), "L-BFGS-B", tol=1e-12).x
    xs = jax.jit(jax.vmap(one))(a)
    np.testing.assert_allclose(np.asarray(xs), np.log(np.asarray(a)), atol=1e-7)
    grad = jax.grad(lambda a: jnp.sum(jax.vmap(one)(a)))(a)
    np.testing.assert_allclose(np.asarray(grad), 1.0 / np.asarray(a), rtol=1e-6)


def minimize_batch():
    centers = jnp.arange(10.0).reshape(5, 2)
    res = jd.minimize_batch(
        lambda x, c: jnp.sum((x - c) ** 2), jnp.zeros((5, 2)), (centers,), "Newton", lanes=2
    )
    assert np.all(np.asarray(res.success)), res.message
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(centers), atol=1e-8)


def in_shard_map():
    # minimize inside a shard_map body (default checks) on a one-device mesh: the mesh axis
    # is manual there, so the loop's carries must vary over it as the data do.
    from jax.sharding import Mesh, PartitionSpec

    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:  # jax < 0.6.1 (hypothetical floor): the experimental module
        from jax.experimental.shard_map import shard_map
    mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))
    spec = PartitionSpec("batch")
    centers = jnp.arange(8.0).reshape(4, 2)

    def solve(c):
        return jax.vmap(lambda ci: jd.minimize(lambda x: jnp.sum((x - ci) ** 2), jnp.zeros(2)).x)(c)

    x = jax.jit(shard_map(solve, mesh=mesh, in_specs=spec, out_specs=spec))(centers)
    np.testing.assert_allclose(np.asarray(x), np.asarray(centers), atol=1e-6)


def float32_solve():
    x0 = jnp.asarray([-1.2, 1.0], jnp.float32)

    def rosen(x):
        return 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2

    res = jd.minimize(rosen, x0, method="L-BFGS-B", options={"gtol": 1e-4})
    assert res.x.dtype == jnp.float32 and bool(res.success), res.message
    np.testing.assert_allclose(np.asarray(res.x), [1.0, 1.0], atol=2e-3)


def least_squares():
    """trf in a box, lm, matrix-free gauss-newton, a batch and an implicit derivative."""
    t = jnp.linspace(0.0, 2.0, 15)
    y = 2.0 * jnp.exp(-1.5 * t)

    def residuals(p, y):
        return p[0] * jnp.exp(-p[1] * t) - y

    p0 = jnp.asarray([1.0, 1.0])
    for kwargs in ({}, {"method": "lm"}, {"method": "gauss-newton", "options": {"jac": "matvec"}}):
        res = jd.least_squares(residuals, p0, args=(y,), **kwargs)
        assert bool(res.success), (kwargs, res.message)
        close(res.x, jnp.asarray([2.0, 1.5]), 1e-6)
    lower, upper = jnp.asarray([0.0, 0.0]), jnp.asarray([1.8, 5.0])
    boxed = jd.least_squares(residuals, p0, args=(y,), bounds=(lower, upper))
    # minimize reads scipy's sequence of (lo, hi) pairs (optax 0.2.5 has no tree.size);
    # least_squares reads two number lists as (lb, ub), as scipy's least_squares.
    cost = lambda p, y: 0.5 * jnp.sum(residuals(p, y) ** 2)
    pairs = jd.minimize(cost, p0, args=(y,), bounds=[(0.0, 1.8), (0.0, 5.0)])
    close(pairs.x, boxed.x, 1e-5)
    lists = jd.least_squares(residuals, p0, args=(y,), bounds=([0.0, 0.0], [1.8, 5.0]))
    close(lists.x, boxed.x, 1e-12)
    assert int(boxed.active_mask[0]) == 1 and float(boxed.x[0]) <= 1.8
    batch = jd.least_squares_batch(residuals, jnp.stack([p0, p0]), args=(jnp.stack([y, 2 * y]),))
    close(batch.x[:, 0], jnp.asarray([2.0, 4.0]), 1e-6)
    # a* scales with y (k* does not): sum_i y_i d a*/d y_i = a* = 2 (Euler, degree 1).
    da = jax.grad(lambda y: jd.least_squares(residuals, p0, args=(y,)).x[0])(y)
    close(jnp.sum(da * y), jnp.asarray(2.0), 1e-6)


CHECKS = [
    gd,
    momentum,
    adam,
    newton,
    lbfgs,
    lbfgsb_bounds,
    optax_rule,
    pg_physics_inv,
    pg_numerical_inverse,
    jit_traced_data,
    vmap_batch,
    grad_through_solve,
    grad_in_a_closure,
    grad_with_active_bound,
    large_vmap_and_its_gradient,
    minimize_batch,
    in_shard_map,
    float32_solve,
    least_squares,
]


def main() -> int:
    print(
        f"smoke: jaxopt_dict {jd.__version__}, jax {jax.__version__}, "
        f"jaxlib {jaxlib.__version__}, "
        f"optax {optax.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}"
    )
    failed = []
    for check in CHECKS:
        start = time.perf_counter()
        try:
            check()
        except Exception:  # noqa: BLE001  (report every check, then exit 1)
            failed.append(check.__name__)
            print(f"FAIL {check.__name__}")
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {check.__name__} ({time.perf_counter() - start:.1f} s)")
    print(f"smoke: {len(CHECKS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
