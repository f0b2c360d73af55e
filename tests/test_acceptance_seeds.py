"""Acceptance: numbers copied from the seed documents the package was created from (float32).

Every x0 here is an explicit float32 array, so these tests hold whether or not another test
module has switched on x64 (the switch is process-wide under pytest).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd

# XLA may fuse a multiply-add where the book's eager NumPy/JAX code rounded twice, so the
# iterates agree to float32 rounding, not bit for bit.
F32_RTOL = 1e-6

# ---------------------------------------------------------------------------------------
# Physics-based Deep Learning (PBDL) book, "simple example comparing different optimizers"
# (seed 002_439ddd8906a62e54.txt, sections 18.3-18.5): y(x) = [x0, x1^2], L = |y|^2, from
# x = [3, 3] float32, ten plain updates.
# ---------------------------------------------------------------------------------------


def pbdl_loss_x(x):
    # seed 002: physics_y(x) = [x[0], x[1]*x[1]]; loss_y(y) = sum(square(y)); loss_x = L(y(x))
    y = jnp.stack([x[0], x[1] * x[1]])
    return jnp.sum(jnp.square(y))


PBDL_X0 = np.asarray([3.0, 3.0], np.float32)  # seed 002: x = np.asarray([3,3], float32)

# seed 002, "GD iter 0..9" printout (eta = 0.01)
PBDL_GD_ITERATES = np.asarray(
    [
        [2.94, 1.9200001],
        [2.8812, 1.6368846],
        [2.823576, 1.4614503],
        [2.7671044, 1.3365935],
        [2.7117622, 1.2410815],
        [2.657527, 1.1646168],
        [2.6043763, 1.1014326],
        [2.5522888, 1.0479842],
        [2.501243, 1.0019454],
        [2.4512184, 0.96171147],
    ],
    np.float32,
)

# seed 002, "Newton iter 0..9" printout (eta = 1/3, x += -eta * inv(H) g)
PBDL_NEWTON_ITERATES = np.asarray(
    [
        [2.0, 2.6666667],
        [1.3333333, 2.3703704],
        [0.88888884, 2.1069958],
        [0.59259254, 1.8728852],
        [0.39506167, 1.6647868],
        [0.26337445, 1.4798105],
        [0.17558296, 1.315387],
        [0.1170553, 1.1692328],
        [0.07803687, 1.0393181],
        [0.05202458, 0.92383826],
    ],
    np.float32,
)


@pytest.mark.parametrize(
    ("method", "learning_rate", "iterates"),
    [
        pytest.param("GD", 0.01, PBDL_GD_ITERATES, id="GD-eta=0.01"),
        pytest.param("Newton", 1.0 / 3.0, PBDL_NEWTON_ITERATES, id="Newton-eta=1/3"),
    ],
)
def test_pbdl_trajectories(method, learning_rate, iterates):
    x0 = jnp.asarray(PBDL_X0, jnp.float32)
    res = jd.minimize(
        pbdl_loss_x,
        x0,
        method=method,
        options={"learning_rate": learning_rate, "gtol": 0.0, "maxiter": 10, "trace": True},
    )
    # SPEC 5: fixed learning_rate, gtol=0, maxiter=k -> exactly k plain update steps.
    assert int(res.nit) == 10
    assert int(res.status) == jd.Status.MAX_ITER
    assert res.x.dtype == jnp.float32 and res.trace.x.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(res.x), iterates[-1], rtol=F32_RTOL)
    assert res.trace.x.shape == (11, 2)
    np.testing.assert_array_equal(np.asarray(res.trace.x[0]), PBDL_X0)
    np.testing.assert_allclose(np.asarray(res.trace.x[1:]), iterates, rtol=F32_RTOL)
    np.testing.assert_allclose(
        np.asarray(res.trace.fun[1:]),
        [float(pbdl_loss_x(jnp.asarray(x, jnp.float32))) for x in iterates],
        rtol=4 * F32_RTOL,
    )


def test_pbdl_final_points_without_trace():
    """The book's last lines, "GD iter 9" and "Newton iter 9", from plain solves."""
    x0 = jnp.asarray(PBDL_X0, jnp.float32)
    options = {"gtol": 0.0, "maxiter": 10}
    gd = jd.minimize(pbdl_loss_x, x0, method="GD", options={**options, "learning_rate": 0.01})
    newton = jd.minimize(
        pbdl_loss_x, x0, method="Newton", options={**options, "learning_rate": 1.0 / 3.0}
    )
    # seed 002: "GD iter 9: [2.4512184  0.96171147]"
    np.testing.assert_allclose(np.asarray(gd.x), [2.4512184, 0.96171147], rtol=F32_RTOL)
    # seed 002: "Newton iter 9: [0.05202458 0.92383826]"
    np.testing.assert_allclose(np.asarray(newton.x), [0.05202458, 0.92383826], rtol=F32_RTOL)


