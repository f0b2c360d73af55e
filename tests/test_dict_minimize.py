"""The dict-minimize drop-in against the real dict-minimize (``dict_minimize.jax_api``).

The two examples are those of the dict-minimize blog post ("Harnessing second order
optimizers from deep learning frameworks", Twitter 2021): the Rosenbrock function split over
two dict entries with an extra ``shift`` argument, and the bounded deep-dream image
optimization (InceptionV3 there; a small fixed random conv net here, as no weights can be
downloaded). Each example is written once, the way a dict-minimize user writes it, and run
with either ``minimize``: the import swap is the only difference.

Arrays are created as float32 explicitly: the suite runs with ``jax_enable_x64`` on
(``conftest.py``), and the blog's setting (and the tolerances below) are float32's.
"""

from __future__ import annotations

from collections import OrderedDict

# The reference: dict-minimize itself (a test extra, so a missing one fails, not skips).
import dict_minimize.jax_api as dict_minimize_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd
from jaxopt_dict import dict_minimize as jd_dict_minimize

BOTH = pytest.mark.parametrize(
    "minimize",
    [dict_minimize_jax.minimize, jd_dict_minimize.minimize],
    ids=["dict_minimize", "jaxopt_dict"],
)


# --- The blog's Rosenbrock example, as a dict-minimize user writes it (JAX flavour). ---


def rosen_obj(params, shift):
    """Based on augmented Rosenbrock from botorch."""
    X, Y = params["x_half_a"], params["x_half_b"]
    X = X - shift
    Y = Y - shift
    obj = 100 * (X[1] - X[0] ** 2) ** 2 + 100 * (Y[1] - Y[0] ** 2) ** 2
    return obj


d_rosen_obj = jax.value_and_grad(rosen_obj)


def blog_rosenbrock(minimize, **kwargs):
    key_a, key_b = jax.random.split(jax.random.PRNGKey(123))
    n_a = 2
    n_b = 2
    shift = -1.0
    params = OrderedDict(
        [
            ("x_half_a", jax.random.normal(key_a, (n_a,), jnp.float32)),
            ("x_half_b", jax.random.normal(key_b, (n_b,), jnp.float32)),
        ]
    )
    kwargs.setdefault("method", "L-BFGS-B")
    kwargs.setdefault("options", {"disp": True})
    return minimize(d_rosen_obj, params, args=(shift,), **kwargs)


# --- The blog's deep-dream example with a small fixed conv net standing in for InceptionV3.
# The "neuron" is channel 1 of the second layer: conv -> log-sigmoid -> conv with
# nonnegative weights. Its response is concave in the image, and with a small pull towards
# the starting image the bounded problem has exactly one answer, so "same answer" is a
# well-posed check; about a fifth of the pixels end on a bound.
_K1, _K2, _K3, _K4 = jax.random.split(jax.random.PRNGKey(0), 4)
W1 = 0.5 * jax.random.normal(_K1, (8, 3, 3, 3), jnp.float32)  # OIHW
B1 = -1.0 + 0.5 * jax.random.normal(_K4, (1, 8, 1, 1), jnp.float32)
W2 = jnp.abs(jax.random.normal(_K2, (4, 8, 3, 3), jnp.float32))
IMG = jax.random.uniform(_K3, (1, 3, 12, 12), jnp.float32, minval=-0.5, maxval=0.5)  # NCHW
PULL = 8.0


def layer(img):
    h = jax.nn.log_sigmoid(jax.lax.conv(img, W1, (1, 1), "SAME") + B1)
    return jax.lax.conv(h, W2, (1, 1), "SAME")


def dream_obj(params):
    img = params["img"]
    return -jnp.sum(layer(img)[:, 1]) + 0.5 * PULL * jnp.sum((img - IMG) ** 2)


def dream_obj_and_grad_dict(params):
    return jax.value_and_grad(dream_obj)(params)


