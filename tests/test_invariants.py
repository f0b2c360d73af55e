"""Invariants (SPEC section 3): stable state types, no recompiles, bounded tracing, vmap
equals single solves, and a vmapped batch costs what its hardest member costs alone."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec
from problems import (
    COSH,
    METHODS,
    QUAD_MIXED,
    cast_tree,
    jaxpr_equations,
    quad_mixed,
    quad_mixed_args,
)

import jaxopt_dict as jd
from jaxopt_dict.methods import resolve_method
from jaxopt_dict.methods.lbfgs import TWO_LOOP_MAX_N
from jaxopt_dict.methods.lbfgs.compact_stepper import compact_form_stepper
from jaxopt_dict.methods.optax_rules import OptaxState

# ---------------------------------------------------------------------------------------
# Method state: init and step produce the same types, shapes and dtypes
# ---------------------------------------------------------------------------------------


def _method_opts(method, overrides):
    """Options as ``minimize`` hands them to ``method.make``: static ones as Python values,
    numeric ones as arrays (built from Python scalars, as the front door does)."""
    opts = {}
    for spec in jd.option_specs(method):
        value = overrides.get(spec.name, spec.default)
        if not (spec.static or value is None or spec.kind is object):
            value = jnp.asarray(value)
        opts[spec.name] = value
    return opts


def _types(tree):
    return jax.tree.map(lambda a: (a.shape, jnp.dtype(a.dtype)), tree)


STATE_CASES = [
    pytest.param(method_id, dtype, bounded, id=f"{method_id}-{dtype.__name__}{'-box' * bounded}")
    for method_id in METHODS
    for dtype in (jnp.float32, jnp.float64)
    for bounded in (False, True)
    if not (bounded and METHODS[method_id][0] == "Newton")
]


@pytest.mark.parametrize(("method_id", "dtype", "bounded"), STATE_CASES)
def test_state_types_stable_across_init_and_step(method_id, dtype, bounded):
    name, overrides = METHODS[method_id]
    method = resolve_method(name)
    stepper = method.make(_method_opts(method, overrides))
    x0 = QUAD_MIXED.x0(dtype)
    unravel = ravel_pytree(x0)[1]

    def evaluate(x):
        hess = None
        if method.needs_hessian:
            hess = jax.hessian(lambda z: quad_mixed(unravel(z)))(ravel_pytree(x)[0])
        return jd.Evaluation(x, quad_mixed(x), jax.grad(quad_mixed)(x), hess)

    box = jd.Box(*QUAD_MIXED.bounds(dtype)) if bounded else None

    def init_and_two_steps(x0):
        state0, trial0 = stepper.init(evaluate(x0), box)
        state1, trial1, outcome1 = stepper.step(state0, evaluate(trial0), box)
        state2, trial2, outcome2 = stepper.step(state1, evaluate(trial1), box)
        return (state0, state1, state2), (trial0, trial1, trial2), (outcome1, outcome2)

    # Abstract evaluation: types only, nothing is compiled.
    states, trials, outcomes = jax.eval_shape(init_and_two_steps, x0)
    assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
    assert jax.tree.structure(states[0]) == jax.tree.structure(states[2])
    assert _types(states[0]) == _types(states[1]) == _types(states[2])
    for trial in trials:
        assert jax.tree.structure(trial) == jax.tree.structure(x0)
        assert _types(trial) == _types(x0)
    for outcome in outcomes:
        assert isinstance(outcome, jd.StepOutcome)
        for flag in (outcome.accepted, outcome.failed):
            assert getattr(flag, "shape", ()) == ()


FIRST_TRIP_CASES = [
    pytest.param(name, overrides, bounded, id=f"{method_id}{'-box' * bounded}")
    for method_id, (name, overrides) in {
        **METHODS,
        "L-BFGS-B": ("L-BFGS-B", {}),
        "L-BFGS-two-loop": ("L-BFGS", {}),
        "L-BFGS-compact": (None, {}),
    }.items()
    for bounded in (False, True)
    if not (bounded and name in ("Newton", "L-BFGS", None))
]


@pytest.mark.parametrize(("name", "overrides", "bounded"), FIRST_TRIP_CASES)
def test_first_trip_step_behaves_as_init(name, overrides, bounded):
    """``Stepper.step_starts``: on the first trip, ``step`` on a stale state (a finished
    problem's, as a ``minimize_batch`` lane has) gives ``init``'s trial, and the two states
    lead to the same trials and outcomes on the following trips."""
    if name is None:  # the compact form without bounds (unbounded problems with n > TWO_LOOP_MAX_N)
        stepper = compact_form_stepper(10, 20, bounded=False)
        method = resolve_method("L-BFGS")
    else:
        method = resolve_method(name)
        stepper = method.make(_method_opts(method, overrides))
    assert stepper.step_starts
    unravel = ravel_pytree(QUAD_MIXED.x0())[1]

    def evaluate(x):
        hess = None
        if method.needs_hessian:
            hess = jax.hessian(lambda z: quad_mixed(unravel(z)))(ravel_pytree(x)[0])
        return jd.Evaluation(x, quad_mixed(x), jax.grad(quad_mixed)(x), hess)

    box = jd.Box(*QUAD_MIXED.bounds()) if bounded else None

    @jax.jit
    def compare(x0, other_x0):
        # A stale state: two trips of another problem.
        stale, trial = stepper.init(evaluate(other_x0), box)
        for _ in range(2):
            stale, trial, _ = stepper.step(stale, evaluate(trial), box)
        ev0 = evaluate(x0)
        state_a, trial_a = stepper.init(ev0, box)
        state_b, trial_b, _ = stepper.step(stale, ev0, box, jnp.asarray(True))
        states = (stale, state_a)
        trials, outcomes = [(trial_a, trial_b)], []
        for _ in range(3):
            ev = evaluate(trial_a)
            state_a, trial_a, out_a = stepper.step(state_a, ev, box)
            state_b, trial_b, out_b = stepper.step(state_b, evaluate(trial_b), box)
            trials.append((trial_a, trial_b))
            outcomes.append((out_a, out_b))
        return trials, outcomes, states

    x0 = QUAD_MIXED.x0()
    trials, outcomes, (stale, state0) = compare(x0, jax.tree.map(lambda v: 0.5 * v - 1.0, x0))
    for trial_a, trial_b in trials:
        chex.assert_trees_all_equal(trial_a, trial_b)
    for out_a, out_b in outcomes:
        chex.assert_trees_all_equal(out_a, out_b)
    # The stale state was really another one (stateless methods aside; an optax rule's
    # state is its own, beside how much of its last update the box cut off).
    if isinstance(state0, OptaxState):
        stale, state0 = stale.opt_state, state0.opt_state
    if jax.tree.leaves(state0):
        assert not np.allclose(ravel_pytree(stale)[0], ravel_pytree(state0)[0])


def _without_step_starts(method: jd.Method) -> jd.Method:
    """``method`` as a user would write it without ``step_starts``: ``init`` on the first
    trip (in the driver's ``lax.cond``), ``step`` on the others."""

    def make(opts):
        inner = method.make(opts)
        return jd.Stepper(
            inner.init,
            lambda state, ev, box: inner.step(state, ev, box),
            uses_ftol=inner.uses_ftol,
            has_memory=inner.has_memory,
        )

    return method._replace(name=f"{method.name} without step_starts", make=make)


@pytest.mark.parametrize("name", ["GD", "Adam", "L-BFGS-B"])
def test_steppers_without_step_starts_give_the_same_solves(name):
    """A user stepper without ``step_starts`` (``init`` runs on the first trip, ``step``
    on the others) solves exactly as the built-in one that starts inside ``step``."""
    plain = _without_step_starts(resolve_method(name))
    options = {"learning_rate": 0.05} if name == "Adam" else {}
    starts = jax.tree.map(lambda v: jnp.stack([v, 0.5 * v - 1.0]), QUAD_MIXED.x0())

    def solve_both(x0):
        solve = lambda m: jd.minimize(quad_mixed, x0, method=m, options=options)
        return solve(name), solve(plain)

    for ours, theirs in [solve_both(QUAD_MIXED.x0()), jax.vmap(solve_both)(starts)]:
        chex.assert_trees_all_equal(
            (ours.nit, ours.nfev, ours.status), (theirs.nit, theirs.nfev, theirs.status)
        )
        chex.assert_trees_all_close(ours.x, theirs.x, rtol=1e-12, atol=1e-12)


def test_a_stepper_without_step_starts_keeps_its_blocked_norm():
    # The cond-based first trip rebuilt the outcome from accepted/failed only, so a user
    # stepper reporting how much the box cut off lost it: Adam pressed against the bound
    # at 1 stopped there with XTOL instead of coming back to the minimum 0.9.
    res = jd.minimize(
        lambda x: jnp.sum((x - 0.9) ** 2),
        jnp.asarray([-1.0]),
        method=_without_step_starts(resolve_method("Adam")),
        bounds=(-1.0, 1.0),
        options={"learning_rate": 0.5},
    )
    assert int(res.status) == jd.Status.CONVERGED, res.message
    np.testing.assert_allclose(res.x, [0.9], atol=1e-4)


def test_a_stepper_without_step_starts_runs_inside_shard_map():
    """A user's stepper without ``step_starts`` inside ``shard_map``, one problem per shard
    and vmapped in the body: ``init`` makes the step count from a constant, which does
    not vary over the mesh axis while ``step``'s count does. A cond between them failed
    JAX's varying-axes check under the vmap; there the driver selects between both."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))
    spec = PartitionSpec("batch")

    def make(opts):
        def advance(ev):
            return optax.tree.add_scale(ev.x, -0.25, ev.g)

        def init(ev, box):
            return jnp.zeros((), jnp.int32), advance(ev)

        def step(count, ev, box):
            return count + 1, advance(ev), jd.StepOutcome(accepted=True)

        return jd.Stepper(init, step)

    method = jd.Method("GD with a step count", make)

    def solve(x0):
        return jd.minimize(lambda x: jnp.sum((x - 0.9) ** 2), x0, method=method)

    starts = jnp.stack([jnp.zeros(3), jnp.full(3, 2.0)])
    alone = [solve(x0) for x0 in starts]
    one = lambda x: solve(x[0]).x[None]
    per_shard = jax.jit(jax.shard_map(one, mesh=mesh, in_specs=spec, out_specs=spec))
    np.testing.assert_allclose(per_shard(starts[1:])[0], alone[1].x, rtol=1e-12)
    vmapped = lambda x: jax.vmap(solve)(x).x
    in_body = jax.jit(jax.shard_map(vmapped, mesh=mesh, in_specs=spec, out_specs=spec))
    batch = in_body(starts)
    np.testing.assert_allclose(batch, [r.x for r in alone], rtol=1e-12)
    np.testing.assert_allclose(batch, 0.9, atol=1e-5)


def test_own_stopping_without_step_starts_is_refused():
    """x0's trip must report a method's own stopping verdict, which ``init`` cannot: a
    stepper asking for ``own_stopping`` without ``step_starts`` gets a clear error, not an
    assertion deep in the driver."""
    inner = resolve_method("GD")

    def make(opts):
        stepper = inner.make(opts)
        step = lambda state, ev, box: stepper.step(state, ev, box)
        return jd.Stepper(stepper.init, step, own_stopping=True)

    method = inner._replace(name="GD with own stopping", make=make)
    with pytest.raises(ValueError, match="own_stopping=True\\) needs step_starts=True"):
        jd.minimize(quad_mixed, QUAD_MIXED.x0(), method=method)


# ---------------------------------------------------------------------------------------
# Compilation: no recompiles for new numbers; fun traced at most twice per solve
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method_id", ["GD-linesearch", "Adam"])
def test_no_recompile_on_second_call_or_new_hyperparameters(method_id, compile_log):
    name, options = METHODS[method_id]
    x0 = QUAD_MIXED.x0()
    lower, upper = QUAD_MIXED.bounds()
    x0_new = jax.tree.map(lambda v: v + 0.25, x0)  # built before the log is cleared
    upper_new = jax.tree.map(lambda v: v + 0.5, upper)
    first = jd.minimize(quad_mixed, x0, method=name, options=options, bounds=(lower, upper))
    compile_log.clear()
    # The same call again.
    jd.minimize(quad_mixed, x0, method=name, options=options, bounds=(lower, upper))
    assert compile_log.names == []
    # New numbers everywhere: x0 values, bounds values, every numeric hyperparameter.
    new_options = {**options, "gtol": 1e-3, "xtol": 1e-12, "maxfun": 500}
    if "learning_rate" in options:
        new_options["learning_rate"] = 0.5 * options["learning_rate"]
    if name == "momentum":
        new_options["momentum"] = 0.3
    if name == "Adam":
        new_options.update(b1=0.8, b2=0.99, eps=1e-7)
    if name == "GD" and "learning_rate" not in options:
        new_options["ftol"] = 1e-6
    second = jd.minimize(
        quad_mixed, x0_new, method=name, options=new_options, bounds=(lower, upper_new)
    )
    assert compile_log.names == []
    assert int(second.nit) != int(first.nit)  # the new numbers were used


def test_compile_log_sees_a_structural_change(compile_log):
    """Positive control for the tests above: maxiter is static, so a new value compiles."""
    name, options = METHODS["GD-fixed"]
    jd.minimize(COSH.fun, COSH.x0(), method=name, options={**options, "maxiter": 17})
    assert compile_log.names


def test_no_recompile_for_new_args_values(compile_log):
    x0 = QUAD_MIXED.x0()
    target = QUAD_MIXED.xstar()
    moved = jax.tree.map(lambda t: t - 1.0, target)
    jd.minimize(quad_mixed_args, x0, args=(target,), method="Newton")
    compile_log.clear()
    res = jd.minimize(quad_mixed_args, x0, args=(moved,), method="Newton")
    assert compile_log.names == []
    chex.assert_trees_all_close(res.x, moved, atol=1e-8)


def _make_counted_fun():
    """A fresh objective (new identity, so nothing is cached) counting its traces."""
    count = [0]

    def fun(x, scale):
        count[0] += 1
        return scale * jnp.sum(jnp.cosh(x["a"] - 0.5)) + jnp.sum((x["b"] - 1.0) ** 2)

    return fun, count


@pytest.mark.parametrize("method_id", ["GD-linesearch", "Adam", "Newton-linesearch"])
def test_fun_traced_at_most_twice_per_solve(method_id, compile_log):
    name, options = METHODS[method_id]
    fun, traces = _make_counted_fun()
    x0 = {"a": jnp.zeros(2), "b": jnp.zeros(())}
    res = jd.minimize(fun, x0, args=(1.0,), method=name, options=options)
    assert bool(res.success), res.message
    assert 1 <= traces[0] <= 2, f"fun traced {traces[0]} times in one solve"
    compile_log.clear()
    before = traces[0]
    new_options = {**options, "gtol": 1e-4}
    if "learning_rate" in options:
        new_options["learning_rate"] = 0.9 * options["learning_rate"]
    jd.minimize(fun, x0, args=(2.0,), method=name, options=new_options)
    assert traces[0] - before <= 1  # at most the abstract input check, never a retrace
    assert compile_log.names == []


_EVALUATIONS = [0]


def _count_evaluation(x):
    _EVALUATIONS[0] += 1
    return np.zeros(np.shape(x)[:-1], np.float64)  # one zero per lane ("expand_dims")


def cosh_counted(x):
    """COSH, plus a host counter of (batched) evaluations whose result is added as 0 * c.

    Under vmap the callback runs once per batched evaluation (vmap_method="expand_dims"),
    so the counter counts trips of the batched loop, not lanes. Its input goes through
    stop_gradient so that autodiff never needs the callback's derivative.
    """
    probe = jnp.ravel(jax.lax.stop_gradient(x["b"].u))
    c = jax.pure_callback(
        _count_evaluation,
        jax.ShapeDtypeStruct((), jnp.float64),
        probe,
        vmap_method="expand_dims",
    )
    return COSH.fun(x) + 0.0 * c


# ---------------------------------------------------------------------------------------
# vmap: each lane gets what it gets alone
# ---------------------------------------------------------------------------------------


def _lane(tree, i):
    return jax.tree.map(lambda v: v[i], tree)


def _stack(trees):
    return jax.tree.map(lambda *vs: jnp.stack(vs), *trees)


def _assert_lanes_equal_single_solves(batched, singles):
    for i, single in enumerate(singles):
        lane = _lane(batched, i)
        chex.assert_trees_all_close(lane.x, single.x, rtol=1e-9, atol=1e-12)
        chex.assert_trees_all_close(lane.fun, single.fun, rtol=1e-9, atol=1e-15)
        for name in ("nit", "nfev", "status", "success"):
            assert int(getattr(lane, name)) == int(getattr(single, name)), (i, name)


# Lanes of different difficulty: one starts at the minimizer, one far away.
COSH_X0_LANES = [
    COSH.x0(),
    jax.tree.map(lambda v: v + 1.0, COSH.x0()),
    COSH.xstar(),
    jax.tree.map(lambda v: 0.5 * v, COSH.x0()),
]


# One of each family: line-search GD, the optax-rule path (momentum, Adam, fixed GD share
# it), Newton with and without a line search. The objective is cosh_counted (above), so
# these compiled solves are shared with the evaluation-count test.
VMAP_METHODS = ["GD-linesearch", "Adam", "Newton-linesearch", "Newton-fixed"]


@pytest.mark.parametrize("method_id", VMAP_METHODS)
def test_vmap_over_x0_equals_single_solves(method_id):
    name, options = METHODS[method_id]
    singles = [jd.minimize(cosh_counted, x0, method=name, options=options) for x0 in COSH_X0_LANES]
    assert len({int(s.nfev) for s in singles}) > 1  # lanes really differ
    batched = jax.vmap(lambda x0: jd.minimize(cosh_counted, x0, method=name, options=options))(
        _stack(COSH_X0_LANES)
    )
    _assert_lanes_equal_single_solves(batched, singles)
    assert list(batched.message) == [s.message for s in singles]


TARGET_LANES = [
    QUAD_MIXED.xstar(),
    jax.tree.map(lambda t: -2.0 * t, QUAD_MIXED.xstar()),
    QUAD_MIXED.x0(),  # x0 is already the answer for this lane
]


@pytest.mark.parametrize("method_id", ["GD-linesearch", "Newton-linesearch"])
def test_vmap_over_args_equals_single_solves(method_id):
    name, options = METHODS[method_id]
    x0 = QUAD_MIXED.x0()

    def solve(target):
        return jd.minimize(quad_mixed_args, x0, args=(target,), method=name, options=options)

    singles = [solve(t) for t in TARGET_LANES]
    batched = jax.vmap(solve)(_stack(TARGET_LANES))
    _assert_lanes_equal_single_solves(batched, singles)
    for i, target in enumerate(TARGET_LANES):
        chex.assert_trees_all_close(_lane(batched.x, i), target, atol=1e-4)


def test_vmap_over_x0_and_args_together():
    x0s = _stack([QUAD_MIXED.x0(), jax.tree.map(lambda v: v - 1.0, QUAD_MIXED.x0())])
    targets = _stack(TARGET_LANES[:2])

    def solve(x0, target):
        options = METHODS["Adam"][1]
        return jd.minimize(quad_mixed_args, x0, args=(target,), method="Adam", options=options)

    batched = jax.vmap(solve)(x0s, targets)
    singles = [solve(_lane(x0s, i), _lane(targets, i)) for i in range(2)]
    _assert_lanes_equal_single_solves(batched, singles)


def test_vmap_keeps_dtypes():
    def dtype_of(path):
        return jnp.float32 if "deep" in path else jnp.float64

    lanes = [cast_tree(x0, dtype_of) for x0 in COSH_X0_LANES[:2]]
    x0s = _stack(lanes)
    name, options = METHODS["GD-fixed"]
    res = jax.vmap(lambda x0: jd.minimize(COSH.fun, x0, method=name, options=options))(x0s)
    assert jax.tree.structure(res.x) == jax.tree.structure(x0s)
    chex.assert_trees_all_equal_shapes_and_dtypes(res.x, x0s)
    chex.assert_trees_all_equal_shapes_and_dtypes(res.jac, x0s)
    assert res.x["a"]["deep"].dtype == jnp.float32 and res.x["b"].u.dtype == jnp.float64
    assert res.status.dtype == jnp.int32 and res.status.shape == (2,)
    assert res.success.dtype == jnp.bool_ and res.success.shape == (2,)
    assert res.nit.shape == (2,) and res.fun.shape == (2,)
    assert bool(jnp.all(res.success))


# ---------------------------------------------------------------------------------------
# A vmapped batch costs no more batched evaluations than its hardest member alone
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method_id", VMAP_METHODS)
def test_vmapped_batch_costs_its_hardest_member(method_id):
    name, options = METHODS[method_id]
    singles = []
    for x0 in COSH_X0_LANES:
        _EVALUATIONS[0] = 0
        res = jd.minimize(cosh_counted, x0, method=name, options=options)
        assert _EVALUATIONS[0] == int(res.nfev), "the counter sees every evaluation"
        singles.append(res)
    nfevs = [int(s.nfev) for s in singles]
    assert len(set(nfevs)) > 1  # the lanes need different numbers of evaluations
    _EVALUATIONS[0] = 0
    batched = jax.vmap(lambda x0: jd.minimize(cosh_counted, x0, method=name, options=options))(
        _stack(COSH_X0_LANES)
    )
    assert _EVALUATIONS[0] == max(nfevs) == int(jnp.max(batched.nfev))
    assert [int(n) for n in batched.nfev] == nfevs  # and each lane reports its own count


# ---------------------------------------------------------------------------------------
# Where fun sits in the compiled program: inside the one loop, never in a cond branch
# ---------------------------------------------------------------------------------------


def _asinh_bowl(x, shift):
    """Convex, minimum at ``shift``; ``asinh`` appears nowhere in the solvers, so its
    occurrences in a jaxpr are exactly the places where this objective is evaluated."""
    z = ravel_pytree(x)[0] - shift
    return jnp.sum(z * jnp.arcsinh(z) - jnp.sqrt(1.0 + z * z))


def _fun_sites(jaxpr) -> list[tuple]:
    """Each ``asinh`` in ``jaxpr`` (sub-jaxprs included) as (enclosing loops, ``while``
    or ``scan``; whether in a cond branch or a loop's predicate rather than a body; which
    outermost loop, by ``id`` of its equation)."""
    sites = []
    for eqn, enclosing in jaxpr_equations(jaxpr):
        if eqn.primitive.name != "asinh":
            continue
        loops = [e for e, _ in enclosing if e.primitive.name in ("while", "scan")]
        in_cond = any(
            e.primitive.name == "cond" or (e.primitive.name == "while" and key == "cond_jaxpr")
            for e, key in enclosing
        )
        sites.append((len(loops), in_cond, id(loops[0]) if loops else None))
    return sites


def _depths(sites) -> list[tuple[int, bool]]:
    return [(loops, in_cond) for loops, in_cond, _ in sites]


def _cubic_physics(x):
    return jax.tree.map(lambda v: v + 0.1 * v**3, x)


STRUCTURE_CASES = [
    pytest.param(name, options, bounds, size, id=f"{key}-n{size}")
    for key, (name, options, bounds) in {
        **{key: (name, options, None) for key, (name, options) in METHODS.items()},
        "L-BFGS": ("L-BFGS", {}, None),
        "L-BFGS-B-box": ("L-BFGS-B", {}, (-1.0, 2.0)),
        "GD-box": ("GD", {}, (-1.0, 2.0)),
        # The numerical inverse's inner solve is over physics only, never fun.
        "PG": ("PG", {"learning_rate": 0.5, "physics": _cubic_physics}, None),
    }.items()
    # L-BFGS(-B): the two-loop stepper (n <= TWO_LOOP_MAX_N) and the compact form.
    for size in ((3, TWO_LOOP_MAX_N + 24) if name.startswith("L-BFGS") else (3,))
]


@pytest.mark.parametrize(("name", "options", "bounds", "size"), STRUCTURE_CASES)
def test_fun_only_in_the_loop_body_and_never_in_a_cond(name, options, bounds, size):
    """SPEC section 3: the whole solve is one flat while_loop evaluating fun, x0 included
    (the first trip), and no fun call sits inside a ``lax.cond`` branch; the same holds
    for ``minimize_batch``."""
    x0 = {"a": jnp.zeros(size - 1), "b": jnp.zeros(())}
    solve = lambda x, s: (
        jd.minimize(_asinh_bowl, x, args=(s,), method=name, bounds=bounds, options=options).x
    )
    batch = lambda x, s: (
        jd.minimize_batch(
            _asinh_bowl, x, args=(s,), method=name, bounds=bounds, options=options, lanes=2
        ).x
    )
    shifts = jnp.linspace(0.0, 1.0, 4)
    for program in (
        jax.make_jaxpr(solve)(x0, 0.5),
        jax.make_jaxpr(batch)(_stack([x0] * 4), shifts),
    ):
        sites = _fun_sites(program.jaxpr)
        assert sites, "the objective must appear in the program"
        assert set(_depths(sites)) == {(1, False)}, sites
        assert len({outer for *_, outer in sites}) == 1, "fun in more than one loop"


def test_fun_sites_sees_conds_predicates_and_nested_or_second_loops():
    """The walker above can fail: fun in a cond branch, in a loop's predicate, in a loop
    inside the loop, or in two loops one after the other."""
    x = jnp.zeros(3)
    fun = lambda v: _asinh_bowl(v, 0.0)
    in_cond = lambda v: jax.lax.cond(v[0] < 1, lambda: fun(v), lambda: 0.0)
    in_predicate = lambda v: jax.lax.while_loop(lambda c: c < fun(v), lambda c: c + 1.0, 0.0)
    nested = lambda v: jax.lax.fori_loop(0, 2, lambda i, c: c + in_predicate(v), 0.0)
    in_body = lambda v, c: jax.lax.fori_loop(0, 2, lambda j, d: d + fun(v), c)
    in_inner_body = lambda v: jax.lax.fori_loop(0, 2, lambda i, c: in_body(v, c), 0.0)
    in_two_loops = lambda v: in_body(v, in_body(v, 0.0))
    assert _depths(_fun_sites(jax.make_jaxpr(in_cond)(x).jaxpr)) == [(0, True)]
    assert _depths(_fun_sites(jax.make_jaxpr(in_predicate)(x).jaxpr)) == [(1, True)]
    assert _depths(_fun_sites(jax.make_jaxpr(nested)(x).jaxpr)) == [(2, True)]
    assert _depths(_fun_sites(jax.make_jaxpr(in_inner_body)(x).jaxpr)) == [(2, False)]
    two = _fun_sites(jax.make_jaxpr(in_two_loops)(x).jaxpr)
    assert _depths(two) == [(1, False), (1, False)]
    assert len({outer for *_, outer in two}) == 2


# ---------------------------------------------------------------------------------------
# Layering: a method is a leaf module; it never reaches back to the front door or registry
# ---------------------------------------------------------------------------------------

_FRONT = {
    "jaxopt_dict._minimize",
    "jaxopt_dict._batch",
    "jaxopt_dict._programs",
    "jaxopt_dict._least_squares",
    "jaxopt_dict.methods",
    "jaxopt_dict.lsq_methods",
}


def test_methods_do_not_import_the_front_door_or_the_registry():
    """An algorithm lives below the front door: the modules under methods/ and
    lsq_methods/ (the L-BFGS folder's too) import neither ``minimize``'s modules nor the
    registries that import them (PG's numerical inverse names the L-BFGS record itself; it
    used to import ``_minimize`` back, a cycle resolved by an import inside a function)."""
    import ast
    import pathlib

    package = pathlib.Path(jd.__file__).parent
    offenders = []
    for folder in ("methods", "lsq_methods"):
        for path in sorted((package / folder).rglob("*.py")):
            if path.parent.name == folder and path.name == "__init__.py":
                continue  # the registry itself
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                where = path.relative_to(package)
                offenders += [f"{where}: {n}" for n in names if n in _FRONT]
    assert not offenders, offenders
