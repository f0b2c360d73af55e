"""``jax.vmap`` of ``minimize`` and ``least_squares`` runs the queue (continuous batching)
where that gives every problem its own result, and plain batching otherwise
(``_programs._vmap_rule``)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import take_row

import jaxopt_dict as jd
from jaxopt_dict import _programs

B = 300  # more problems than the queue's default lanes (256): the queue refills
assert B > _programs.DEFAULT_LANES

STARTS = np.random.default_rng(5).uniform(-2.0, 2.0, (B, 2))


@pytest.fixture
def queue_runs(monkeypatch):
    """The number of times the vmap rule chose the queue, counted at trace time.

    Each test defines its own objective: a compiled program (and its batched form) is
    cached per objective, and a cached one is not traced again."""
    calls = []
    queue = _programs._solve_queue_impl

    def counted(*args, **kwargs):
        calls.append(args[0][1:])  # (lanes, args_axes)
        return queue(*args, **kwargs)

    monkeypatch.setattr(_programs, "_solve_queue_impl", counted)
    return calls


def test_vmap_over_starts_runs_the_queue_with_each_result_its_own(queue_runs):
    def rosenbrock(x):
        return 100.0 * (x["b"] - x["a"] ** 2) ** 2 + (1.0 - x["a"]) ** 2

    x0 = {"a": jnp.asarray(STARTS[:, 0]), "b": jnp.asarray(STARTS[:, 1])}
    res = jax.jit(jax.vmap(lambda x: jd.minimize(rosenbrock, x)))(x0)
    assert queue_runs == [(256, ())]
    assert res.nit.shape == (B,) and bool(res.success.all())
    # The queue took problems in turn: their iteration counts differ, as they would alone.
    assert int(res.nit.max()) > int(res.nit.min())
    batch = jd.minimize_batch(rosenbrock, x0)
    for field in ("nit", "nfev", "status"):
        np.testing.assert_array_equal(getattr(res, field), getattr(batch, field))
    chex.assert_trees_all_close(res.x, batch.x, rtol=1e-12)
    for i in (0, 1, 257, B - 1):  # first-wave lanes and refilled ones
        alone = jd.minimize(rosenbrock, take_row(x0, i))
        assert int(res.nit[i]) == int(alone.nit) and int(res.nfev[i]) == int(alone.nfev)
        chex.assert_trees_all_close(take_row(res.x, i), alone.x, rtol=1e-9)


def _centers():
    return jnp.asarray(np.random.default_rng(6).normal(size=(B, 3)) * 2.0)


def test_vmap_over_one_arg_shares_the_start_and_the_other_args(queue_runs):
    def quartic(x, center, scale):
        return 0.5 * jnp.sum(scale * (x - center) ** 2) + 0.1 * jnp.sum(x**4)

    centers, scale, x0 = _centers(), jnp.asarray([1.0, 2.0, 3.0]), jnp.zeros(3)
    solve = jax.vmap(lambda c: jd.minimize(quartic, x0, args=(c, scale), method="L-BFGS"))
    res = solve(centers)
    assert queue_runs == [(256, (0, None))]
    batch = jd.minimize_batch(
        quartic, jnp.zeros((B, 3)), args=(centers, scale), args_axes=(0, None), method="L-BFGS"
    )
    np.testing.assert_array_equal(res.nit, batch.nit)
    chex.assert_trees_all_close(res.x, batch.x, rtol=1e-12)
    # Each a stationary point (L-BFGS stops on gtol = 1e-5 or on scipy's ftol).
    assert bool(res.success.all())
    grads = jax.vmap(jax.grad(quartic), in_axes=(0, 0, None))(res.x, centers, scale)
    assert float(jnp.max(jnp.abs(grads))) < 1e-3


def test_gradients_through_a_routed_vmap_are_each_problems_own(queue_runs):
    def quartic(x, center):
        return 0.5 * jnp.sum((x - center) ** 2) + 0.25 * jnp.sum(x**4)

    centers = _centers()

    def total(centers):
        xs = jax.vmap(lambda c: jd.minimize(quartic, jnp.zeros(3), args=(c,)).x)(centers)
        return jnp.sum(jnp.sin(xs))

    grad = jax.jit(jax.grad(total))(centers)
    assert len(queue_runs) >= 1 and all(run == (256, (0,)) for run in queue_runs)
    for i in (0, 200, B - 1):
        alone = jax.grad(
            lambda c: jnp.sum(jnp.sin(jd.minimize(quartic, jnp.zeros(3), args=(c,)).x))
        )(centers[i])
        np.testing.assert_allclose(grad[i], alone, rtol=1e-7, atol=1e-10)
        # and against the closed form: x + x^3 = c, so dx/dc = 1 / (1 + 3 x^2)
        x = jd.minimize(quartic, jnp.zeros(3), args=(centers[i],)).x
        np.testing.assert_allclose(grad[i], jnp.cos(x) / (1.0 + 3.0 * x**2), rtol=1e-6)


def _paraboloid(x, c):
    return jnp.sum((x - c) ** 2) + jnp.sum(x**4)


@pytest.mark.parametrize(
    "case",
    ["few problems", "batched option", "batched bounds", "trace"],
)
def test_plain_batching_where_the_queue_would_not_give_the_same_results(queue_runs, case):
    centers = _centers()
    n = 40 if case == "few problems" else B
    x0 = jnp.zeros(3)

    def one(c, g, lo):
        options = {"gtol": g, "trace": case == "trace", "maxiter": 60}
        return jd.minimize(_paraboloid, x0, args=(c,), bounds=(lo, 10.0), options=options)

    gtols = jnp.where(jnp.arange(n) % 2 == 0, 1e-3, 1e-9)
    lows = jnp.where(jnp.arange(n) % 3 == 0, 0.5, -10.0)
    in_axes = (
        0,
        0 if case == "batched option" else None,
        0 if case == "batched bounds" else None,
    )
    gtol = gtols if case == "batched option" else jnp.asarray(1e-6)
    low = lows if case == "batched bounds" else jnp.asarray(-10.0)
    res = jax.vmap(one, in_axes=in_axes)(centers[:n], gtol, low)
    assert queue_runs == []
    for i in (0, 1, 3, n - 1):
        alone = one(
            centers[i],
            gtol[i] if in_axes[1] == 0 else gtol,
            low[i] if in_axes[2] == 0 else low,
        )
        assert int(res.nit[i]) == int(alone.nit)
        np.testing.assert_allclose(res.x[i], alone.x, rtol=1e-10)


def test_vmap_of_least_squares_runs_the_queue(queue_runs):
    t = jnp.linspace(0.0, 5.0, 30)
    rng = np.random.default_rng(7)
    a, k = rng.uniform(0.5, 2.0, (B, 1)), rng.uniform(0.2, 2.0, (B, 1))
    ys = jnp.asarray(a * np.exp(-k * np.asarray(t)) + 0.01 * rng.normal(size=(B, 30)))

    def decay(p, t, y):
        return p[0] * jnp.exp(-p[1] * t) - y

    x0 = jnp.asarray([1.0, 1.0])
    res = jax.jit(jax.vmap(lambda y: jd.least_squares(decay, x0, args=(t, y))))(ys)
    # (least squares' hidden leading arg, f_scale, is shared too); on CPU 32 lanes here
    assert len(queue_runs) == 1 and queue_runs[0][1][-2:] == (None, 0)
    assert queue_runs[0][0] == _programs.default_lanes(True, B) == 32  # (long_tail)
    batch = jd.least_squares_batch(
        decay, jnp.broadcast_to(x0, (B, 2)), args=(t, ys), args_axes=(None, 0)
    )
    np.testing.assert_array_equal(res.nfev, batch.nfev)
    chex.assert_trees_all_close(res.x, batch.x, rtol=1e-12)
    for i in (0, 280):
        alone = jd.least_squares(decay, x0, args=(t, ys[i]))
        assert int(res.nfev[i]) == int(alone.nfev)
        np.testing.assert_allclose(res.x[i], alone.x, rtol=1e-9)
        np.testing.assert_allclose(res.cost[i], alone.cost, rtol=1e-12)


def test_closures_over_traced_values(queue_runs):
    # fun closing over an outer vmap's variable: the queue would trace fun again and bake
    # the traced value in; such batches stay plain. A jit argument fun closes over is
    # data of the solve (it may be differentiated later), and the queue runs.
    def solve(x, w):
        return jd.minimize(lambda z: jnp.sum((z - w) ** 2) + jnp.sum(z**4), x)

    starts = jnp.asarray(STARTS)
    nested = jax.vmap(lambda w: jax.vmap(lambda x: solve(x, w))(starts))(jnp.asarray([0.5, 1.0]))
    assert queue_runs == []
    res = jax.jit(lambda xs, w: jax.vmap(lambda x: solve(x, w))(xs))(starts, jnp.asarray(0.5))
    assert queue_runs == [(256, (None,))]  # fun's data (w) is shared by every problem
    for i in (0, B - 1):
        alone = solve(starts[i], jnp.asarray(0.5))
        assert int(res.nit[i]) == int(alone.nit) == int(nested.nit[0, i])
        np.testing.assert_allclose(res.x[i], alone.x, rtol=1e-10)
        np.testing.assert_allclose(nested.x[0, i], alone.x, rtol=1e-10)


def test_a_collective_over_the_vmap_axis_batches_plainly(queue_runs):
    # fun uses lax.psum over the vmap's named axis: x* = a / sum(a) over the batch.
    a = jnp.linspace(1.0, 2.0, B)

    def fun(z, a_i):
        return jnp.sum((z - a_i / jax.lax.psum(a_i, "i")) ** 2)

    def one(a_i):
        return jd.minimize(fun, jnp.zeros(2), args=(a_i,)).x

    xs = jax.vmap(one, axis_name="i")(a)
    assert queue_runs == []
    np.testing.assert_allclose(xs[:, 0], a / jnp.sum(a), rtol=1e-8)
