"""One of the two processes that tests/test_distributed.py starts with ``jax.distributed``.

Usage: ``python distributed_worker.py PORT PROCESS_ID`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``: two processes with two CPU devices
each, four global devices. The coordinator runs in process 0 on 127.0.0.1:PORT.

A batch of problems is sharded along its batch axis over a mesh of all four devices
(both processes'); each process builds only the rows its own devices hold
(``jax.make_array_from_process_local_data``), runs the same jitted solves as the other
process, and checks the shards it can address against ``jd.minimize`` on each of its
problems alone: x, fun, nit, nfev, status and success. Two solves per method:
``jit(vmap(minimize))`` on the global arrays, whose loop runs until every problem of the
global batch has stopped, so its loop condition is all-reduced across both processes
(gloo collectives between the CPU devices); and ``minimize_batch`` inside ``shard_map``,
each device its own queue. Prints one "distributed solve ok" line on success.
"""

import os
import sys
import traceback

# Before JAX initializes: two CPU devices in this process.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax

jax.config.update("jax_enable_x64", True)
# Cross-process collectives on CPU devices (the default of jax 0.10, named for older ones).
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxopt_dict as jd

NUM_PROCESSES = 2
LOCAL_DEVICES = 2
BATCH = 16  # four problems per device
M, N = 10, 5  # least-squares rows and unknowns
N_ROSEN = 4
BOUNDS = (-0.5, {"w": np.array([0.2, 0.3, 0.4, 0.5, 0.6])})  # L-BFGS-B, shared by all
# shard_map with its defaults (check_vma on) for both methods.
SHARD_MAP_KW = {"L-BFGS-B": {}, "Newton": {}}


def least_squares(x, p):
    r = p["a"] @ x["w"] - p["b"]
    return 0.5 * jnp.sum(r**2) + 0.05 * jnp.sum(x["w"] ** 4)


def rosenbrock(x, p):
    z = x["z"]
    return jnp.sum(p["c"] * (z[1:] - z[:-1] ** 2) ** 2 + (p["s"] - z[:-1]) ** 2)


def lsq_problem(i):
    """Problem i of the global batch, from its own seed: a host reads only its rows."""
    rng = np.random.default_rng(1000 + i)
    x0 = {"w": np.zeros(N)}
    p = {
        "a": rng.normal(size=(M, N)),
        "b": 3.0 * rng.normal(size=M),
    }
    return x0, p


def rosen_problem(i):
    rng = np.random.default_rng(2000 + i)
    x0 = {"z": rng.uniform(-1.5, 0.5, size=N_ROSEN)}
    p = {"c": rng.uniform(5.0, 100.0), "s": rng.uniform(0.5, 1.5)}
    return x0, p


def solve_lbfgsb(x0, p):
    return jd.minimize(least_squares, x0, (p,), method="L-BFGS-B", bounds=BOUNDS)


def solve_newton(x0, p):
    return jd.minimize(rosenbrock, x0, (p,), method="Newton")


def batch_lbfgsb(x0, p):
    return jd.minimize_batch(least_squares, x0, (p,), method="L-BFGS-B", bounds=BOUNDS, lanes=2)


def batch_newton(x0, p):
    return jd.minimize_batch(rosenbrock, x0, (p,), method="Newton", lanes=2)


def local_rows(sharding):
    """The global batch rows held by this process's devices (a contiguous range)."""
    rows = set()
    for index in sharding.addressable_devices_indices_map((BATCH,)).values():
        rows.update(range(BATCH)[index[0]])
    rows = sorted(rows)
    assert rows == list(range(rows[0], rows[-1] + 1)), rows
    return rows


def global_batch(sharding, rows, problem):
    """(x0, p) as global arrays sharded along the batch axis, built from this process's rows."""
    local = [problem(i) for i in rows]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *local)

    def to_global(leaf):
        shape = (BATCH,) + leaf.shape[1:]
        return jax.make_array_from_process_local_data(sharding, leaf, shape)

    return jax.tree.map(to_global, stacked)


