"""Issue 18, "never misread an input": the front door reads scipy's bound formats as scipy
does, refuses what it cannot honour (half precision, a trace buffer of gigabytes, an empty
batch), suggests the method meant, and the dict-minimize drop-in says when a solve failed.

Every bad input is caught before anything is compiled (the ``nothing_compiled`` fixture).
Problems are tiny (n <= 3) so the few solves that run compile fast.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

import jaxopt_dict as jd
from jaxopt_dict import dict_minimize as jd_dict_minimize
from jaxopt_dict._problem import canonicalize_bounds, canonicalize_x0
from jaxopt_dict.methods import method_names, resolve_method

INF = np.inf


@pytest.fixture
def nothing_compiled(compile_log):
    """Fail the test if a solve was compiled: bad input must be caught first."""
    yield
    assert not [name for name in compile_log.names if "solve" in name], compile_log.names


def flat_square(x, target):
    """sum((x - target)^2) over x's flattened coordinates: the box-clipped target is the
    minimizer, whatever x's structure."""
    return jnp.sum((ravel_pytree(x)[0] - target) ** 2)


def _solve(x0, target, bounds, method="L-BFGS-B", **kwargs):
    return jd.minimize(
        flat_square, x0, args=(jnp.asarray(target),), method=method, bounds=bounds, **kwargs
    )


def _flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def _box(bounds, x0):
    """The (lower, upper) a front door reads, flattened; None when unbounded."""
    box = canonicalize_bounds(bounds, canonicalize_x0(x0))
    return None if box is None else (_flat(box.lower), _flat(box.upper))


# ---------------------------------------------------------------------------------------
# 1. Bounds in scipy's formats
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x0",
    [(0.5, 0.5), [0.5, 0.5], np.array([0.5, 0.5])],
    ids=["tuple", "list", "array"],
)
@pytest.mark.parametrize(
    "pairs",
    [[(0, 1), (0, 1)], ((0.0, 1.0), (0.0, 1.0)), [[0, 1], [0, 1]]],
    ids=["list-of-tuples", "tuple-of-tuples", "list-of-lists"],
)
def test_scipy_pairs_win_for_two_coordinates(x0, pairs):
    # Before: read as lower=(0, 1), upper=(0, 1) (tuple/list x0: "success" at [0, 1]) or a
    # structure error (array x0). scipy: each coordinate in [0, 1], minimizer clip(target).
    res = _solve(x0, [2.0, -1.0], pairs)
    assert bool(res.success), res.message
    np.testing.assert_allclose(_flat(res.x), [1.0, 0.0], atol=1e-8)


def test_scipy_pairs_follow_the_flattened_order_and_none_is_unbounded():
    x0 = {"b": 0.0, "a": jnp.zeros(2)}  # flattened order: a[0], a[1], b (sorted keys)
    pairs = [(None, 0.5), (-0.25, None), (0.0, 1.0)]
    lower, upper = _box(pairs, x0)
    np.testing.assert_array_equal(lower, [-INF, -0.25, 0.0])
    np.testing.assert_array_equal(upper, [0.5, INF, 1.0])
    res = _solve(x0, [1.0, -1.0, 3.0], pairs)
    np.testing.assert_allclose(res.x["a"], [0.5, -0.25], atol=1e-8)
    np.testing.assert_allclose(res.x["b"], 1.0, atol=1e-8)
    assert res.x["a"].dtype == jnp.float64


def test_scipy_pairs_as_an_array():
    # scipy's minimize takes its pairs as an (n, 2) array too; it was refused ("bounds
    # must be None, a pair ...").
    x0 = {"b": 0.0, "a": jnp.zeros(2)}
    pairs = np.array([[-INF, 0.5], [-0.25, INF], [0.0, 1.0]])
    lower, upper = _box(pairs, x0)
    np.testing.assert_array_equal(lower, [-INF, -0.25, 0.0])
    np.testing.assert_array_equal(upper, [0.5, INF, 1.0])
    with pytest.raises(ValueError, match="expected 3 pairs"):
        _box(pairs[:2], x0)