def blog_deep_dream(minimize, img, options):
    lb = OrderedDict({"img": -jnp.ones_like(img)})
    ub = OrderedDict({"img": jnp.ones_like(img)})

    params0 = OrderedDict({"img": img})
    params = minimize(
        dream_obj_and_grad_dict,
        params0,
        lb_dict=lb,
        ub_dict=ub,
        method="L-BFGS-B",
        options=options,
    )
    return params


# --- Parity with the real dict-minimize. ---


def test_blog_rosenbrock_same_answer_as_dict_minimize():
    theirs = blog_rosenbrock(dict_minimize_jax.minimize)
    ours = blog_rosenbrock(jd_dict_minimize.minimize)
    assert isinstance(ours, OrderedDict)
    assert list(ours) == ["x_half_a", "x_half_b"]
    for key in ours:
        assert ours[key].shape == theirs[key].shape and ours[key].dtype == theirs[key].dtype
    # The minimizers form a curve (X1 = X0^2 for each half); both reach it ...
    assert float(rosen_obj(ours, -1.0)) < 1e-6
    assert float(rosen_obj(theirs, -1.0)) < 1e-6
    # ... at the same point, as both run L-BFGS-B from the same start (measured: 1e-7 apart).
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-5)


def test_blog_deep_dream_same_answer_as_dict_minimize():
    options = {"disp": True, "maxfun": 100}  # the blog's options
    theirs = blog_deep_dream(dict_minimize_jax.minimize, IMG, options)
    ours = blog_deep_dream(jd_dict_minimize.minimize, IMG, options)
    img_theirs, img_ours = np.asarray(theirs["img"]), np.asarray(ours["img"])
    assert img_ours.dtype == np.float32 and img_ours.shape == IMG.shape
    assert np.all(img_ours >= -1.0) and np.all(img_ours <= 1.0)
    # Measured: 1.1e-4 apart. The margin is what float32 allows: f (~5e3) is resolved to
    # ~3e-4, so with curvature PULL = 8 a minimizer is located to ~1e-2 at worst (scipy's own
    # answers from different starts differ by up to 5e-3).
    np.testing.assert_allclose(img_ours, img_theirs, atol=5e-3)
    f_theirs, f_ours = float(dream_obj(theirs)), float(dream_obj(ours))
    assert f_ours <= f_theirs + 1e-5 * abs(f_theirs)
    active_theirs = np.abs(img_theirs) == 1.0
    active_ours = np.abs(img_ours) == 1.0
    assert active_ours.mean() > 0.1
    assert np.mean(active_ours == active_theirs) > 0.99


def test_default_method_is_lbfgsb():
    # method=None runs L-BFGS-B (scipy would pick BFGS without bounds; SPEC section 6).
    by_default = blog_rosenbrock(jd_dict_minimize.minimize, method=None)
    by_name = blog_rosenbrock(jd_dict_minimize.minimize, method="L-BFGS-B")
    for key in by_name:
        np.testing.assert_array_equal(by_default[key], by_name[key])


# --- Behaviour that does not need L-BFGS-B (method="GD" is this package's). ---


def _quadratic(x, center):
    def f(p):
        return jnp.sum((p["w"] - center) ** 2) + 2.0 * jnp.sum((p["b"] + 1.0) ** 2)

    return jax.value_and_grad(f)(x)


X0 = OrderedDict(w=jnp.zeros((2, 3), jnp.float32), b=jnp.asarray(0.0, jnp.float32))


@pytest.mark.parametrize("method", ["CG", "BFGS", "TNC", "trust-constr", "Nelder-Mead"])
def test_scipy_method_it_does_not_have_is_a_value_error(method):
    with pytest.raises(ValueError, match=f"no method '{method}'") as err:
        jd_dict_minimize.minimize(_quadratic, X0, args=(1.0,), method=method)
    for name in jd.method_names():
        assert name in str(err.value)


