"""SPEC section 7: bad input gets a clear exception before anything is compiled; NaN or inf
during a solve is not an exception but Status.NONFINITE with the last finite iterate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import FIXED_STEP_METHODS, METHODS, QUAD_MIXED, quad_mixed

import jaxopt_dict as jd
import jaxopt_dict._minimize


@pytest.fixture
def no_solve(monkeypatch, compile_log):
    """Fail the test if the compiled solve is ever reached (errors must come first)."""

    def _solve(*args, **kwargs):
        raise AssertionError("the solve was reached: the bad input was not caught first")

    monkeypatch.setattr(jaxopt_dict._minimize, "solve", _solve)
    yield
    assert not [name for name in compile_log.names if "solve" in name], compile_log.names


def _x0():
    return QUAD_MIXED.x0()


def _scalar_fun(x):
    return jnp.sum(x["a"] ** 2)


# ---------------------------------------------------------------------------------------
# TypeError: wrong kinds
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x0", "path"),
    [
        pytest.param({"a": jnp.zeros(2), "n": jnp.arange(3)}, "['n']", id="int-array"),
        pytest.param({"a": jnp.zeros(2), "n": 3}, "['n']", id="python-int"),
        pytest.param({"a": jnp.zeros(2), "flag": jnp.array([True])}, "['flag']", id="bool-array"),
        pytest.param({"a": jnp.zeros(2), "flag": True}, "['flag']", id="python-bool"),
        pytest.param(
            {"a": jnp.zeros(2), "z": {"c": jnp.zeros(2, jnp.complex64)}},
            "['z']['c']",
            id="complex-nested",
        ),
        pytest.param({"a": jnp.zeros(2), "s": "1.0"}, "['s']", id="string"),
    ],
)
def test_non_float_leaves_in_x0(no_solve, x0, path):
    with pytest.raises(TypeError) as err:
        jd.minimize(_scalar_fun, x0, method="GD")
    assert path in str(err.value)


def _vector_fun(x):
    return x["a"] ** 2


def _int_fun(x):
    return jnp.sum(x["a"]).astype(jnp.int32)


def _complex_fun(x):
    return jnp.sum(x["a"]) * (1 + 1j)


def _bool_fun(x):
    return jnp.sum(x["a"]) > 0


@pytest.mark.parametrize(
    ("fun", "words"),
    [
        pytest.param(_vector_fun, "scalar", id="vector"),
        pytest.param(_int_fun, "float", id="int"),
        pytest.param(_complex_fun, "float", id="complex"),
        pytest.param(_bool_fun, "float", id="bool"),
    ],
)
def test_fun_must_return_a_float_scalar(no_solve, fun, words):
    with pytest.raises(TypeError, match=words):
        jd.minimize(fun, {"a": jnp.zeros(3)}, method="GD")


def _value_only(x):
    return jnp.sum(x["a"] ** 2)


def _triple(x):
    return jnp.sum(x["a"] ** 2), 2 * x["a"], 0.0


@pytest.mark.parametrize("fun", [_value_only, _triple], ids=["scalar", "triple"])
def test_jac_true_needs_a_value_gradient_pair(no_solve, fun):
    with pytest.raises(TypeError, match="jac=True"):
        jd.minimize(fun, {"a": jnp.zeros(3)}, method="GD", jac=True)


@pytest.mark.parametrize(
    "args", [[1.0], jnp.ones(3), 1.0, {"t": 1.0}], ids=["list", "array", "float", "dict"]
)
def test_args_must_be_a_tuple(no_solve, args):
    with pytest.raises(TypeError, match="args must be a tuple"):
        jd.minimize(_scalar_fun, {"a": jnp.zeros(3)}, args=args, method="GD")


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        pytest.param(jnp.sin, r"args\[0\] is a PjitFunction", id="function"),
        pytest.param("mode", r"args\[0\] is a str", id="string"),
        pytest.param({"k": [1.0, print]}, r"args\[0\]\['k'\]\[1\] is a builtin", id="nested"),
    ],
)
def test_args_leaves_must_be_arrays_or_numbers(no_solve, bad, words):
    # Before: "Cannot determine dtype of <PjitFunction of sin>", naming nothing of args.
    with pytest.raises(TypeError, match=words):
        jd.minimize(_scalar_fun, {"a": jnp.zeros(3)}, args=(bad,), method="GD")


def test_args_may_hold_arrays_of_any_dtype():
    # bfloat16 data and a typed PRNG key are arrays: args take them (check_args first
    # refused both, as not "an array or a number").
    def fun(x, weights, key):
        del key
        return jnp.sum((x - weights.astype(x.dtype)) ** 2)

    args = (jnp.ones(2, jnp.bfloat16), jax.random.key(0))
    res = jd.minimize(fun, jnp.zeros(2), args=args, method="L-BFGS")
    assert bool(res.success)
    np.testing.assert_allclose(np.asarray(res.x), [1.0, 1.0], atol=1e-6)


def test_ftol_none_is_the_default_for_every_line_search_method():
    # Before: L-BFGS(-B) let None through to the loop, which failed tracing it.
    for method in ("L-BFGS", "L-BFGS-B", "GD", "Newton"):
        unset = jd.minimize(quad_mixed, _x0(), method=method, options={"ftol": None})
        default = jd.minimize(quad_mixed, _x0(), method=method)
        assert int(unset.nfev) == int(default.nfev) and bool(unset.success), method


@pytest.mark.parametrize(
    ("method", "key"),
    [
        ("GD", "momentum"),
        ("GD", "history_size"),  # an alias of maxcor: only L-BFGS(-B) take it
        ("momentum", "b1"),
        ("momentum", "ftol"),
        ("Adam", "maxls"),
        ("Newton", "b2"),  # Adam's
        ("Newton", "not_an_option"),
    ],
)
def test_unknown_option_lists_the_valid_ones(no_solve, method, key):
    with pytest.raises(TypeError) as err:
        jd.minimize(quad_mixed, _x0(), method=method, options={key: 1})
    message = str(err.value)
    assert repr(key) in message
    spec_names = [spec.name for spec in jd.option_specs(jd.methods.resolve_method(method))]
    assert "learning_rate" in spec_names and "maxiter" in spec_names
    for name in spec_names:
        assert name in message, (name, message)


def test_unknown_option_suggests_a_close_name(no_solve):
    with pytest.raises(TypeError, match="learning_rate"):
        jd.minimize(quad_mixed, _x0(), method="Adam", options={"learnig_rate": 0.1})


def test_unknown_method_type(no_solve):
    with pytest.raises(TypeError, match="method"):
        jd.minimize(quad_mixed, _x0(), method=123)


@pytest.mark.parametrize("options", [[("maxiter", 1)], "maxiter", 3], ids=["pairs", "str", "int"])
@pytest.mark.parametrize("solver", ["minimize", "minimize_batch"])
def test_options_must_be_a_dict(no_solve, solver, options):
    # dict() would take a list of pairs silently; a string or number gave Python's own error.
    x0 = _x0()
    if solver == "minimize_batch":
        x0 = jax.tree.map(lambda v: v[None], x0)
    with pytest.raises(TypeError, match="options must be a dict"):
        getattr(jd, solver)(quad_mixed, x0, method="GD", options=options)


def _shape_three_gradient(x):
    return {**x, "m": jnp.zeros(3)}


def _value_and_matrix_gradient(x):
    return quad_mixed(x), {**x, "s": jnp.zeros((1, 1))}  # broadcastable to s's ()


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"jac": _shape_three_gradient}, "['m']"),
        ({"jac": True, "fun": _value_and_matrix_gradient}, "['s']"),
    ],
    ids=["jac=callable", "jac=True"],
)
def test_gradient_leaf_shapes_must_match_x0(no_solve, kwargs, path):
    # Before, a wrong shape surfaced as an XLA shape error deep in the solve (or broadcast).
    kwargs = {"fun": quad_mixed, **kwargs}
    x0 = _x0()
    with pytest.raises(TypeError, match="shape") as err:
        jd.minimize(x0=x0, method="GD", **kwargs)
    assert path in str(err.value)


# ---------------------------------------------------------------------------------------
# ValueError: wrong values
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options"),
    [
        # wrong types
        ("GD", {"maxiter": 2.5}),
        ("GD", {"maxiter": "10"}),
        ("GD", {"learning_rate": "fast"}),
        ("GD", {"gtol": [1e-3, 1e-4]}),
        ("GD", {"disp": "yes"}),
        ("Adam", {"trace": 1}),
        ("momentum", {"momentum": None}),
        # out of range
        ("GD", {"learning_rate": 0.0}),
        ("GD", {"learning_rate": -0.1}),
        ("GD", {"maxiter": -1}),
        ("GD", {"maxfun": 0}),
        ("GD", {"gtol": -1e-5}),
        ("GD", {"gtol": float("nan")}),
        ("GD", {"learning_rate": float("inf")}),
        ("Adam", {"learning_rate": float("inf")}),
        ("Newton", {"learning_rate": float("inf")}),
        ("GD", {"maxiter": float("inf")}),
        ("GD", {"maxfun": float("inf")}),
        ("GD", {"gtol": float("inf")}),
        ("GD", {"xtol": -1.0}),
        ("GD", {"ftol": -1.0}),
        ("GD", {"maxls": 0}),
        ("momentum", {"momentum": 1.0}),
        ("momentum", {"momentum": -0.5}),
        ("Adam", {"b1": 1.0}),
        ("Adam", {"b2": 1.5}),
        ("Adam", {"eps": -1e-8}),
        ("Newton", {"learning_rate": -1.0}),
        # JAX arrays get the checks Python values get (before: True read as gtol = 1.0,
        # a complex gtol raised float()'s TypeError, maxfun = 2.5 was taken)
        ("GD", {"gtol": jnp.asarray(True)}),
        ("GD", {"gtol": jnp.asarray(1e-5 + 1j)}),
        ("GD", {"maxfun": jnp.asarray(2.5)}),
        ("GD", {"gtol": np.asarray(True)}),
        ("GD", {"maxiter": jnp.asarray(True)}),  # a static option
        ("GD", {"maxiter": jnp.asarray(3 + 0j)}),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else "-".join(f"{k}={v[k]!r}" for k in v),
)
def test_option_of_wrong_type_or_out_of_range(no_solve, method, options):
    (key,) = options
    with pytest.raises(ValueError, match=key):
        jd.minimize(quad_mixed, _x0(), method=method, options=options)


def _bounds_like_x0(**changes):
    lower, upper = QUAD_MIXED.bounds()
    lower = dict(lower)
    for key, value in changes.items():
        if value is None:
            del lower[key]
        else:
            lower[key] = value
    return lower, upper


@pytest.mark.parametrize(
    ("bounds", "path"),
    [
        pytest.param(_bounds_like_x0(v=None), "['v']", id="missing-key"),
        pytest.param(_bounds_like_x0(extra=jnp.zeros(2)), "['extra']", id="extra-key"),
        pytest.param(_bounds_like_x0(m=jnp.zeros(3)), "['m']", id="shape-mismatch"),
        pytest.param(
            _bounds_like_x0(nested={"w": jnp.zeros((2, 2))}), "['nested']['w']", id="nested-shape"
        ),
        pytest.param(_bounds_like_x0(nested={"q": jnp.zeros(2)}), "['nested']", id="nested-key"),
    ],
)
def test_bounds_structure_or_shape_mismatch_names_the_key_path(no_solve, bounds, path):
    with pytest.raises(ValueError) as err:
        jd.minimize(quad_mixed, _x0(), method="GD", bounds=bounds)
    assert path in str(err.value), str(err.value)


def test_bounds_broadcastable_leaves_are_accepted():
    # Not an error: a scalar leaf broadcasts against a matrix leaf (SPEC 1). Uses the
    # compiled bounded GD solve (no no_solve fixture here).
    lower, upper = QUAD_MIXED.bounds()
    lower = {**lower, "m": jnp.asarray(0.0), "v": jnp.asarray([-1.0])}
    res = jd.minimize(quad_mixed, _x0(), method="GD", bounds=(lower, upper))
    assert bool(res.success), res.message


@pytest.mark.parametrize("bounds", [(0.0,), (0.0, 1.0, 2.0), 1.0], ids=["one", "three", "scalar"])
def test_bounds_must_be_a_pair(no_solve, bounds):
    with pytest.raises(ValueError, match="bounds"):
        jd.minimize(quad_mixed, _x0(), method="GD", bounds=bounds)


def test_lower_above_upper(no_solve):
    lower, upper = QUAD_MIXED.bounds()
    upper = {**upper, "s": jnp.asarray(-1.0)}  # lower["s"] is 0
    with pytest.raises(ValueError, match=r"\['s'\]"):
        jd.minimize(quad_mixed, _x0(), method="GD", bounds=(lower, upper))
    with pytest.raises(ValueError, match="lower"):
        jd.minimize(quad_mixed, _x0(), method="Adam", bounds=(1.0, -1.0))


@pytest.mark.parametrize("name", ["BFGS", "sgd", "L_BFGS_B ", ""])
def test_unknown_method_lists_the_methods(no_solve, name):
    with pytest.raises(ValueError) as err:
        jd.minimize(quad_mixed, _x0(), method=name)
    message = str(err.value)
    for known in ("GD", "momentum", "Adam", "Newton"):
        assert known in message


def test_bounds_to_newton_names_the_methods_that_take_bounds(no_solve):
    with pytest.raises(ValueError) as err:
        jd.minimize(quad_mixed, _x0(), method="Newton", bounds=(-1.0, 1.0))
    message = str(err.value)
    assert "Newton" in message
    for name in ("GD", "momentum", "Adam"):
        assert name in message
    assert set(jd.methods_with_bounds()) >= {"GD", "momentum", "Adam"}
    assert "Newton" not in jd.methods_with_bounds()


# ---------------------------------------------------------------------------------------
# NaN / inf during the solve: Status.NONFINITE and the last finite iterate
# ---------------------------------------------------------------------------------------

THRESHOLD = 0.9  # f is `bad` (NaN or inf) where x[0] > THRESHOLD


def nan_quadratic(x, bad):
    """(x - 1)^2 / 2, but `bad` for x[0] > 0.9: the path from x[0] = -2 runs into it."""
    return 0.5 * jnp.sum((x - 1.0) ** 2) + jnp.where(x[0] > THRESHOLD, bad, 0.0)


def nan_quartic(x, bad):
    """A quartic, so that line-search methods take several steps before the bad region."""
    d = x - 1.0
    return jnp.sum(0.5 * d**2 + 0.25 * d**4) + jnp.where(x[0] > THRESHOLD, bad, 0.0)


NAN_FUN = {
    "GD-fixed": nan_quadratic,
    "momentum": nan_quadratic,
    "Adam": nan_quadratic,
    "Newton-fixed": nan_quadratic,
    "GD-linesearch": nan_quartic,
    "Newton-linesearch": nan_quartic,
}
BAD_VALUES = {"nan": np.nan, "inf": np.inf}


@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("method_id", list(METHODS))
def test_nonfinite_at_x0(method_id, bad):
    name, options = METHODS[method_id]
    x0 = jnp.asarray([2.0, 0.5])
    res = jd.minimize(NAN_FUN[method_id], x0, args=(BAD_VALUES[bad],), method=name, options=options)
    assert int(res.status) == jd.Status.NONFINITE, res.message
    assert not bool(res.success)
    assert int(res.nit) == 0 and int(res.nfev) == 1
    np.testing.assert_array_equal(np.asarray(res.x), np.asarray(x0))


def _fixed_step_path(method_id, x0, steps):
    """The exact iterates of fixed-step GD / Newton on (x - 1)^2 / 2."""
    factor = {"GD-fixed": 1.0 - 0.2, "Newton-fixed": 1.0 - 0.8}[method_id]
    return [1.0 + (x0 - 1.0) * factor**k for k in range(steps)]


@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("method_id", FIXED_STEP_METHODS)
def test_nonfinite_mid_solve_returns_the_last_finite_iterate(method_id, bad):
    """Without a line search, the first non-finite iterate ends the solve."""
    name, options = METHODS[method_id]
    fun = NAN_FUN[method_id]
    x0 = jnp.asarray([-2.0, 0.5])
    res = jd.minimize(fun, x0, args=(BAD_VALUES[bad],), method=name, options=options)
    assert int(res.status) == jd.Status.NONFINITE, res.message
    assert not bool(res.success)
    assert int(res.nit) >= 1  # some steps were taken before the bad region
    x = np.asarray(res.x)
    assert np.all(np.isfinite(x)) and x[0] <= THRESHOLD
    assert np.isfinite(float(res.fun)) and np.all(np.isfinite(np.asarray(res.jac)))
    np.testing.assert_allclose(float(res.fun), float(fun(res.x, 0.0)), rtol=1e-12)
    assert float(res.fun) < float(fun(x0, 0.0))
    if method_id in ("GD-fixed", "Newton-fixed"):
        path = _fixed_step_path(method_id, np.asarray(x0), 40)
        first_bad = next(k for k, p in enumerate(path) if p[0] > THRESHOLD)
        last_finite = first_bad - 1
        assert last_finite >= 2
        assert int(res.nit) == last_finite
        assert int(res.nfev) == first_bad + 1  # x0 and the steps up to the bad point
        np.testing.assert_allclose(x, path[last_finite], rtol=1e-12)


@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("method_id", ["GD-linesearch", "Newton-linesearch"])
def test_line_search_backs_away_from_the_bad_region(method_id, bad):
    """A line search rejects trials in the bad region (SPEC section 2) and goes on up to
    its edge: the minimum (1, 1) lies beyond x[0] = 0.9, so the solve ends at the wall
    with x[0] near 0.9 (GD with FTOL, Newton when a search finds no finite trial), never
    inside the bad region (before: NONFINITE at the first bad trial)."""
    name, options = METHODS[method_id]
    fun = NAN_FUN[method_id]
    x0 = jnp.asarray([-2.0, 0.5])
    res = jd.minimize(fun, x0, args=(BAD_VALUES[bad],), method=name, options=options)
    x = np.asarray(res.x)
    assert np.all(np.isfinite(x)) and np.isfinite(float(res.fun))
    assert 0.85 < x[0] <= THRESHOLD, (x, res.message)
    np.testing.assert_allclose(float(res.fun), float(fun(res.x, 0.0)), rtol=1e-12)


def sqrt_abs(x):
    """Finite everywhere, but its gradient at x[0] = 0 is 0 * inf = NaN."""
    return jnp.sqrt(jnp.abs(x[0])) + jnp.sum((x - 1.0) ** 2)


def test_nonfinite_gradient_with_a_finite_value():
    x0 = jnp.asarray([0.0, 0.5])
    assert np.isfinite(float(sqrt_abs(x0)))
    assert not np.all(np.isfinite(np.asarray(jax.grad(sqrt_abs)(x0))))
    res = jd.minimize(sqrt_abs, x0, method="GD", options={"learning_rate": 0.1})
    assert int(res.status) == jd.Status.NONFINITE, res.message
    assert int(res.nit) == 0
    np.testing.assert_array_equal(np.asarray(res.x), np.asarray(x0))