def test_scipy_bounds_object():
    x0 = {"b": 0.0, "a": jnp.zeros(2)}
    bounds = scipy.optimize.Bounds(lb=[-INF, -0.25, 0.0], ub=[0.5, INF, 1.0])
    lower, upper = _box(bounds, x0)
    np.testing.assert_array_equal(lower, [-INF, -0.25, 0.0])
    np.testing.assert_array_equal(upper, [0.5, INF, 1.0])
    res = _solve(x0, [1.0, -1.0, 3.0], bounds)
    np.testing.assert_allclose(res.x["a"], [0.5, -0.25], atol=1e-8)
    np.testing.assert_allclose(res.x["b"], 1.0, atol=1e-8)
    # Scalar lb / ub broadcast to every coordinate; mixed-dtype x0 keeps each leaf's dtype.
    mixed = {"a": jnp.zeros(2, jnp.float32), "b": jnp.asarray(0.0)}
    box = canonicalize_bounds(scipy.optimize.Bounds(0.0, 1.0), canonicalize_x0(mixed))
    assert box.lower["a"].dtype == jnp.float32 and box.upper["b"].dtype == jnp.float64
    np.testing.assert_array_equal(_flat(box.lower), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(_flat(box.upper), [1.0, 1.0, 1.0])


def test_length_two_sequence_that_is_not_pairs_keeps_lower_upper():
    x0 = {"a": jnp.zeros(2), "b": 0.0}
    lower, upper = _box((0.0, {"a": jnp.asarray([1.0, 2.0]), "b": 3.0}), x0)
    np.testing.assert_array_equal(lower, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(upper, [1.0, 2.0, 3.0])
    # x0 of four coordinates in a 2-tuple: two scalar pairs can only be (lower, upper).
    lower, upper = _box(((0.0, -1.0), (1.0, 2.0)), (jnp.zeros(2), jnp.zeros(2)))
    np.testing.assert_array_equal(lower, [0.0, 0.0, -1.0, -1.0])
    np.testing.assert_array_equal(upper, [1.0, 1.0, 2.0, 2.0])


@pytest.mark.parametrize(
    ("bounds", "words"),
    [
        pytest.param([(0, 1), (0, 1)], "expected 3 pairs", id="two-pairs"),
        pytest.param([(0, 1)] * 4, "expected 3 pairs", id="four-pairs"),
        pytest.param(scipy.optimize.Bounds([0.0, 0.0], [1.0, 1.0]), r"\(3,\)", id="Bounds-size"),
    ],
)
def test_scipy_format_of_the_wrong_size(nothing_compiled, bounds, words):
    with pytest.raises(ValueError, match=words):
        _solve(jnp.zeros(3), [0.0, 0.0, 0.0], bounds)


@pytest.mark.parametrize(
    ("bounds", "words"),
    [
        pytest.param((INF, None), r"lower.*\+inf", id="lower+inf"),
        pytest.param((None, -INF), "upper.*-inf", id="upper-inf"),
        pytest.param(({"a": jnp.asarray([0.0, INF])}, None), r"lower\['a'\]", id="leaf"),
        pytest.param([(0.0, 1.0), (INF, INF)], r"\+inf", id="pairs"),
        pytest.param(scipy.optimize.Bounds([-INF, -INF], [1.0, -INF]), "-inf", id="Bounds"),
    ],
)
def test_infinite_bound_on_the_wrong_side(nothing_compiled, bounds, words):
    # Before: accepted (inf <= inf), so no point of the box was finite.
    with pytest.raises(ValueError, match=words):
        _solve({"a": jnp.zeros(2)}, [0.0, 0.0], bounds)


@pytest.mark.parametrize(
    "bounds",
    [[(0.0, np.nan), (0.0, 1.0)], (np.nan, 1.0)],
    ids=["pairs", "lower-upper"],
)
def test_nan_bounds(nothing_compiled, bounds):
    with pytest.raises(ValueError, match="NaN"):
        _solve(jnp.zeros(2), [0.0, 0.0], bounds)


INFINITE_EVERYWHERE = {
    "lower-upper": (-INF, INF),
    "pytrees": ({"a": jnp.full(2, -INF)}, {"a": INF}),
    "pairs": [(None, None), (-INF, INF)],
    "Bounds": scipy.optimize.Bounds(),
}


@pytest.mark.parametrize("bounds", list(INFINITE_EVERYWHERE))
def test_bounds_infinite_everywhere_are_no_bounds(bounds):
    assert canonicalize_bounds(INFINITE_EVERYWHERE[bounds], {"a": jnp.zeros(2)}) is None


@pytest.mark.parametrize("method", ["Newton", "L-BFGS"])
def test_methods_without_bounds_accept_infinite_ones(method):
    # Before: "Method 'Newton' does not take bounds" for bounds that bound nothing.
    for bounds in INFINITE_EVERYWHERE.values():
        res = _solve({"a": jnp.zeros(2)}, [1.0, -1.0], bounds, method=method)
        assert bool(res.success), res.message
        np.testing.assert_allclose(res.x["a"], [1.0, -1.0], atol=1e-6)


def test_traced_bounds_keep_working():
    @jax.jit
    def solve(lo, hi):
        pairs = _solve(jnp.zeros(2), jnp.asarray([2.0, -2.0]), [(lo, None), (None, hi)])
        lower_upper = _solve(jnp.zeros(2), jnp.asarray([2.0, -2.0]), (-hi, hi))
        return pairs.x, lower_upper.x

    pairs, lower_upper = solve(0.5, 1.0)
    np.testing.assert_allclose(pairs, [2.0, -2.0], atol=1e-8)
    np.testing.assert_allclose(lower_upper, [1.0, -1.0], atol=1e-8)
    pairs, _ = solve(3.0, -2.5)  # traced: trusted, not checked
    np.testing.assert_allclose(pairs, [3.0, -2.5], atol=1e-8)


@pytest.mark.parametrize("solver", ["L-BFGS-B", "GD", "trf"])
def test_float32_points_stay_inside_a_float64_box(solver):
    """SPEC section 2: every evaluated point lies inside the box. A float32 x0 with bounds
    float32 cannot hold (0.1, 0.3, -0.7) rounded them to nearest: the solve sat on
    float32(0.1) = 0.10000000149, above the user's 0.1. Rounded inward now; equal bounds
    with no float32 between them stay at the nearest (trf takes no equal bounds)."""
    fixed = solver != "trf"
    lower = np.array([-0.7, -1.0, 0.1 if fixed else -0.1, 0.2])
    upper = np.array([0.1, 0.3, 0.1, 0.5])
    seen = []

    def record(x):
        jax.debug.callback(lambda v: seen.append(np.asarray(v, np.float64)), x)
        return x

    x0 = jnp.zeros(4, jnp.float32)
    target = jnp.asarray([1.0, 1.0, 1.0, -1.0], jnp.float32)
    if solver == "trf":
        res = jd.least_squares(lambda x: record(x) - target, x0, bounds=(lower, upper))
    else:
        fun = lambda x: jnp.sum((record(x) - target) ** 2)
        res = jd.minimize(fun, x0, method=solver, bounds=(lower, upper))
    points = np.array(seen)
    assert len(points) > 1 and res.x.dtype == jnp.float32
    box = [0, 1, 3] if fixed else [0, 1, 2, 3]
    assert (points[:, box] >= lower[box]).all() and (points[:, box] <= upper[box]).all()
    if fixed:
        np.testing.assert_array_equal(points[:, 2], np.float32(0.1))  # none in [0.1, 0.1]
        # On the bounds: the largest float32 below 0.1 and 0.3, float32(0.2) (above 0.2).
        below = lambda v: np.nextafter(np.float32(v), np.float32(0))
        on_bounds = [below(0.1), below(0.3), np.float32(0.1), np.float32(0.2)]
        np.testing.assert_array_equal(res.x, on_bounds)


@pytest.mark.parametrize(
    "bounds",
    [
        [(0.1, 0.3), (-1.0, 0.3)],
        scipy.optimize.Bounds([0.1, -1.0], [0.3, 0.3]),
        np.array([[0.1, 0.3], [-1.0, 0.3]]),
    ],
    ids=["pairs", "Bounds", "pairs-array"],
)
def test_float32_bounds_in_scipy_formats_round_inward(bounds):
    """The same for scipy's formats (review: they were cast to x's dtype, to nearest,
    while being unflattened: res.x = float32(0.3) = 0.30000001 > 0.3)."""
    x0 = {"a": jnp.full(1, 0.2, jnp.float32), "b": jnp.zeros(1, jnp.float64)}
    res = jd.minimize(flat_square, x0, args=(jnp.ones(2),), method="L-BFGS-B", bounds=bounds)
    assert res.x["a"][0] == np.nextafter(np.float32(0.3), np.float32(0)), res.x
    assert res.x["b"][0] == 0.3, res.x


@pytest.mark.parametrize("method", ["L-BFGS-B", "GD", "Adam"])
def test_a_traced_empty_box_ends_at_x0_without_success(method):
    # Traced bounds cannot be checked at the front door. Before: lower = 2 > upper = 0
    # gave x = [0, 0] (outside "the box") as CONVERGED with success=True, and a traced
    # lower bound of +inf returned x = [inf, inf]. Now: NONFINITE at x0, f NaN.
    options = {"learning_rate": 0.05} if method == "Adam" else None

    @jax.jit
    def solve(lower, upper):
        x0, target = jnp.full(2, 0.5), jnp.asarray([1.0, 1.0])
        return _solve(x0, target, (lower, upper), method=method, options=options)

    for lower, upper in [(2.0, 0.0), (INF, INF), (-INF, -INF), (jnp.nan, 1.0)]:
        res = solve(jnp.asarray([0.0, lower]), jnp.asarray([1.0, upper]))
        assert int(res.status) == jd.Status.NONFINITE and not bool(res.success)
        assert np.isnan(res.fun) and int(res.nit) == 0
        # The coordinate with a real interval is projected; the empty one keeps x0's value.
        np.testing.assert_array_equal(res.x, [0.5, 0.5])
    res = solve(jnp.asarray([0.0, -1.0]), jnp.asarray([1.0, 0.0]))  # a real box still solves
    assert bool(res.success)
    np.testing.assert_allclose(res.x, [1.0, 0.0], atol=1e-6)


def test_a_traced_empty_box_in_a_batch_and_in_least_squares():
    lowers = jnp.asarray([-1.0, 2.0, -1.0])  # the middle problem's box [2, 0] is empty
    batch = jax.vmap(lambda lo: _solve(jnp.full(2, 0.5), jnp.ones(2), (lo, 0.0)))(lowers)
    np.testing.assert_array_equal(batch.status, [0, jd.Status.NONFINITE, 0])
    np.testing.assert_array_equal(batch.success, [True, False, True])
    np.testing.assert_array_equal(batch.x[1], [0.5, 0.5])
    np.testing.assert_allclose(batch.x[0], [0.0, 0.0], atol=1e-8)
    solve = jax.jit(
        lambda lo: jd.least_squares(lambda x: x - 1.0, jnp.full(2, 0.5), bounds=(lo, 0.0))
    )
    res = solve(2.0)
    assert int(res.status) == jd.Status.NONFINITE and not bool(res.success)
    np.testing.assert_array_equal(res.x, [0.5, 0.5])
    assert np.isnan(res.cost)


def test_concrete_bounds_inside_jit_are_still_checked():
    # Bounds built from constants stay concrete under a user's jit (x0 traced): they are
    # checked, and infinite ones are no bounds (before, Newton refused them there).
    target = jnp.asarray([1.0, -1.0])
    x = jax.jit(lambda x0: _solve(x0, target, (-INF, INF), method="Newton").x)(jnp.zeros(2))
    np.testing.assert_allclose(x, [1.0, -1.0], atol=1e-8)
    with pytest.raises(ValueError, match=r"\+inf"):
        jax.jit(lambda x0: _solve(x0, target, [(INF, None), (0.0, 1.0)]).x)(jnp.zeros(2))


# ---------------------------------------------------------------------------------------
# 2. Half precision
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_x0_is_refused(nothing_compiled, dtype):
    x0 = {"a": jnp.zeros(2), "h": jnp.zeros(2, dtype)}
    with pytest.raises(TypeError, match=r"x0\['h'\].*half precision.*float32"):
        jd.minimize(flat_square, x0, args=(jnp.zeros(4),), method="GD")


# ---------------------------------------------------------------------------------------
# 3. Unknown method names
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("lbfgs", "L-BFGS"),
        ("lbfgsb", "L-BFGS-B"),
        ("l_bfgs_b", "L-BFGS-B"),
        ("L_BFGS_B ", "L-BFGS-B"),
        ("newton-cg", "Newton"),
        ("momentun", "momentum"),
        ("adamw", "Adam"),
    ],
)
def test_unknown_method_suggests_the_closest(nothing_compiled, name, meant):
    with pytest.raises(ValueError) as err:
        _solve(jnp.zeros(2), [0.0, 0.0], None, method=name)
    message = str(err.value)
    assert f"Did you mean {meant!r}?" in message, message
    for known in method_names():
        assert known in message