def check_shards(name, res, refs, rtol):
    """Every row in this process's shards equals ``minimize`` on that problem alone."""
    x_leaf = jax.tree.leaves(res.x)[0]
    shards = x_leaf.addressable_shards
    assert len(shards) == LOCAL_DEVICES, (name, shards)
    assert {s.device for s in shards} == set(jax.local_devices()), (name, shards)
    assert all(s.data.shape[0] == BATCH // jax.device_count() for s in shards), name
    fields = ("fun", "nit", "nfev", "status", "success")
    by_device = {
        f: {s.device: np.asarray(s.data) for s in getattr(res, f).addressable_shards}
        for f in fields
    }
    checked = set()
    for shard in shards:
        got = {f: by_device[f][shard.device] for f in fields}
        for k, i in enumerate(range(BATCH)[shard.index[0]]):
            ref = refs[i]
            np.testing.assert_allclose(
                np.asarray(shard.data)[k],
                np.asarray(jax.tree.leaves(ref.x)[0]),
                rtol=rtol,
                atol=1e-12,
                err_msg=f"{name}: problem {i}: x",
            )
            np.testing.assert_allclose(
                got["fun"][k], ref.fun, rtol=rtol, atol=1e-12, err_msg=f"{name}: problem {i}"
            )
            for f in ("nit", "nfev", "status", "success"):
                assert got[f][k] == getattr(ref, f), (name, i, f, got[f][k], getattr(ref, f))
            checked.add(i)
    assert checked == set(refs), (name, sorted(checked))


def main() -> int:
    port, process_id = sys.argv[1], int(sys.argv[2])
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=NUM_PROCESSES,
        process_id=process_id,
        initialization_timeout=60,
        shutdown_timeout_seconds=30,
    )
    assert jax.process_index() == process_id, jax.process_index()
    assert jax.process_count() == NUM_PROCESSES, jax.process_count()
    assert jax.local_device_count() == LOCAL_DEVICES, jax.local_devices()
    assert jax.device_count() == NUM_PROCESSES * LOCAL_DEVICES, jax.devices()

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    rows = local_rows(sharding)
    assert len(rows) == BATCH // NUM_PROCESSES, rows

    spec = PartitionSpec("batch")
    cases = [
        ("L-BFGS-B", lsq_problem, solve_lbfgsb, batch_lbfgsb),
        ("Newton", rosen_problem, solve_newton, batch_newton),
    ]
    report = []
    for method, problem, solve, queue in cases:
        # Each problem of this process alone (one compiled program, a call per problem).
        alone = jax.jit(solve)
        refs = {i: alone(*problem(i)) for i in rows}
        assert all(bool(r.success) for r in refs.values()), method
        if method == "L-BFGS-B":  # the box is active at some solutions
            lower, upper = BOUNDS[0], BOUNDS[1]["w"]
            w = np.stack([np.asarray(r.x["w"]) for r in refs.values()])
            assert np.any(w == lower) and np.any(w == upper), w
        x0, p = global_batch(sharding, rows, problem)

        # The vmapped solve under jit on the global arrays: one program over the four
        # devices of both processes. Its while_loop runs until the last problem of the
        # global batch stops: the loop condition is an all-reduce across the processes.
        vmapped = jax.jit(jax.vmap(solve)).lower(x0, p).compile()
        assert "all-reduce" in vmapped.as_text(), method
        res = vmapped(x0, p)
        assert res.nit.sharding.is_equivalent_to(sharding, 1), res.nit.sharding
        check_shards(f"{method} vmap", res, refs, rtol=1e-10)

        # minimize_batch inside shard_map: each device runs its own queue on its rows.
        mapped = jax.jit(
            jax.shard_map(queue, mesh=mesh, in_specs=spec, out_specs=spec, **SHARD_MAP_KW[method])
        )
        check_shards(f"{method} minimize_batch", mapped(x0, p), refs, rtol=1e-8)
        nits = sorted({int(r.nit) for r in refs.values()})
        report.append(f"{method} nit {nits[0]}-{nits[-1]}")

    # The last solve's iteration counts gathered from both processes: every process
    # prints the same global list (the test compares them).
    nit = multihost_utils.process_allgather(res.nit, tiled=True)
    assert nit.shape == (BATCH,), nit.shape
    assert [int(n) for n in nit[rows]] == [int(refs[i].nit) for i in rows], nit
    print(
        f"distributed solve ok: process {process_id} of {jax.process_count()}, "
        f"{jax.device_count()} devices, rows {rows[0]}-{rows[-1]}, {'; '.join(report)}; "
        f"global Newton nit {[int(n) for n in nit]}",
        flush=True,
    )
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:  # noqa: BLE001 (any failure: report it, exit at once)
        # Exit at once: a normal exit would wait at jax.distributed's shutdown barrier for
        # the other process, which may be waiting on this one.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.exit(code)
