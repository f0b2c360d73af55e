"""scipy's spellings at the front door (issue 20): ``jac=False``, ``disp`` as an int and
``iprint`` mean what they mean in scipy; its finite-difference ``eps`` is refused with the
reason; ``args`` and ``method`` by position."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd


def fun(x, c):
    return jnp.sum((x - c) ** 2)


X0 = np.zeros(2, np.float32)
C = np.array([1.0, -2.0], np.float32)


def test_jac_false_is_the_exact_gradient():
    res = jd.minimize(fun, X0, (C,), "L-BFGS-B", jac=False)
    ref = jd.minimize(fun, X0, (C,), "L-BFGS-B")
    np.testing.assert_array_equal(res.x, ref.x)
    assert int(res.nfev) == int(ref.nfev)


@pytest.mark.parametrize(
    ("options", "prints"),
    [({"disp": 1}, True), ({"disp": 0}, False), ({"iprint": -1}, False), ({"iprint": 1}, True)],
)
def test_disp_int_and_iprint(capfd, options, prints):
    res = jd.minimize(fun, X0, (C,), "L-BFGS-B", options=options)
    assert bool(res.success)
    out = capfd.readouterr().out
    assert ("iter" in out) == prints, out


def test_disp_and_iprint_that_disagree_are_refused():
    with pytest.raises(ValueError, match="disagree"):
        jd.minimize(fun, X0, (C,), "L-BFGS-B", options={"disp": True, "iprint": -1})


@pytest.mark.parametrize("name", ["eps", "finite_diff_rel_step"])
def test_finite_difference_step_is_refused_with_the_reason(name):
    with pytest.raises(TypeError, match="exact gradient"):
        jd.minimize(fun, X0, (C,), "L-BFGS-B", options={name: 1e-8})


def test_adam_keeps_its_own_eps():
    res = jd.minimize(fun, X0, (C,), "Adam", options={"eps": 1e-7, "learning_rate": 0.1})
    np.testing.assert_allclose(res.x, C, atol=1e-3)