@pytest.mark.parametrize("name", ["BFGS", "CG", "Nelder-Mead", "trust-constr", "TNC"])
def test_scipy_methods_we_do_not_have(name):
    with pytest.raises(ValueError, match=f"Unknown method {name!r}") as err:
        resolve_method(name)
    for known in method_names():
        assert known in str(err.value)


# ---------------------------------------------------------------------------------------
# 4. A trace buffer of gigabytes
# ---------------------------------------------------------------------------------------


def test_huge_trace_is_refused_before_compiling(nothing_compiled):
    # (15000 + 1) * (1e5 * 8 + 8) bytes = 12.0 GB, allocated up front (not run before the
    # fix: it would have tried).
    x0 = jnp.zeros(100_000)
    with pytest.raises(ValueError, match=r"12\.0 GB.*maxiter") as err:
        jd.minimize(flat_square, x0, args=(x0,), method="L-BFGS", options={"trace": True})
    assert "trace" in str(err.value)
    # minimize_batch goes through the same checks (and does not take trace at all).
    with pytest.raises(ValueError, match="trace"):
        jd.minimize_batch(
            flat_square,
            jnp.zeros((2, 100_000)),
            args=(jnp.zeros((2, 100_000)),),
            method="L-BFGS",
            options={"trace": True},
        )


