"""``has_aux=True`` (SPEC section 1): ``fun`` returns ``(value, aux)``; ``res.aux`` is aux at
``res.x``, under jit, vmap and minimize_batch, and differentiable like ``res.x``. Also
scipy's positional order: ``minimize(fun, x0, args, method)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd

TARGET = jnp.array([1.0, 2.0, 3.0])


def with_aux(x, a):
    r = x - a
    return jnp.sum(r**2) + 0.1 * jnp.sum(x**4), {"pred": 2.0 * x, "residual": r}


def value_only(x, a):
    return with_aux(x, a)[0]


def aux_at(x, a):
    return with_aux(x, a)[1]


@pytest.mark.parametrize("method", ["L-BFGS-B", "Newton", "GD", "Adam"])
def test_aux_is_funs_aux_at_the_solution(method):
    options = {"learning_rate": 0.05, "maxiter": 3000} if method == "Adam" else None
    res = jd.minimize(with_aux, jnp.zeros(3), (TARGET,), method, has_aux=True, options=options)
    plain = jd.minimize(value_only, jnp.zeros(3), (TARGET,), method, options=options)
    # The same solve (to rounding: the programs differ, so XLA may fuse differently).
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(plain.x), rtol=1e-12)
    assert (int(res.nit), int(res.nfev)) == (int(plain.nit), int(plain.nfev))
    expected = aux_at(res.x, TARGET)
    for key in ("pred", "residual"):
        np.testing.assert_allclose(np.asarray(res.aux[key]), np.asarray(expected[key]), rtol=1e-12)


def test_aux_with_jac_true_and_a_jac_callable():
    def pair(x, a):
        return with_aux(x, a), jax.grad(value_only)(x, a)

    res = jd.minimize(pair, jnp.zeros(3), (TARGET,), jac=True, has_aux=True)
    np.testing.assert_allclose(res.aux["residual"], aux_at(res.x, TARGET)["residual"], rtol=1e-12)
    res = jd.minimize(with_aux, jnp.zeros(3), (TARGET,), jac=jax.grad(value_only), has_aux=True)
    np.testing.assert_allclose(res.aux["pred"], aux_at(res.x, TARGET)["pred"], rtol=1e-12)


def test_aux_under_vmap_jit_and_minimize_batch():
    targets = TARGET * jnp.arange(1.0, 5.0)[:, None]
    x0 = jnp.zeros((4, 3))
    solve = lambda x, a: jd.minimize(with_aux, x, (a,), "L-BFGS", has_aux=True)
    vmapped = jax.jit(jax.vmap(solve))(x0, targets)
    queued = jd.minimize_batch(with_aux, x0, (targets,), "L-BFGS", has_aux=True, lanes=2)
    for k in range(4):
        alone = solve(x0[k], targets[k])
        np.testing.assert_allclose(vmapped.aux["pred"][k], alone.aux["pred"], rtol=1e-10)
        np.testing.assert_allclose(queued.aux["pred"][k], alone.aux["pred"], rtol=1e-10)


def test_aux_is_differentiable_like_x():
    """d aux / d a = (d aux / d x)(d x / d a) + d aux / d a, by implicit differentiation,
    against central differences."""

    def readout(a):
        res = jd.minimize(with_aux, jnp.zeros(3), (a,), "L-BFGS", has_aux=True,
                          options={"gtol": 1e-12, "ftol": 0.0})  # fmt: skip
        return jnp.sum(res.aux["residual"] * jnp.array([1.0, -2.0, 0.5]))

    grad = jax.grad(readout)(TARGET)
    step = 1e-6
    fd = [(readout(TARGET.at[i].add(step)) - readout(TARGET.at[i].add(-step))) / (2 * step)
          for i in range(3)]  # fmt: skip
    np.testing.assert_allclose(np.asarray(grad), np.asarray(fd), rtol=1e-6, atol=1e-8)


def test_has_aux_errors():
    with pytest.raises(TypeError, match="has_aux=True means fun returns"):
        jd.minimize(value_only, jnp.zeros(3), (TARGET,), has_aux=True)
    with pytest.raises(TypeError, match="has_aux must be True or False"):
        jd.minimize(with_aux, jnp.zeros(3), (TARGET,), has_aux="yes")
    res = jd.minimize(value_only, jnp.zeros(3), (TARGET,))
    assert res.aux is None


def test_args_and_method_by_position():
    by_position = jd.minimize(value_only, jnp.zeros(3), (TARGET,), "Newton")
    by_keyword = jd.minimize(value_only, jnp.zeros(3), args=(TARGET,), method="Newton")
    np.testing.assert_array_equal(np.asarray(by_position.x), np.asarray(by_keyword.x))
    assert int(by_position.nit) == int(by_keyword.nit)
