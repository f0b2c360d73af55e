"""Continuous batching (``minimize_batch``): every result equals the problem solved alone."""

import jax

jax.config.update("jax_enable_x64", True)

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxopt_dict as jd


def rosenbrock(x):
    return 100.0 * (x["b"] - x["a"] ** 2) ** 2 + (1.0 - x["a"]) ** 2


def shifted_quadratic(x, center, scale):
    return 0.5 * jnp.sum(scale * (x - center) ** 2) + 0.1 * jnp.sum(x**4)


N = 24
STARTS = jax.random.uniform(jax.random.PRNGKey(3), (N, 2), minval=-2.0, maxval=2.0)
X0 = {"a": STARTS[:, 0], "b": STARTS[:, 1]}


def _take(tree, i):
    return jax.tree.map(lambda v: v[i], tree)


def _single(i, method, **kw):
    return jd.minimize(rosenbrock, _take(X0, i), method=method, **kw)


@pytest.mark.parametrize("lanes", [1, 5, 100])
def test_each_result_equals_its_solve_alone(lanes):
    res = jd.minimize_batch(rosenbrock, X0, method="Newton", lanes=lanes)
    assert res.nit.shape == (N,) and res.x["a"].shape == (N,)
    for i in range(N):
        alone = _single(i, "Newton")
        assert int(res.nit[i]) == int(alone.nit)
        assert int(res.nfev[i]) == int(alone.nfev)
        assert int(res.status[i]) == int(alone.status)
        chex.assert_trees_all_close(_take(res.x, i), alone.x, rtol=1e-10)


def test_iteration_counts_differ_across_the_batch():
    # The point of a queue: problems finish at different times (else plain vmap is as good).
    res = jd.minimize_batch(rosenbrock, X0, method="Newton", lanes=4)
    assert int(res.nit.max()) >= 2 * int(res.nit.min())
    assert bool(res.success.all())


def test_batched_args_and_shared_bounds():
    key = jax.random.PRNGKey(0)
    centers = jax.random.normal(key, (10, 3)) * 2.0
    scales = jnp.linspace(0.5, 3.0, 10)[:, None] * jnp.ones((10, 3))
    x0 = jnp.zeros((10, 3))
    res = jd.minimize_batch(
        shifted_quadratic,
        x0,
        args=(centers, scales),
        method="GD",
        bounds=(-1.0, 1.0),
        lanes=3,
        options={"ftol": 0.0, "gtol": 1e-9},
    )
    for i in range(10):
        alone = jd.minimize(
            shifted_quadratic,
            x0[i],
            args=(centers[i], scales[i]),
            method="GD",
            bounds=(-1.0, 1.0),
            options={"ftol": 0.0, "gtol": 1e-9},
        )
        np.testing.assert_allclose(res.x[i], alone.x, rtol=1e-12, atol=1e-12)
        assert int(res.nit[i]) == int(alone.nit)
    assert float(jnp.max(jnp.abs(res.x))) <= 1.0


def bowl(x, center):
    return 0.5 * jnp.sum(jnp.array([1.0, 2.0, 3.0]) * (x - center) ** 2)


def test_lanes_finishing_together_wait_for_their_data():
    # Translated copies of one bowl, each started at the same offset from its center, take
    # the same evaluations: all 8 lanes free up on the same trip, but only lanes // 4 = 2
    # take a new problem per trip and the others idle. Each problem must still be solved
    # with its own args row.
    centers = jnp.arange(20.0).reshape(20, 1) * jnp.ones((20, 3))
    res = jd.minimize_batch(bowl, centers + 1.0, args=(centers,), method="L-BFGS", lanes=8)
    assert len(set(np.asarray(res.nfev).tolist())) == 1  # they do finish together
    for i in range(20):
        alone = jd.minimize(bowl, centers[i] + 1.0, args=(centers[i],), method="L-BFGS")
        np.testing.assert_allclose(res.x[i], alone.x, rtol=1e-12)
        assert int(res.nfev[i]) == int(alone.nfev)
    assert bool(res.success.all())


_VMAPPED_LBFGS = jax.jit(
    jax.vmap(lambda x0, c, s: jd.minimize(shifted_quadratic, x0, args=(c, s), method="L-BFGS"))
)