# ---------------------------------------------------------------------------------------
# 5. minimize_batch's batch and lanes
# ---------------------------------------------------------------------------------------


def test_empty_batch(nothing_compiled):
    # Before: "lanes must be >= 1", about an argument the user did not give.
    with pytest.raises(ValueError, match=r"^minimize_batch got an empty batch \(B = 0"):
        jd.minimize_batch(flat_square, jnp.zeros((0, 2)), args=(jnp.zeros((0, 2)),))
    # least_squares_batch's errors name it (they said "minimize_batch").
    with pytest.raises(ValueError, match=r"^least_squares_batch got an empty batch"):
        jd.least_squares_batch(lambda x: x - 1.0, jnp.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"^least_squares_batch needs a leading batch axis"):
        jd.least_squares_batch(lambda x, c: x - c, jnp.zeros((3, 2)), args=(jnp.zeros((4, 2)),))


@pytest.mark.parametrize("lanes", [2.5, True, 0, -1, "2", np.float64(2.0)])
def test_lanes_must_be_a_positive_int(nothing_compiled, lanes):
    # Before: 2.5 and True were read as 2 and 1 silently.
    with pytest.raises((TypeError, ValueError), match="lanes must be a positive int"):
        jd.minimize_batch(flat_square, jnp.zeros((3, 2)), args=(jnp.zeros((3, 2)),), lanes=lanes)


