"""L-BFGS-B and L-BFGS against scipy on the MGH zoo, bounds, batching, float32, and the
Moré–Thuente line search on its own.

Compiled solves are shared: problems with the same x0 structure go through one
dispatching objective (``problems_lbfgs.dispatcher``), and every solve is cached per
module, so the file compiles about twenty programs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from problems_lbfgs import ALL, BY_NAME, OUTSIDE_THE_BOX, dispatcher
from scipy.optimize._dcsrch import DCSRCH

import jaxopt_dict as jd
from jaxopt_dict._options import resolve_options
from jaxopt_dict._tree import projected_gradient, tracing_batched_solve
from jaxopt_dict.methods import lbfgs
from jaxopt_dict.methods.lbfgs import TWO_LOOP_MAX_N, cauchy, compact, two_loop
from jaxopt_dict.methods.lbfgs.cauchy import cauchy_point
from jaxopt_dict.methods.lbfgs.compact_stepper import compact_form_stepper
from jaxopt_dict.methods.lbfgs.more_thuente import (
    WolfeTask,
    more_thuente_advance,
    more_thuente_start,
    more_thuente_step,
)

# exp overflows at trial points of the line search (SPEC section 2: rejected trials).
OVERFLOWS_IN_LINE_SEARCH = {"jennrich_sampson"}
# Short, well-conditioned runs whose iterates match scipy's to rounding: same counts.
EXACT_COUNTS = [
    "rosenbrock_2",
    "beale",
    "helical_valley",
    "bard",
    "box_3d",
    "wood",
    "penalty_1",
    "quadratic_box",
    "outside_box",
    "nnls",
    "rosenbrock_box",
    "logistic_box",
]


@functools.cache
def scipy_result(name: str):
    return BY_NAME[name].scipy_solve()


@functools.cache
def our_result(name: str):
    p = BY_NAME[name]
    fun, args = dispatcher(p)
    return jd.minimize(fun, p.x0, args=args, method="L-BFGS-B", bounds=p.bounds)


def known_solution(name: str):
    p = BY_NAME[name]
    if name == "nnls":  # the exact active set from the active-set NNLS solver
        from problems_lbfgs import _NN_A, _NN_B

        return so.nnls(_NN_A, _NN_B)[0]
    return p.x_star


@pytest.mark.parametrize("name", [p.name for p in ALL])
def test_zoo_against_scipy(name):
    p = BY_NAME[name]
    ref, res = scipy_result(name), our_result(name)
    x = p.flatten(res.x)
    assert np.all(np.isfinite(x)) and np.isfinite(float(res.fun))
    if name in OVERFLOWS_IN_LINE_SEARCH:
        # exp overflows at trial points: the search backs away from them and the solve
        # reaches the minimum (124.362 [6]); scipy's stops at 214.3 (FTOL) after them.
        assert bool(res.success), res.message
        np.testing.assert_allclose(float(res.fun), p.f_star, rtol=1e-8)
        assert float(res.fun) < ref.fun
        return
    if ref.success:
        assert bool(res.success), res.message
    # As good as scipy's minimum, at most a little more work.
    scale = max(1.0, abs(ref.fun))
    assert float(res.fun) <= ref.fun + 1e-6 * scale
    assert int(res.nfev) <= 1.5 * ref.nfev + 3
    np.testing.assert_allclose(float(res.fun), float(p.fun_np(x)), rtol=1e-10, atol=1e-12)
    if p.bounds is None:
        return
    lower, upper = p.flat_bounds()
    assert np.all(x >= lower) and np.all(x <= upper)
    # Coordinates on a bound at the solution sit exactly on it: where the solution is
    # known, and otherwise where scipy is on a bound with the gradient pushing outward.
    star = known_solution(name)
    if star is not None:
        on_lower, on_upper = star == lower, star == upper
        np.testing.assert_allclose(x, star, atol=1e-4)
    else:
        g = p.grad_np(ref.x)
        on_lower = (ref.x == lower) & (g > 1e-4)
        on_upper = (ref.x == upper) & (g < -1e-4)
    assert np.array_equal(x[on_lower], lower[on_lower])
    assert np.array_equal(x[on_upper], upper[on_upper])


@pytest.mark.parametrize("name", EXACT_COUNTS)
def test_same_counts_as_scipy(name):
    ref, res = scipy_result(name), our_result(name)
    assert (int(res.nit), int(res.nfev)) == (ref.nit, ref.nfev)


def test_median_nfev_ratio():
    """The targets: median nfev ours/scipy <= 1 on the unbounded and the bounded set."""
    for bounded in (False, True):
        ratios = [
            int(our_result(p.name).nfev) / scipy_result(p.name).nfev
            for p in ALL
            if (p.bounds is not None) == bounded and p.name not in OVERFLOWS_IN_LINE_SEARCH
        ]
        assert np.median(ratios) <= 1.0


def test_no_evaluation_outside_the_box():
    """The bounded zoo objectives count every evaluation outside their boxes
    (``dispatcher``): none, and every bounded solve succeeds."""
    for p in ALL:
        if p.bounds is not None:
            res = our_result(p.name)
            assert bool(res.success), p.name
    assert not OUTSIDE_THE_BOX, dict(OUTSIDE_THE_BOX)


# Unbounded problems of at most ``TWO_LOOP_MAX_N`` variables take the two-loop stepper
# (``methods/lbfgs/two_loop.py``); larger ones the compact form (``compact_stepper.py``). The zoo's small
# problems are also solved with the compact form here, so both meet scipy's counts.
COMPACT_L_BFGS = jd.Method(
    "L-BFGS (compact form)",
    lambda opts: compact_form_stepper(opts["maxcor"], opts["maxls"], bounded=False),
    lbfgs._options(),
    default_maxiter=15000,
)


@pytest.mark.parametrize("name", [n for n in EXACT_COUNTS if BY_NAME[n].bounds is None])
def test_compact_form_without_bounds_has_scipys_counts(name):
    p = BY_NAME[name]
    assert p.flatten(p.x0).size <= TWO_LOOP_MAX_N  # the zoo's own solve took the two-loop
    fun, args = dispatcher(p)
    res = jd.minimize(fun, p.x0, args=args, method=COMPACT_L_BFGS)
    ref = scipy_result(name)
    assert (int(res.nit), int(res.nfev)) == (ref.nit, ref.nfev)
    np.testing.assert_allclose(
        p.flatten(res.x), p.flatten(our_result(name).x), rtol=1e-7, atol=1e-9
    )


# ---------------------------------------------------------------------------------------
# vmap, float32, options.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, method",
    [("quadratic_box", "L-BFGS-B"), ("rosenbrock_10", "L-BFGS")],
)
def test_vmap_equals_single_solves(name, method):
    """A batch gives each problem what it gets alone (and L-BFGS is L-BFGS-B unbounded)."""
    p = BY_NAME[name]
    fun, args = dispatcher(p)
    shifts = np.array([0.0, 0.05, -0.1])
    batch = jax.tree.map(lambda v: np.stack([v + s for s in shifts]), p.x0)
    if p.bounds is not None:
        batch = jax.tree.map(lambda v, lo, hi: np.clip(v, lo, hi), batch, *p.bounds)
    batched = jax.vmap(lambda x0: jd.minimize(fun, x0, args=args, method=method, bounds=p.bounds))(
        batch
    )
    for i in range(len(shifts)):
        x0 = jax.tree.map(lambda v, i=i: v[i], batch)
        single = jd.minimize(fun, x0, args=args, method="L-BFGS-B", bounds=p.bounds)
        assert int(batched.nit[i]) == int(single.nit)
        assert int(batched.nfev[i]) == int(single.nfev)
        assert int(batched.status[i]) == int(single.status)
        for a, b in zip(jax.tree.leaves(batched.x), jax.tree.leaves(single.x)):
            np.testing.assert_allclose(a[i], b, rtol=1e-9, atol=1e-12)


def test_vmap_equals_single_solves_compact_form():
    """The same for the compact form that unbounded problems above ``TWO_LOOP_MAX_N``
    variables take (a well-conditioned one: rounding stays in the last digits)."""
    n = TWO_LOOP_MAX_N + 8
    a = np.random.default_rng(0).normal(size=(2 * n, n)) / np.sqrt(n)

    def fun(x):
        return jnp.sum(jnp.logaddexp(0.0, a @ x - 0.5)) + 0.05 * jnp.sum(x**2)

    batch = np.stack([np.full(n, v) for v in (0.0, 0.7, -1.3)])
    batched = jax.vmap(lambda x0: jd.minimize(fun, x0, method="L-BFGS"))(batch)
    for i in range(len(batch)):
        single = jd.minimize(fun, batch[i], method="L-BFGS")
        assert int(single.nit) > 5 and bool(single.success)
        assert (int(batched.nit[i]), int(batched.nfev[i])) == (int(single.nit), int(single.nfev))
        assert int(batched.status[i]) == int(single.status)
        np.testing.assert_allclose(batched.x[i], single.x, rtol=1e-9, atol=1e-12)


HONEST = {jd.Status.CONVERGED, jd.Status.FTOL, jd.Status.XTOL, jd.Status.LINESEARCH_FAILED}


@pytest.mark.parametrize("name", ["rosenbrock_10", "rosenbrock_box"])
def test_float32_ends_honestly(name):
    p = BY_NAME[name]
    x0 = jax.tree.map(lambda v: np.asarray(v, np.float32), p.x0)
    bounds = None if p.bounds is None else jax.tree.map(np.float32, p.bounds)
    res = jd.minimize(p.fun, x0, method="L-BFGS-B", bounds=bounds)
    assert int(res.status) in HONEST, res.message
    assert int(res.nit) < 2000  # ended on its own, not by wandering on rounding noise
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(res.x))
    assert np.isfinite(float(res.fun))
    ref = scipy_result(name).fun
    assert float(res.fun) <= ref + 1e-3 * max(1.0, abs(ref))


def test_projected_gradient_keeps_gradients_below_the_ulp_of_x():
    # x - P(x - g) in float32 at x ~ 1e4 (ulp 1e-3) rounds g = 1e-4 to 0; scipy's projgr
    # compares instead. Far bounds: the gradient itself; near ones: the distance to them.
    x = jnp.asarray([1e4, 1e4, 1e4, 1e4, 5.0, 5.0], jnp.float32)
    g = jnp.asarray([1e-4, -1e-4, 3.0, -3.0, 2.0, -2.0], jnp.float32)
    lower = jnp.asarray([-1e6, -1e6, 1e4 - 1.0, -1e6, 5.0, 0.0], jnp.float32)
    upper = jnp.asarray([1e6, 1e6, 1e6, 1e4 + 1.0, 9.0, 5.0], jnp.float32)
    pg = projected_gradient(x, g, jd.Box(lower, upper))
    np.testing.assert_array_equal(pg, np.float32([1e-4, -1e-4, 1.0, -1.0, 0.0, 0.0]))
    assert pg.dtype == jnp.float32
    # Where nothing rounds, it is x - P(x - g) exactly (random points inside random boxes).
    rng = np.random.default_rng(0)
    lo, hi = np.sort(rng.normal(size=(2, 200)), axis=0)
    hi[::7], lo[::11] = np.inf, -np.inf
    xs = np.clip(rng.normal(size=200), lo, hi)
    gs = rng.normal(size=200) * 2.0
    pg = projected_gradient(jnp.asarray(xs), jnp.asarray(gs), jd.Box(lo, hi))
    np.testing.assert_allclose(pg, xs - np.clip(xs - gs, lo, hi), rtol=1e-12, atol=1e-15)


def _log_cosh_far(x):
    centers = jnp.asarray([1e4 + 0.3, 2e4 + 0.7, 3e4 + 0.1], x.dtype)
    z = (x - centers) / 1000.0
    return jnp.sum(jnp.logaddexp(z, -z))


def test_inactive_bounds_do_not_hide_a_small_gradient_in_float32():
    # With bounds +-1e6 that never become active, the float32 solve is the unbounded one:
    # it stopped at nit 2 with |g| = 1.5e-4 (15x gtol, x 154 off) when the projected
    # gradient was computed as x - P(x - g).
    x0 = jnp.asarray([7e3, 1.7e4, 2.7e4], jnp.float32)
    res = jd.minimize(_log_cosh_far, x0, method="L-BFGS-B", bounds=(-1e6, 1e6))
    g = np.asarray(jax.grad(_log_cosh_far)(jnp.asarray(res.x, jnp.float64)))
    assert int(res.status) == jd.Status.CONVERGED, res.message
    assert np.max(np.abs(g)) <= 2e-5
    # |g| = tanh(z) / 1000 <= 2e-5 puts x within 1000 * atanh(0.02) = 20 of the centers.
    np.testing.assert_allclose(res.x, [1e4 + 0.3, 2e4 + 0.7, 3e4 + 0.1], atol=20.0)


def test_lbfgs_takes_no_bounds():
    p = BY_NAME["rosenbrock_10"]
    with pytest.raises(ValueError, match="L-BFGS-B"):
        jd.minimize(p.fun, p.x0, method="L-BFGS", bounds=(0.0, 1.0))


def test_options():
    p = BY_NAME["rosenbrock_2"]
    fun, args = dispatcher(p)
    specs = jd.option_specs(jd.methods.resolve_method("L-BFGS-B"))
    assert resolve_options("L-BFGS-B", specs, {"history_size": 3})["maxcor"] == 3
    for bad in ({"maxcor": 0}, {"maxls": 0}, {"maxcor": 2.5}):
        with pytest.raises(ValueError):
            jd.minimize(fun, p.x0, args=args, options=bad)
    with pytest.raises(TypeError, match="maxcor"):
        jd.minimize(fun, p.x0, args=args, options={"maxcorr": 3})
    defaults = {s.name: s.default for s in specs}
    assert defaults["maxiter"] == 15000 and defaults["maxfun"] == 15000
    assert defaults["maxcor"] == 10 and defaults["maxls"] == 20 and defaults["gtol"] == 1e-5
    assert defaults["ftol"] == 2.220446049250313e-09


@pytest.mark.parametrize("name", ["powell_singular", "wood", "kowalik_osborne", "brown_dennis"])
def test_maxls_failures_and_restarts_match_scipy(name):
    """With one trial per search, scipy's failures (a failed search with pairs in memory
    drops them and retries steepest descent once; without pairs it gives up) and its
    successes are reproduced with the same counts; a failure keeps the last iterate."""
    p = BY_NAME[name]
    fun, args = dispatcher(p)
    res = jd.minimize(fun, p.x0, args=args, options={"maxls": 1})
    bounds = p.flat_bounds()
    ref = so.minimize(
        p.value_and_grad_np, p.flatten(p.x0), jac=True, method="L-BFGS-B", options={"maxls": 1}
    )
    assert bounds is None
    assert (int(res.nit), int(res.nfev)) == (ref.nit, ref.nfev)
    assert bool(res.success) == bool(ref.success)
    if not ref.success:  # scipy: ABNORMAL_TERMINATION_IN_LNSRCH
        assert int(res.status) == jd.Status.LINESEARCH_FAILED
        np.testing.assert_allclose(p.flatten(res.x), ref.x, rtol=1e-8, atol=1e-10)
        assert float(res.fun) <= float(p.fun_np(p.flatten(p.x0)))


# ---------------------------------------------------------------------------------------
# The Moré–Thuente state machine on its own.
# ---------------------------------------------------------------------------------------

_BETA = 0.002
LINE_FUNCTIONS = {  # Moré & Thuente (1994), sec. 5, and two easy ones
    "mt1": (lambda a: -a / (a * a + 2.0), lambda a: (a * a - 2.0) / (a * a + 2.0) ** 2),
    "mt2": (
        lambda a: (a + 0.004) ** 5 - 2.0 * (a + 0.004) ** 4,
        lambda a: 5.0 * (a + 0.004) ** 4 - 8.0 * (a + 0.004) ** 3,
    ),
    "quadratic": (lambda a: (a - 3.0) ** 2, lambda a: 2.0 * (a - 3.0)),
    "cubic": (lambda a: a**3 - 3.0 * a, lambda a: 3.0 * a * a - 3.0),
}


def drive(phi, dphi, stp, stpmax=1e10, budget=40, stacked=False):
    """Run a search to its end; returns (trial steps, task)."""
    search = more_thuente_start(phi(0.0), dphi(0.0), stp, stpmax, stacked=stacked)
    trials = []
    advance = jax.jit(more_thuente_advance)
    for _ in range(budget):
        a = float(more_thuente_step(search))
        trials.append(a)
        search, task = advance(search, phi(a), dphi(a))
        if int(task) != WolfeTask.CONTINUE:
            return trials, int(task)
    raise AssertionError("no end")


def drive_scipy(phi, dphi, stp, stpmax=1e10):
    search = DCSRCH(phi, dphi, 1e-3, 0.9, 0.1, 0.0, stpmax)
    f, g, task, trials = phi(0.0), dphi(0.0), b"START", []
    for _ in range(40):
        stp, f, g, task = search._iterate(stp, f, g, task)
        if task[:2] != b"FG":
            return trials, task
        trials.append(stp)
        f, g = phi(stp), dphi(stp)
    raise AssertionError("no end")


@pytest.mark.parametrize("stacked", [False, True], ids=["per-field", "stacked"])
@pytest.mark.parametrize("name", sorted(LINE_FUNCTIONS))
@pytest.mark.parametrize("stp", [1e-3, 0.1, 1.0, 10.0, 1e3])
def test_more_thuente_strong_wolfe_and_scipy_trials(name, stp, stacked):
    phi, dphi = LINE_FUNCTIONS[name]
    trials, task = drive(phi, dphi, stp, stacked=stacked)
    ref_trials, ref_task = drive_scipy(phi, dphi, stp)
    np.testing.assert_allclose(trials, ref_trials, rtol=1e-12)
    assert (task == WolfeTask.CONVERGED) == ref_task.startswith(b"CONV")
    if task == WolfeTask.CONVERGED:
        a = trials[-1]
        assert phi(a) <= phi(0.0) + 1e-3 * a * dphi(0.0)
        assert abs(dphi(a)) <= 0.9 * abs(dphi(0.0))


def test_more_thuente_named_warnings():
    # Decreasing all the way to stpmax: the search stops there.
    trials, task = drive(lambda a: -a, lambda a: -1.0, 1.0, stpmax=5.0)
    assert task == WolfeTask.WARN_STPMAX and trials[-1] == 5.0
    # A minimizer too close to 0 for the curvature test: the bracket collapses (xtol).
    phi, dphi = LINE_FUNCTIONS["mt2"]
    _, task = drive(phi, dphi, 1.0)
    assert task == WolfeTask.WARN_XTOL


@pytest.mark.parametrize("stacked", [False, True], ids=["per-field", "stacked"])
def test_more_thuente_state_stays_finite_and_typed(stacked):
    search = more_thuente_start(1.0, -1.0, 1.0, 10.0, stacked=stacked)
    # Degenerate inputs: zero slope change and equal values (0/0 in the interpolation).
    nxt, _ = more_thuente_advance(search, 1.0, -1.0)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(nxt))
    assert jax.tree.map(lambda v: v.dtype, nxt) == jax.tree.map(lambda v: v.dtype, search)
    # The layout is kept, and a field set by ``replaced`` reads back.
    assert nxt.stacked == stacked
    assert jax.tree.structure(nxt) == jax.tree.structure(search)
    moved = nxt.replaced(stx=2.5, bracketed=False)
    assert (float(moved.stx), bool(moved.bracketed)) == (2.5, False)
    assert float(moved.sty) == float(nxt.sty) and moved.stacked == stacked
    with pytest.raises(TypeError, match="no field 'values'"):
        nxt.replaced(values=0.0)


def test_two_loop_stacks_its_search_only_in_a_single_solve():
    # Stacked, the search crosses the loop's carry and the Wolfe cond as two arrays; a
    # batched trace keeps one array per field (init and step alike: ``MoreThuente``).
    stepper = two_loop.two_loop_stepper(maxcor=10, maxls=20)
    x = jnp.array([-1.2, 1.0])
    ev = jd.Evaluation(x=x, f=jnp.asarray(24.2), g=jnp.array([-215.6, -88.0]))
    single = stepper.init(ev, None)[0].search
    assert single.stacked and single.values.shape == (13,) and single.flags.shape == (2,)
    with tracing_batched_solve():
        batched = stepper.init(ev, None)[0].search
    assert not batched.stacked and len(jax.tree.leaves(batched)) == 15
    np.testing.assert_array_equal(single.values, jnp.stack(batched.values))


def test_compact_form_stacks_its_search_in_a_single_solve_without_the_cauchy_window():
    # Unbounded problems above ``TWO_LOOP_MAX_N`` stack the search (which lets their next
    # search start in a cond), as do boxed ones whose Cauchy point has no window; larger
    # boxed solves and batched traces keep one array per field.
    n = TWO_LOOP_MAX_N + 8
    x = jnp.linspace(-1.0, 1.0, n)
    ev = jd.Evaluation(x=x, f=jnp.asarray(3.0), g=2.0 * x)
    box = jd.Box(jnp.full(n, -2.0), jnp.full(n, 2.0))
    unbounded = compact_form_stepper(10, 20, bounded=False).init(ev, None)[0].search
    assert unbounded.stacked and unbounded.values.shape == (13,)
    boxed = compact_form_stepper(10, 20, bounded=True).init(ev, box)[0].search
    assert not boxed.stacked and len(jax.tree.leaves(boxed)) == 15
    small = 2 * cauchy.WINDOW
    ev_small = jd.Evaluation(x=x[:small], f=ev.f, g=ev.g[:small])
    box_small = jd.Box(box.lower[:small], box.upper[:small])
    assert compact_form_stepper(10, 20, bounded=True).init(ev_small, box_small)[0].search.stacked
    with tracing_batched_solve():
        batched = compact_form_stepper(10, 20, bounded=False).init(ev, None)[0].search
    assert not batched.stacked
    np.testing.assert_array_equal(unbounded.values, jnp.stack(batched.values))


def test_layout_agrees_where_init_is_also_called_on_vmap_tracers():
    # The unrolled adjoint makes the state from ``init`` twice: for its types (in
    # ``eval_shape``: no vmap tracer visible) and at x0. Eager under a user's vmap the
    # second call sees vmap tracers; choosing the layout by them gave a pytree
    # structure error (a review found it). The layout follows the trace, not the leaves.
    def solve(x):
        opts = {"adjoint": "unrolled", "maxfun": 4, "maxiter": 3}
        return jd.minimize(lambda v: jnp.sum((v - 1.0) ** 2), x, method="L-BFGS", options=opts)

    starts = jnp.array([[0.0, 2.0], [3.0, -1.0]])
    with jax.disable_jit():
        batched = jax.vmap(solve)(starts)
    for i in range(2):
        alone = solve(starts[i])
        np.testing.assert_allclose(batched.x[i], alone.x, rtol=1e-12)
        assert int(batched.nfev[i]) == int(alone.nfev)


@pytest.mark.parametrize(
    "stepper, n, bounded",
    [
        (two_loop.two_loop_stepper(10, 20), 2, False),
        (compact_form_stepper(10, 20, bounded=False), TWO_LOOP_MAX_N + 8, False),
        (compact_form_stepper(10, 20, bounded=True), 6, True),
        (compact_form_stepper(10, 20, bounded=True), 2 * cauchy.WINDOW + 1, True),
    ],
    ids=["two-loop", "compact", "compact-small-box", "compact-box"],
)
def test_init_state_has_one_structure_on_vmap_tracers_and_in_eval_shape(stepper, n, bounded):
    # What the test above checks end to end (eagerly, 20 s), for every stepper that can
    # stack its search: ``init`` on vmap tracers (a user's vmap, eager) gives the state
    # ``init`` gives in ``eval_shape``.
    box = jd.Box(jnp.full(n, -2.0), jnp.full(n, 2.0)) if bounded else None

    def state_at(x):
        return stepper.init(jd.Evaluation(x=x, f=jnp.sum(x * x), g=2.0 * x), box)[0]

    x = jnp.linspace(-1.0, 1.0, n)
    alone = jax.tree.structure(jax.eval_shape(state_at, x))
    seen = []
    jax.vmap(lambda v: seen.append(jax.tree.structure(state_at(v))) or v)(jnp.stack([x, -x]))
    assert seen == [alone]


# ---------------------------------------------------------------------------------------
# The vectorized generalized Cauchy point against the sequential breakpoint walk.
# ---------------------------------------------------------------------------------------


def sequential_cauchy(x, g, lower, upper, w, mid, theta):
    """Byrd et al. (1995), algorithm CP, one breakpoint at a time, in NumPy."""
    n = x.size
    has_l, has_u = np.isfinite(lower), np.isfinite(upper)
    fixed = has_l & has_u & (upper - lower <= 0)
    at_l, at_u = has_l & (x <= lower), has_u & (x >= upper)
    d, t = np.zeros(n), np.full(n, np.inf)
    free, bnded = np.ones(n, bool), True
    for i in range(n):
        bounded = (has_l[i] or has_u[i]) and not fixed[i]
        pinned = bounded and ((at_l[i] and g[i] >= 0) or (not at_l[i] and at_u[i] and g[i] <= 0))
        idle = bounded and not at_l[i] and not at_u[i] and g[i] == 0
        if fixed[i] or pinned:
            free[i] = False
            continue
        if idle:
            continue
        d[i] = -g[i]
        if has_l[i] and d[i] < 0:
            t[i] = (x[i] - lower[i]) / g[i]
        elif has_u[i] and d[i] > 0:
            t[i] = (upper[i] - x[i]) / -g[i]
        elif d[i] != 0:
            bnded = False
    xcp, p, c = x.copy(), w.T @ d, np.zeros(w.shape[1])
    f1 = -d @ d
    f2 = theta * (d @ d) - p @ mid @ p
    f2_first, dtm, t_prev, tsum = f2, -f1 / f2, 0.0, 0.0
    order = [i for i in np.argsort(t, kind="stable") if np.isfinite(t[i])]
    for count, i in enumerate(order):
        dt = t[i] - t_prev
        if dtm < dt:
            break
        tsum, t_prev = tsum + dt, t[i]
        di = d[i]
        d[i] = 0.0
        xcp[i] = upper[i] if di > 0 else lower[i]
        free[i] = False
        zi = xcp[i] - x[i]
        f1 += dt * f2 + di * di - theta * di * zi
        f2 -= theta * di * di
        c = c + dt * p
        v = mid @ w[i]
        f1 += di * (c @ v)
        f2 += 2.0 * di * (p @ v) - di * di * (w[i] @ v)
        p = p - di * w[i]
        f2 = max(np.finfo(float).eps * f2_first, f2)
        if count + 1 < len(order):
            dtm = -f1 / f2
        else:
            dtm = 0.0 if bnded else -f1 / f2
    dtm = max(dtm, 0.0)
    return xcp + (tsum + dtm) * d, free, c + dtm * p


def _random_memory(n: int, pairs: int, rng):
    """A limited memory (maxcor 5) with ``pairs`` random pairs pushed (y: s scaled per
    coordinate, plus noise)."""
    mem = compact.memory_empty(5, n, jnp.float64)
    push = jax.jit(compact.memory_push)
    for _ in range(pairs):
        s = rng.normal(size=n)
        y = s * rng.uniform(0.5, 2.0, size=n) + 0.1 * rng.normal(size=n)
        mem = push(mem, s, y, s @ y, y @ y, s @ s)
    return mem


@pytest.mark.parametrize("seed", range(6))
def test_cauchy_point_matches_sequential_walk(seed):
    rng = np.random.default_rng(seed)
    n, pairs = 12, seed % 5  # up to 4 pairs, and none
    lower = np.where(rng.random(n) < 0.7, -rng.random(n), -np.inf)
    upper = np.where(rng.random(n) < 0.7, rng.random(n), np.inf)
    upper[0] = lower[0] = -0.3  # a fixed variable
    x = np.clip(rng.normal(size=n) * 0.5, lower, upper)
    x[1] = lower[1] if np.isfinite(lower[1]) else x[1]  # one on a bound
    g = rng.normal(size=n)
    g[2] = 0.0
    mem = _random_memory(n, pairs, rng)
    mid = jax.jit(compact.middle_matrix)(mem)
    w = np.asarray(jax.jit(compact.w_rows)(mem, jnp.arange(n)))
    got = jax.jit(cauchy_point)(x, g, lower, upper, mem, mid)
    xcp, free, c = sequential_cauchy(x, g, lower, upper, w, np.asarray(mid), float(mem.theta))
    np.testing.assert_allclose(np.asarray(got.xcp), xcp, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(got.free), free)
    np.testing.assert_allclose(np.asarray(got.c), c, rtol=1e-9, atol=1e-11)
    on_bounds = ~free & ~(lower == upper)
    assert np.all((xcp[on_bounds] == lower[on_bounds]) | (xcp[on_bounds] == upper[on_bounds]))


def _cauchy_case(kind: str, n: int, rng):
    """A point, gradient, box and memory for the Cauchy point tests. ``kind``: "pairs",
    mixed bounds and a few pairs (the GCP passes 37-45 breakpoints); "wide", the same with
    every bound 100x farther from x, so the GCP passes at most one; "steep", no pairs and
    boxes that the path crosses early, so the GCP passes every breakpoint; "ties",
    ``B = I`` (the GCP is at t = 1) with 5
    breakpoints equal at 0.5 and 51 around 1 that differ by 1e-9 (one float32 value), in
    shuffled order: about half of them lie below 1; "close", the same with only 11 around 1
    and the rest between 2 and 3, so a window of 32 holds all 16 smallest breakpoints
    (float32-equal ones among them: the window must order them in float64)."""
    lower = np.where(rng.random(n) < 0.8, -rng.random(n), -np.inf)
    upper = np.where(rng.random(n) < 0.8, rng.random(n), np.inf)
    x = np.clip(rng.normal(size=n) * 0.5, lower, upper)
    g = rng.normal(size=n)
    pairs = 3
    if kind == "wide":
        lower, upper = x - 100.0 * (x - lower), x + 100.0 * (upper - x)
    elif kind == "steep":
        lower, upper = x - 1e-3 * rng.random(n), x + 1e-3 * rng.random(n)
        pairs = 0
    elif kind == "ties":
        t = np.full(n, np.inf)
        t[:5] = 0.5
        t[5:56] = 1.0 + (rng.permutation(51) - 25.5) * 1e-9
        g, lower, upper, pairs = np.ones(n), x - t, np.full(n, np.inf), 0
    elif kind == "close":
        t = 2.0 + rng.random(n)
        t[:5] = 0.5
        t[5:16] = 1.0 + (rng.permutation(11) - 5.5) * 1e-9
        g, lower, upper, pairs = np.ones(n), x - t, np.full(n, np.inf), 0
    mem = _random_memory(n, pairs, rng)
    return x, g, lower, upper, mem


@pytest.mark.parametrize("kind", ["pairs", "wide", "steep", "ties", "close"])
@pytest.mark.parametrize("window", [2, 8, 32])
def test_cauchy_point_window_matches_sequential_walk(kind, window):
    """For large n only the smallest breakpoints are sorted (a float32 top_k, then
    float64) and the full sort is the fallback; either way the result is the walk's."""
    n = 150
    x, g, lower, upper, mem = _cauchy_case(kind, n, np.random.default_rng(window))
    mid = jax.jit(compact.middle_matrix)(mem)
    w = np.asarray(jax.jit(compact.w_rows)(mem, jnp.arange(n)))
    got = jax.jit(cauchy_point, static_argnames="window")(
        x, g, lower, upper, mem, mid, window=window
    )
    xcp, free, c = sequential_cauchy(x, g, lower, upper, w, np.asarray(mid), float(mem.theta))
    np.testing.assert_allclose(np.asarray(got.xcp), xcp, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(got.free), free)
    np.testing.assert_allclose(np.asarray(got.c), c, rtol=1e-9, atol=1e-11)
    pinned = ((x == lower) & (g > 0)) | ((x == upper) & (g < 0))
    passed = np.sum(~free & ~pinned)  # breakpoints the GCP lies beyond
    if kind == "wide" or (kind == "close" and window == 32):
        # Within the window's exactly ordered breakpoints (those whose float32 key is below
        # the largest one picked: window - 1 here): the windowed walk decided.
        assert passed <= window - 1
    if kind in ("pairs", "steep"):
        assert passed > window  # the GCP lay beyond the window: the fallback ran
    if kind == "ties":
        assert 5 < np.sum(~free) < 56  # the walk stopped among the float32 ties
    if kind == "close":
        assert 5 < passed < 16  # ... and here too