@settings(max_examples=6)
@given(
    lanes=st.sampled_from([1, 2, 3, 5, 12]),
    seed=st.integers(0, 2**16),
)
def test_random_queues_match_vmapped_solves(lanes, seed):
    # Random difficulties (curvatures over 3 decades) make lanes finish, wait and refill
    # in random orders; every problem must still come out as its own solve.
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, 3)) * 3.0
    scales = 10.0 ** rng.uniform(-1.0, 2.0, size=(12, 3))
    x0 = rng.normal(size=(12, 3))
    res = jd.minimize_batch(
        shifted_quadratic, x0, args=(centers, scales), method="L-BFGS", lanes=lanes
    )
    alone = _VMAPPED_LBFGS(x0, centers, scales)
    np.testing.assert_array_equal(res.nfev, alone.nfev)
    np.testing.assert_array_equal(res.status, alone.status)
    np.testing.assert_allclose(res.x, alone.x, rtol=1e-9, atol=1e-12)


def _batched_loss(solve_batch, centers, scales):
    res = solve_batch(centers, scales)
    return jnp.sum(jnp.sin(res.x)) + jnp.sum(res.fun)


def test_gradients_through_a_batch_equal_those_of_vmapped_solves():
    # Implicit differentiation per problem at its own solution, as for ``minimize``.
    rng = np.random.default_rng(5)
    centers = jnp.asarray(rng.normal(size=(7, 3)))
    scales = jnp.asarray(10.0 ** rng.uniform(-0.5, 1.0, size=(7, 3)))
    x0 = jnp.zeros((7, 3))
    opts = {"gtol": 1e-10, "ftol": 0.0}

    def queue(c, s):
        return jd.minimize_batch(
            shifted_quadratic, x0, args=(c, s), method="L-BFGS", lanes=3, options=opts
        )

    def vmapped(c, s):
        one = lambda x, c_, s_: jd.minimize(
            shifted_quadratic, x, args=(c_, s_), method="L-BFGS", options=opts
        )
        return jax.vmap(one)(x0, c, s)

    grad = jax.grad(_batched_loss, argnums=(1, 2))
    ours = grad(queue, centers, scales)
    reference = grad(vmapped, centers, scales)
    chex.assert_trees_all_close(ours, reference, rtol=1e-10, atol=1e-12)
    jitted = jax.jit(grad, static_argnums=0)(queue, centers, scales)
    chex.assert_trees_all_close(jitted, reference, rtol=1e-10, atol=1e-12)
    # And against central differences (step 1e-4; the solves stop at |g| ~ 1e-10, which
    # with the step's own error bounds the agreement at about 1e-5).
    direction = jnp.asarray(rng.normal(size=(7, 3)))
    step = 1e-4
    fd = (
        _batched_loss(queue, centers + step * direction, scales)
        - _batched_loss(queue, centers - step * direction, scales)
    ) / (2 * step)
    np.testing.assert_allclose(jnp.vdot(ours[0], direction), fd, rtol=1e-4)


def test_gradients_through_a_bounded_batch():
    # Coordinates on an active bound do not move with the data.
    centers = jnp.array([[2.0, 0.1], [-0.2, -3.0], [0.3, 0.2]])
    scales = jnp.ones((3, 2))

    def solution_sum(c):
        res = jd.minimize_batch(
            shifted_quadratic,
            jnp.zeros((3, 2)),
            args=(c, scales),
            method="L-BFGS-B",
            bounds=(-1.0, 1.0),
            lanes=2,
            options={"gtol": 1e-10, "ftol": 0.0},
        )
        return jnp.sum(res.x)

    g = jax.grad(solution_sum)(centers)
    active = np.array([[True, False], [False, True], [False, False]])
    np.testing.assert_array_equal(np.asarray(g)[active], 0.0)
    assert np.all(np.asarray(g)[~active] > 0.0)


def test_under_jit_with_traced_inputs():
    solve = jax.jit(lambda x0: jd.minimize_batch(rosenbrock, x0, method="Newton", lanes=6))
    res = solve(X0)
    np.testing.assert_allclose(res.x["a"], np.ones(N), atol=1e-4)


def test_bad_batches_are_rejected():
    with pytest.raises(ValueError, match="leading batch axis"):
        jd.minimize_batch(rosenbrock, {"a": jnp.zeros(3), "b": jnp.zeros(4)}, method="Newton")
    with pytest.raises(ValueError, match="disp or trace"):
        jd.minimize_batch(rosenbrock, X0, method="Newton", options={"trace": True})
    with pytest.raises(ValueError, match="lanes"):
        jd.minimize_batch(rosenbrock, X0, method="Newton", lanes=0)
