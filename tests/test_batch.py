"""Continuous batching (``minimize_batch``): every result equals the problem solved alone."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import take_row

import jaxopt_dict as jd


def rosenbrock(x):
    return 100.0 * (x["b"] - x["a"] ** 2) ** 2 + (1.0 - x["a"]) ** 2


def shifted_quadratic(x, center, scale):
    return 0.5 * jnp.sum(scale * (x - center) ** 2) + 0.1 * jnp.sum(x**4)


N = 24
STARTS = jax.random.uniform(jax.random.PRNGKey(3), (N, 2), minval=-2.0, maxval=2.0)
X0 = {"a": STARTS[:, 0], "b": STARTS[:, 1]}


def _single(i, method, **kw):
    return jd.minimize(rosenbrock, take_row(X0, i), method=method, **kw)


@pytest.mark.parametrize("lanes", [1, 5, 100])
def test_each_result_equals_its_solve_alone(lanes):
    res = jd.minimize_batch(rosenbrock, X0, method="Newton", lanes=lanes)
    assert res.nit.shape == (N,) and res.x["a"].shape == (N,)
    for i in range(N):
        alone = _single(i, "Newton")
        assert int(res.nit[i]) == int(alone.nit)
        assert int(res.nfev[i]) == int(alone.nfev)
        assert int(res.status[i]) == int(alone.status)
        chex.assert_trees_all_close(take_row(res.x, i), alone.x, rtol=1e-10)


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
    # the same evaluations: all 8 lanes free up on the same trip, but only lanes // 2 = 4
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


def ridge_logistic(w, features, labels, penalty):
    """Logistic loss of one problem's labels on shared features, plus a ridge term."""
    margins = labels * (features @ w)
    return jnp.mean(jnp.logaddexp(0.0, -margins)) + 0.5 * penalty * jnp.sum(w**2)


def _shared_design(n_problems=9, n_samples=40, n_features=4, seed=11):
    rng = np.random.default_rng(seed)
    features = jnp.asarray(rng.normal(size=(n_samples, n_features)))
    labels = jnp.asarray(np.sign(rng.normal(size=(n_problems, n_samples))))
    return features, labels, jnp.zeros((n_problems, n_features))


def test_shared_args_are_passed_once_and_each_result_equals_its_solve_alone():
    features, labels, w0 = _shared_design()
    res = jd.minimize_batch(
        ridge_logistic,
        w0,
        args=(features, labels, 0.1),
        args_axes=(None, 0, None),
        method="L-BFGS-B",
        lanes=4,
    )
    for i in range(labels.shape[0]):
        alone = jd.minimize(ridge_logistic, w0[i], args=(features, labels[i], 0.1))
        assert (int(res.nit[i]), int(res.nfev[i])) == (int(alone.nit), int(alone.nfev))
        assert int(res.status[i]) == int(alone.status)
        np.testing.assert_allclose(res.x[i], alone.x, rtol=1e-10, atol=1e-12)
    # Every arg shared: only x0 is batched (the same problem from several starts).
    starts = jnp.linspace(-1.0, 1.0, 5)[:, None] * jnp.ones((5, 4))
    same = jd.minimize_batch(
        ridge_logistic, starts, args=(features, labels[0], 0.1), args_axes=None, lanes=2
    )
    for i in range(5):
        alone = jd.minimize(ridge_logistic, starts[i], args=(features, labels[0], 0.1))
        assert int(same.nfev[i]) == int(alone.nfev)
        np.testing.assert_allclose(same.x[i], alone.x, rtol=1e-10, atol=1e-12)


def test_gradients_in_shared_args_sum_over_the_problems():
    # As through jax.vmap with in_axes=None: the derivative in a shared arg is the sum of
    # every problem's.
    features, labels, w0 = _shared_design()
    opts = {"gtol": 1e-10}

    def queue(features, labels, penalty):
        res = jd.minimize_batch(
            ridge_logistic,
            w0,
            args=(features, labels, penalty),
            args_axes=(None, 0, None),
            lanes=4,
            options=opts,
        )
        return jnp.sum(jnp.sin(res.x)) + jnp.sum(res.fun)

    def vmapped(features, labels, penalty):
        one = lambda w, f, y, p: jd.minimize(ridge_logistic, w, args=(f, y, p), options=opts)
        res = jax.vmap(one, in_axes=(0, None, 0, None))(w0, features, labels, penalty)
        return jnp.sum(jnp.sin(res.x)) + jnp.sum(res.fun)

    grad = jax.grad(queue, argnums=(0, 1, 2))
    ours = grad(features, labels, 0.1)
    reference = jax.grad(vmapped, argnums=(0, 1, 2))(features, labels, 0.1)
    assert ours[0].shape == features.shape and ours[2].shape == ()
    # (Same solutions; the conjugate-gradient solves round differently, ~1e-11.)
    chex.assert_trees_all_close(ours, reference, rtol=1e-8, atol=1e-10)
    # Central differences in the shared penalty (step 1e-4; as above, the solves' own
    # stopping error bounds the agreement at about 1e-5).
    step = 1e-4
    fd = (queue(features, labels, 0.1 + step) - queue(features, labels, 0.1 - step)) / (2 * step)
    np.testing.assert_allclose(ours[2], fd, rtol=1e-4)


def test_bad_args_axes_are_rejected():
    features, labels, w0 = _shared_design(n_problems=3)
    solve = lambda **kw: jd.minimize_batch(
        ridge_logistic, w0, args=(features, labels, 0.1), method="L-BFGS-B", **kw
    )
    with pytest.raises(ValueError, match="2 entries for 3 args"):
        solve(args_axes=(None, 0))
    for bad in (1, True, (None, 1, None)):
        with pytest.raises(ValueError, match="0 .batched along the leading axis. or None"):
            solve(args_axes=bad)
    # The shared features have 40 rows, not 3: batching them is a clear error.
    with pytest.raises(ValueError, match="args_axes=None"):
        solve(args_axes=(0, 0, None))
    with pytest.raises(TypeError, match="args must be a tuple"):
        jd.minimize_batch(ridge_logistic, w0, args=[features, labels, 0.1])