def _large_bounded(name: str):
    """Bounded problems large enough (n > 2 * WINDOW) that the Cauchy point examines a
    window of breakpoints first: (fun, x0, lower, upper)."""
    rng = np.random.default_rng(7)
    if name == "nnls_120":
        a = rng.normal(size=(200, 120))
        b = a @ np.maximum(rng.normal(size=120), 0.0) + 0.5 * rng.normal(size=200)
        return (lambda x: 0.5 * jnp.sum((a @ x - b) ** 2)), np.ones(120), 0.0, np.inf
    if name == "quadratic_150":
        q = rng.normal(size=(150, 150))
        q = q.T @ q / 150 + 0.1 * np.eye(150)
        c = rng.normal(size=150)
        return (lambda x: 0.5 * x @ (q @ x) - c @ x), np.full(150, 0.5), 0.0, 1.0
    n = 200  # "rosenbrock_200": the chained Rosenbrock in a box that holds back half of x
    fun = lambda x: jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    return fun, np.tile([-1.2, 1.0], n // 2), -0.5, 0.5


@pytest.mark.parametrize("name", ["nnls_120", "quadratic_150", "rosenbrock_200"])
def test_large_bounded_problems_have_scipys_counts(name):
    fun, x0, lower, upper = _large_bounded(name)
    value_and_grad = jax.jit(jax.value_and_grad(fun))
    ref = so.minimize(
        lambda x: tuple(np.asarray(v) for v in value_and_grad(x)),
        np.clip(x0, lower, upper),
        jac=True,
        method="L-BFGS-B",
        bounds=so.Bounds(lower, upper),
    )
    res = jd.minimize(fun, x0, method="L-BFGS-B", bounds=(lower, upper))
    assert bool(res.success) and ref.success
    assert (int(res.nit), int(res.nfev)) == (ref.nit, ref.nfev)
    np.testing.assert_allclose(float(res.fun), ref.fun, rtol=1e-10)
    active = (ref.x == lower) | (ref.x == upper)
    np.testing.assert_array_equal(np.asarray(res.x)[active], ref.x[active])


def test_large_bounded_vmap_equals_single_solves():
    """Under vmap the windowed Cauchy point and its fallback both run (a select): each
    problem still gets its own result."""
    fun, x0, lower, upper = _large_bounded("nnls_120")
    batch = np.stack([x0, 0.5 * x0, np.zeros_like(x0)])
    solve = lambda x: jd.minimize(fun, x, method="L-BFGS-B", bounds=(lower, upper))
    batched = jax.jit(jax.vmap(solve))(batch)
    for i in range(len(batch)):
        single = solve(batch[i])
        assert (int(batched.nit[i]), int(batched.nfev[i])) == (int(single.nit), int(single.nfev))
        np.testing.assert_allclose(batched.x[i], single.x, rtol=1e-9, atol=1e-12)


def test_two_loop_inverse_is_the_inverse_of_the_compact_matrix():
    """The unbounded L-BFGS's H (two-loop recursion, ``methods/lbfgs.py``) inverts the
    bounded solver's compact B (``compact.py``) built from the same pairs, through
    wrap-around of both buffers, skipped pushes and a reset."""
    rng = np.random.default_rng(3)
    n, m = 9, 4
    mem_compact = compact.memory_empty(m, n, jnp.float64)
    mem_two_loop = two_loop.memory_empty(m, n, jnp.float64)
    push_compact = jax.jit(compact.memory_push)
    push_two_loop = jax.jit(two_loop.memory_push)
    hg = jax.jit(two_loop.inverse_times)
    for k in range(9):
        if k == 6:  # a reset, as after a failed search: both start from H = I
            mem_compact = compact.memory_reset(mem_compact, jnp.asarray(True))
            mem_two_loop = two_loop.memory_reset(mem_two_loop, jnp.asarray(True))
        s = rng.normal(size=n)
        y = s * rng.uniform(0.5, 2.0, size=n)
        when = jnp.asarray(k != 2)  # one pair skipped
        mem_compact = push_compact(mem_compact, s, y, s @ y, y @ y, s @ s, when)
        mem_two_loop = push_two_loop(mem_two_loop, s, y, s @ y, y @ y, when)
        assert int(mem_two_loop.count) == int(mem_compact.count)
        w = np.asarray(jax.jit(compact.w_rows)(mem_compact, jnp.arange(n)))
        mid = np.asarray(jax.jit(compact.middle_matrix)(mem_compact))
        b = float(mem_compact.theta) * np.eye(n) - w @ mid @ w.T
        g = rng.normal(size=n)
        np.testing.assert_allclose(
            np.asarray(hg(mem_two_loop, g)), np.linalg.solve(b, g), rtol=1e-8
        )


def test_inverse_times_is_the_inverse_of_the_compact_matrix():
    rng = np.random.default_rng(3)
    n = 9
    mem = compact.memory_empty(4, n, jnp.float64)
    push = jax.jit(compact.memory_push)
    for _ in range(7):  # wraps around the circular buffer
        s = rng.normal(size=n)
        y = s * rng.uniform(0.5, 2.0, size=n)
        mem = push(mem, s, y, s @ y, y @ y, s @ s)
    w = np.asarray(jax.jit(compact.w_rows)(mem, jnp.arange(n)))
    b = float(mem.theta) * np.eye(n) - w @ np.asarray(jax.jit(compact.middle_matrix)(mem)) @ w.T
    g = rng.normal(size=n)
    hg = jax.jit(compact.inverse_times)(mem, g)
    np.testing.assert_allclose(np.asarray(hg), np.linalg.solve(b, g), rtol=1e-8)
