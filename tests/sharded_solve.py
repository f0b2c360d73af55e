"""Run by tests/test_sharding.py in a subprocess with 8 forced CPU devices.

Solves a batch of problems with ``jax.vmap(minimize)`` (or ``least_squares``: method
"trf") under ``jax.jit`` with the batch axis
sharded over a one-axis mesh, and checks that every device holds (and solved) its own slice
and that the results equal the unsharded solve; then the same inside ``jax.shard_map``
(``minimize`` and ``minimize_batch``) and ``jax.pmap`` bodies.
"""

import functools
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxopt_dict as jd
from jaxopt_dict import _programs


def least_squares(x, a, b):
    return 0.5 * jnp.sum((a @ x["w"] - b) ** 2) + 0.05 * jnp.sum(x["w"] ** 4)


def residuals(x, a, b):
    """The same objective as residuals: ``least_squares`` is 0.5 * sum(residuals**2)."""
    return {"fit": a @ x["w"] - b, "penalty": jnp.sqrt(0.1) * x["w"] ** 2}


def main() -> int:
    assert jax.device_count() == 8, jax.devices()
    batch, m, n = 64, 12, 4
    a = jax.random.normal(jax.random.PRNGKey(0), (batch, m, n))
    b = jax.random.normal(jax.random.PRNGKey(1), (batch, m))
    x0 = {"w": jnp.zeros((batch, n))}
    method = sys.argv[1] if len(sys.argv) > 1 else "Newton"
    # L-BFGS-B in a box: the compact form and its conds (both branches must vary over the
    # mesh axes: one of them returned constants and failed under the default check_vma).
    # jd.least_squares ("trf", in the same box): its conds and the queue, likewise.
    bounds = (-0.3, 0.3) if method in ("L-BFGS-B", "trf") else None

    def solve_one(x, a, b):
        if method == "trf":
            return jd.least_squares(residuals, x, args=(a, b), bounds=bounds)
        return jd.minimize(least_squares, x, args=(a, b), method=method, bounds=bounds)

    def solve(x0, a, b):
        return jax.vmap(solve_one)(x0, a, b)

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    x0_s, a_s, b_s = jax.device_put((x0, a, b), sharding)
    res = jax.jit(solve)(x0_s, a_s, b_s)
    shards = res.x["w"].addressable_shards
    assert len({s.device for s in shards}) == 8, shards
    assert all(s.data.shape == (batch // 8, n) for s in shards), [s.data.shape for s in shards]
    assert res.nit.sharding.is_equivalent_to(sharding, 1), res.nit.sharding

    ref = jax.jit(solve)(x0, a, b)
    np.testing.assert_allclose(res.x["w"], ref.x["w"], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(res.nit, ref.nit)
    assert bool(res.success.all())

    # The same solves inside shard_map bodies (default check_vma) and pmap bodies, and
    # minimize_batch inside shard_map: each device its own slice, results as above.
    spec = PartitionSpec("batch")
    in_shard_map = jax.jit(jax.shard_map(solve, mesh=mesh, in_specs=spec, out_specs=spec))
    mapped = in_shard_map(x0_s, a_s, b_s)
    np.testing.assert_allclose(mapped.x["w"], ref.x["w"], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(mapped.nit, ref.nit)

    # jax.grad inside the shard_map body: the implicit rule's tangents of the integer
    # outputs (nit, status) must vary over the mesh axes, as their primals do (JAX
    # refused them: "Custom JVP rule must produce primal and tangent outputs with
    # corresponding shapes and dtypes").
    def grads(x0, a, b):
        total = lambda x, a, b: jnp.sum(solve_one(x, a, b).x["w"])
        return jax.vmap(jax.grad(total, argnums=2))(x0, a, b)

    grad_in_mesh = jax.jit(jax.shard_map(grads, mesh=mesh, in_specs=spec, out_specs=spec))
    np.testing.assert_allclose(
        grad_in_mesh(x0_s, a_s, b_s), jax.jit(grads)(x0, a, b), rtol=1e-8, atol=1e-10
    )

    # The same with fun closing over b, also with a jit or checkpoint between the grad and
    # the solve: a clear error, or with the jit a silent zero, before; the closure is
    # converted inside shard_map too now (its inputs cast to the mesh-varying type).
    def closure_grads(x0, a, b, between):
        def total(x, a, b):
            def solve_in(b):
                if method == "trf":
                    fun = lambda z: residuals(z, a, b)
                    return jnp.sum(jd.least_squares(fun, x, bounds=bounds).x["w"])
                fun = lambda z: least_squares(z, a, b)
                return jnp.sum(jd.minimize(fun, x, method=method, bounds=bounds).x["w"])

            return between(solve_in)(b)

        return jax.vmap(jax.grad(total, argnums=2))(x0, a, b)

    wanted = jax.jit(grads)(x0, a, b)
    betweens = [lambda g: g, jax.jit] + ([jax.checkpoint] if method == "Newton" else [])
    for between in betweens:
        body = functools.partial(closure_grads, between=between)
        got = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec))(x0_s, a_s, b_s)
        np.testing.assert_allclose(got, wanted, rtol=1e-8, atol=1e-10)

    # A closure over a value the body computes that does not vary over the mesh (review
    # of the hoisting above: it was cast twice and raised "pvary is a invariant->variant
    # collective"); such values stay in the closure, as before.
    def replicated_closure(x0, a, b):
        c = jnp.cos(jnp.float64(0.0))  # 1.0, made in the body: replicated

        def one(x, a, b):
            if method == "trf":
                fun = lambda z: jax.tree.map(lambda r: r * c, residuals(z, a, b))
                return jd.least_squares(fun, x, bounds=bounds)
            fun = lambda z: least_squares(z, a, b) * c
            return jd.minimize(fun, x, method=method, bounds=bounds)

        return jax.vmap(one)(x0, a, b).x["w"]

    body = jax.shard_map(replicated_closure, mesh=mesh, in_specs=spec, out_specs=spec)
    np.testing.assert_allclose(jax.jit(body)(x0_s, a_s, b_s), ref.x["w"], rtol=1e-10, atol=1e-12)

    def queue(x0, a, b):
        if method == "trf":
            return jd.least_squares_batch(residuals, x0, args=(a, b), bounds=bounds, lanes=4)
        return jd.minimize_batch(
            least_squares, x0, args=(a, b), method=method, bounds=bounds, lanes=4
        )

    queued = jax.jit(jax.shard_map(queue, mesh=mesh, in_specs=spec, out_specs=spec))(x0_s, a_s, b_s)
    np.testing.assert_allclose(queued.x["w"], ref.x["w"], rtol=1e-8, atol=1e-10)

    per_device = lambda t: t.reshape((8, batch // 8) + t.shape[1:])
    pmapped = jax.pmap(solve)(*jax.tree.map(per_device, (x0, a, b)))
    np.testing.assert_allclose(pmapped.x["w"].reshape(batch, n), ref.x["w"], rtol=1e-10, atol=1e-12)
    if method == "Newton":
        check_large_vmap(mesh, sharding, spec, solve)
    print(f"sharded solve ok: 8 devices, {batch} problems, nit max {int(res.nit.max())}")
    return 0


def check_large_vmap(mesh, sharding, spec, solve) -> None:
    """More than 256 problems per device: a vmapped solve inside ``shard_map`` runs each
    device's queue (``_programs._vmap_rule``), and under a plain ``jit`` over the mesh it
    batches plainly, keeping the batch sharded; both equal the unsharded solve."""
    batch, m, n = 8 * 260, 12, 4
    a = jax.random.normal(jax.random.PRNGKey(2), (batch, m, n))
    b = jax.random.normal(jax.random.PRNGKey(3), (batch, m))
    x0 = {"w": jax.random.normal(jax.random.PRNGKey(4), (batch, n))}
    ref = jd.minimize_batch(least_squares, x0, args=(a, b), method="Newton")
    args = jax.device_put((x0, a, b), sharding)
    queues = []
    queue = _programs._solve_queue_impl
    _programs._solve_queue_impl = lambda *a, **k: queues.append(a[0][1]) or queue(*a, **k)
    try:
        plain = jax.jit(solve)(*args)
        assert queues == [], queues
        assert plain.nit.sharding.is_equivalent_to(sharding, 1), plain.nit.sharding
        routed = jax.jit(jax.shard_map(solve, mesh=mesh, in_specs=spec, out_specs=spec))(*args)
        assert queues == [256], queues  # each device's 260 problems, 256 lanes
    finally:
        _programs._solve_queue_impl = queue
    for res in (plain, routed):
        np.testing.assert_allclose(res.x["w"], ref.x["w"], rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(res.nit, ref.nit)


if __name__ == "__main__":
    sys.exit(main())