@BOTH
def test_callback_receives_ordered_dicts(minimize):
    seen = []
    method = "L-BFGS-B" if minimize is dict_minimize_jax.minimize else "GD"
    blog_rosenbrock(minimize, method=method, callback=seen.append, options={"maxiter": 3})
    assert len(seen) == 3
    for xk in seen:
        assert isinstance(xk, OrderedDict)
        assert list(xk) == ["x_half_a", "x_half_b"]
        assert all(isinstance(v, jax.Array) for v in xk.values())
        assert [v.shape for v in xk.values()] == [(2,), (2,)]
        assert [v.dtype for v in xk.values()] == [jnp.float32, jnp.float32]


def test_returns_an_ordered_dict_like_x0_and_passes_args():
    x = jd_dict_minimize.minimize(_quadratic, X0, args=(3.0,), method="GD")
    assert isinstance(x, OrderedDict) and list(x) == ["w", "b"]
    assert x["w"].shape == (2, 3) and x["b"].shape == ()
    np.testing.assert_allclose(x["w"], 3.0, atol=1e-4)
    np.testing.assert_allclose(x["b"], -1.0, atol=1e-4)


def test_bounds_may_name_only_some_keys_or_one_side():
    x = jd_dict_minimize.minimize(_quadratic, X0, args=(1.0,), method="GD", ub_dict={"w": 0.25})
    np.testing.assert_allclose(x["w"], 0.25, atol=1e-6)  # bounded
    np.testing.assert_allclose(x["b"], -1.0, atol=1e-4)  # no bound given: unbounded
    x = jd_dict_minimize.minimize(
        _quadratic,
        X0,
        args=(1.0,),
        method="GD",
        lb_dict=OrderedDict(b=-0.5),
        ub_dict=OrderedDict(w=jnp.full((2, 3), 2.0)),
    )
    np.testing.assert_allclose(x["w"], 1.0, atol=1e-4)
    np.testing.assert_allclose(x["b"], -0.5, atol=1e-6)
    with pytest.raises(ValueError, match="keys that x0_dict lacks"):
        jd_dict_minimize.minimize(_quadratic, X0, args=(1.0,), method="GD", lb_dict={"nope": 0.0})


def test_second_call_reuses_the_compiled_solve(compile_log):
    jd_dict_minimize.minimize(_quadratic, X0, args=(1.0,), method="GD")
    compile_log.clear()
    jd_dict_minimize.minimize(_quadratic, X0, args=(2.0,), method="GD")
    assert not compile_log.names  # new data, no new program


def _powers(x, power, mode):
    """A Python int used for a loop and a string used in an ``if``: dict-minimize runs
    fun in plain Python, so its users pass such settings through args."""
    total = 0.0
    for k in range(power):
        total = total + jnp.sum((x["a"] - k) ** 2)
    if mode == "plus":
        total = total + jnp.sum((x["b"] - 1.0) ** 2)
    return total


@BOTH
def test_args_that_are_settings_work_as_in_dict_minimize(minimize):
    # Before: the int was traced ("range() ... TracerIntegerConversionError") and the
    # string refused; both are now bound into fun, and arrays stay data.
    fun = jax.value_and_grad(_powers)
    x0 = OrderedDict([("a", jnp.zeros(2)), ("b", jnp.zeros(3))])
    x = minimize(fun, x0, args=(3, "plus"), method="L-BFGS-B")
    np.testing.assert_allclose(np.asarray(x["a"]), [1.0, 1.0], atol=1e-4)  # mean of 0, 1, 2
    np.testing.assert_allclose(np.asarray(x["b"]), [1.0, 1.0, 1.0], atol=1e-4)
    x = minimize(fun, x0, args=(2, np.str_("other")), method="L-BFGS-B")  # new settings
    np.testing.assert_allclose(np.asarray(x["a"]), [0.5, 0.5], atol=1e-4)
    np.testing.assert_allclose(np.asarray(x["b"]), [0.0, 0.0, 0.0], atol=1e-4)