def test_batch_sizes_that_differ_name_the_leaves(nothing_compiled):
    x0 = {"a": jnp.zeros((3, 2)), "b": jnp.zeros((4,))}
    with pytest.raises(ValueError, match=r"B = 3: x0\['a'\].*; B = 4: x0\['b'\]"):
        jd.minimize_batch(flat_square, x0, args=(jnp.zeros((3, 3)),))
    with pytest.raises(ValueError, match=r"B = 3: x0; B = 5: args\[0\]"):
        jd.minimize_batch(flat_square, jnp.zeros((3, 2)), args=(jnp.zeros((5, 2)),))
    with pytest.raises(ValueError, match=r"no axis \(a scalar\): x0\['s'\]"):
        jd.minimize_batch(
            flat_square, {"a": jnp.zeros((3, 2)), "s": 0.0}, args=(jnp.zeros((3, 3)),)
        )


# ---------------------------------------------------------------------------------------
# 6. The dict-minimize drop-in says when a solve did not succeed
# ---------------------------------------------------------------------------------------


def rosenbrock_value_and_grad(x):
    def rosen(x):
        return 100.0 * (x["b"] - x["a"] ** 2) ** 2 + (1.0 - x["a"]) ** 2

    return jax.value_and_grad(rosen)(x)


def _dict_x0():
    return OrderedDict(a=jnp.asarray(-1.2), b=jnp.asarray(1.0))


