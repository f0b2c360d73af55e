"""A callback that raises (SPEC section 1): ``StopIteration`` ends the solve with
``Status.CALLBACK_STOP`` and the current iterate (scipy >= 1.11); any other exception
reaches the caller as itself when ``minimize`` is called outside a user's jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd


def quartic(x, c):
    return jnp.sum((x - 1.0) ** 2) + c * jnp.sum(x**4)


class MyError(Exception):
    pass


def stop_at(k: int, seen: list | None = None):
    """A callback raising StopIteration at iteration k (recording what it saw)."""

    def callback(intermediate_result):
        if seen is not None:
            seen.append(np.asarray(intermediate_result.x))
        if int(intermediate_result.nit) >= k:
            raise StopIteration

    return callback


@pytest.mark.parametrize("method", ["L-BFGS", "GD", "Adam"])
def test_stop_iteration_ends_with_callback_stop_and_the_current_iterate(method):
    seen: list = []
    res = jd.minimize(quartic, jnp.zeros(3), args=(1.0,), method=method, callback=stop_at(2, seen))
    assert int(res.status) == jd.Status.CALLBACK_STOP, res.message
    assert not bool(res.success)
    assert int(res.nit) == 2 and len(seen) == 2
    np.testing.assert_array_equal(np.asarray(res.x), seen[-1])
    assert "StopIteration" in res.message
    # The same iterate as a run stopped there by maxiter.
    capped = jd.minimize(quartic, jnp.zeros(3), args=(1.0,), method=method, options={"maxiter": 2})
    np.testing.assert_array_equal(np.asarray(res.x), np.asarray(capped.x))


def test_stop_iteration_under_jit_and_vmap():
    coefs = jnp.array([0.0, 1.0, 3.0])

    def run(c):
        return jd.minimize(quartic, jnp.zeros(2), args=(c,), method="L-BFGS", callback=stop_at(1))

    res = jax.jit(jax.vmap(run))(coefs)
    np.testing.assert_array_equal(np.asarray(res.status), [jd.Status.CALLBACK_STOP] * 3)
    np.testing.assert_array_equal(np.asarray(res.nit), [1, 1, 1])


def test_other_exceptions_reach_the_caller_as_themselves():
    def broken(intermediate_result):
        if int(intermediate_result.nit) == 3:
            raise MyError("from the callback")

    with pytest.raises(MyError, match="from the callback"):
        jd.minimize(quartic, jnp.zeros(3), args=(1.0,), method="L-BFGS", callback=broken)
    # The package is still usable, and a later solve with a good callback is not
    # stopped by the earlier error.
    res = jd.minimize(quartic, jnp.zeros(3), args=(1.0,), method="L-BFGS", callback=lambda r: None)
    assert bool(res.success), res.message


def test_an_exception_inside_a_users_jit_still_stops_the_program():
    """Inside a user's jit the program runs later, so JAX reports the error (wrapped)."""

    def broken(intermediate_result):
        raise MyError("inside jit")

    solve = jax.jit(lambda x: jd.minimize(quartic, x, args=(1.0,), method="GD", callback=broken))
    with pytest.raises(Exception, match="inside jit"):
        jax.block_until_ready(solve(jnp.zeros(2)))


def broken_at_2(intermediate_result):
    if int(intermediate_result.nit) >= 2:
        raise MyError("from the callback, transformed")


def test_exceptions_under_a_users_vmap_or_grad_outside_jit_reach_the_caller_as_themselves():
    """Outside jit, a user's vmap or grad runs the program at once too (SPEC section 2):
    before, the exception reached the caller wrapped in JAX's runtime error."""
    solve = lambda c: jd.minimize(quartic, jnp.zeros(2), (c,), "L-BFGS", callback=broken_at_2)
    with pytest.raises(MyError, match="transformed"):
        jax.vmap(lambda c: solve(c).x)(jnp.array([1.0, 2.0]))
    with pytest.raises(MyError, match="transformed"):
        jax.grad(lambda c: solve(c).x.sum())(1.0)


def test_an_exception_under_jit_of_vmap_is_reported_not_lost():
    """Staged (inside a user's jit), the batched host report re-raises: JAX reports it."""
    solve = lambda c: jd.minimize(quartic, jnp.zeros(2), (c,), "L-BFGS", callback=broken_at_2)
    batched = jax.jit(jax.vmap(lambda c: solve(c).x))
    with pytest.raises(Exception, match="transformed"):
        jax.block_until_ready(batched(jnp.array([1.0, 2.0])))