# ---------------------------------------------------------------------------------------
# TensorFlow Core-API "build an optimizer" notebook (seed 004_8be77ef85f5dc8f5.txt):
# loss(x) = 2*(x**4) + 3*(x**3) + 2 from x = 2.0 float32, convergence_test(max_iters=2000),
# learning rates 1e-3, 1e-2, 1e-1; Momentum(learning_rate, momentum=0.7) is the notebook's
# class default. The minimum is at x = -9/8 (f' = 8x^3 + 9x^2 = 0), a saddle at x = 0.
# ---------------------------------------------------------------------------------------


def tf_loss(x):
    # seed 004: def loss(x): return 2*(x**4) + 3*(x**3) + 2
    return 2 * (x**4) + 3 * (x**3) + 2


TF_X0 = 2.0  # seed 004: x = tf.Variable(2.0) (float32)
TF_MAXITER = 2000  # seed 004: convergence_test(..., max_iters=2000)
TF_MINIMUM = -9.0 / 8.0


def _tf_solve(method, **options):
    return jd.minimize(
        tf_loss,
        jnp.asarray(TF_X0, jnp.float32),
        method=method,
        options={"maxiter": TF_MAXITER, **options},
    )


@pytest.mark.parametrize(
    ("method", "options"),
    [
        pytest.param("GD", {"learning_rate": 0.1}, id="GD-lr=0.1"),
        pytest.param("momentum", {"learning_rate": 0.1, "momentum": 0.7}, id="momentum-lr=0.1"),
    ],
)
def test_tf_large_learning_rate_blows_up_with_the_last_finite_iterate(method, options):
    # seed 004: "Gradient exploded at iteration ..." for learning rate 1e-1.
    res = _tf_solve(method, **options)
    assert int(res.status) == jd.Status.NONFINITE, res.message
    assert not bool(res.success)
    assert int(res.nit) <= 10
    assert res.x.dtype == jnp.float32
    assert np.isfinite(float(res.x)) and np.isfinite(float(res.fun))
    assert np.isfinite(float(res.jac))
    np.testing.assert_allclose(float(res.fun), float(tf_loss(res.x)), rtol=F32_RTOL)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        pytest.param("momentum", {"learning_rate": 0.01, "momentum": 0.7}, id="momentum-lr=1e-2"),
        pytest.param("Adam", {"learning_rate": 0.1}, id="Adam-lr=1e-1"),
    ],
)
def test_tf_converges_to_the_minimum(method, options):
    res = _tf_solve(method, **options)
    assert bool(res.success), res.message
    assert res.x.dtype == jnp.float32
    np.testing.assert_allclose(float(res.x), TF_MINIMUM, atol=1e-5)
    assert int(res.nit) < TF_MAXITER


def test_tf_small_learning_rate_stalls_near_the_saddle():
    # seed 004: with learning rate 1e-3 GD creeps towards the saddle at 0 and never
    # reaches the minimum at -1.125 within 2000 iterations.
    res = _tf_solve("GD", learning_rate=1e-3)
    assert int(res.status) == jd.Status.MAX_ITER
    assert not bool(res.success)
    assert int(res.nit) == TF_MAXITER
    assert 0.0 < float(res.x) < 0.1  # stuck on the saddle's side, far from -1.125