def test_dict_minimize_warns_when_the_solve_fails():
    with pytest.warns(RuntimeWarning, match="MAX_ITER") as record:
        x = jd_dict_minimize.minimize(rosenbrock_value_and_grad, _dict_x0(), options={"maxiter": 2})
    ours = [w for w in record if "MAX_ITER" in str(w.message)]
    assert jd.Status.MAX_ITER.message in str(ours[0].message)
    assert list(x) == ["a", "b"]


def test_dict_minimize_does_not_warn_on_success():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        x = jd_dict_minimize.minimize(rosenbrock_value_and_grad, _dict_x0())
    assert not [w for w in record if issubclass(w.category, RuntimeWarning)], record
    np.testing.assert_allclose([x["a"], x["b"]], [1.0, 1.0], atol=1e-4)


# ---------------------------------------------------------------------------------------
# 7. SPEC section 7, items without a test before
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bounds",
    [{"lower": 0.0, "upper": 1.0}, "0, 1", jnp.asarray([0.0, 1.0])],
    ids=["dict", "str", "array"],
)
def test_bounds_of_no_known_format(nothing_compiled, bounds):
    with pytest.raises(ValueError, match="scipy.optimize.Bounds"):
        _solve(jnp.zeros(2), [0.0, 0.0], bounds)


def test_dict_minimize_suggests_the_method(nothing_compiled):
    with pytest.raises(ValueError, match="Did you mean 'L-BFGS-B'"):
        jd_dict_minimize.minimize(rosenbrock_value_and_grad, _dict_x0(), method="l_bfgs_b")


@pytest.mark.parametrize("name", ["maxiter", "maxfun"])
@pytest.mark.parametrize("budget", [2**31, 2**40, 2**63])
def test_a_budget_beyond_int32_is_no_limit(name, budget):
    """The loop counts nit and nfev in int32: a larger maxiter or maxfun once wrapped
    around in the comparison and stopped the solve at x0 with MAX_ITER (status 1, nit 0);
    it now means no limit, as int32's largest does."""
    fun = lambda x: jnp.sum((x - 1.0) ** 2)
    x0 = jnp.array([0.5, -0.3])
    res = jd.minimize(fun, x0, options={name: budget})
    ref = jd.minimize(fun, x0)
    assert res.status == ref.status == 0 and res.nit == ref.nit > 0


def test_float_options_beyond_float32_warn_nothing_without_x64():
    """Without x64 a float option beyond float32's range (gtol=1e300) is read as inf, as
    before, and not handed to the jit as a number it must cast (a RuntimeWarning on every
    call)."""
    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.simplefilter("error")
        res = jd.minimize(lambda x: jnp.sum(x**2), jnp.array([0.5, -0.3]), options={"gtol": 1e300})
    assert res.status == 0 and res.nit == 0
