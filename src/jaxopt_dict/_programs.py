"""The compiled programs: one solve, a queue of solves, and the rule that routes a
``jax.vmap`` of the first to the second.

The queue (continuous batching). Under plain ``jax.vmap`` the whole batch runs until its
slowest member finishes (1,000 2-D Rosenbrocks from random starts with L-BFGS: mean 26.6
iterations, max 44), so lanes idle much of the time. Here each of ``lanes`` slots runs
the same driver (``_loop.start``/``advance``) as a single solve; when a lane's problem stops, its result is
written out and the lane takes the next pending problem, all inside one compiled
``while_loop`` with one (vmapped) evaluation per trip. Throughput then follows the mean
iteration count instead of the max, and each problem's result equals its result when
solved alone (same code path; XLA may round a batched program differently in the last ulp).

Each lane keeps its own copy of its problem's ``args``; every trip reads the rows of the
next ``lanes // 2`` pending problems and writes them only into the lanes that take one (a
free lane beyond that waits a trip). A lane that takes a new problem gets its x0 as the
next trial and an evaluation count of 0: the next trip is that problem's first, which
starts the method from x0 as in a single solve (``_loop.advance``), so nothing else of the
lane is reset.

Routing. ``jax.vmap(minimize)`` (and of ``least_squares``) batches one solve, and plain
batching runs every problem until the slowest stops. So the single solve is a
``jax.custom_batching.custom_vmap`` whose rule (``_vmap_rule``) runs the queue instead
where that gives each problem the same result; see there for when it does, and when the
batch is batched plainly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from jaxopt_dict._compile import jit
from jaxopt_dict._implicit import with_implicit_diff
from jaxopt_dict._loop import LoopConfig, advance, finish, run, start, starting_stepper
from jaxopt_dict._method import Box, Method
from jaxopt_dict._problem import Objective
from jaxopt_dict._progress import Bar
from jaxopt_dict._result import RUNNING, OptimizeResult
from jaxopt_dict._tree import (
    in_manual_mesh,
    manual_axes,
    project_start,
    tracing_batched_solve,
    vary_over_manual_axes,
)

PyTree = Any


@functools.partial(jax.jit, static_argnums=0, static_argnames="hessian")
def evaluate_objective(objective: Objective, x: PyTree, args: tuple, hessian: bool):
    # A jit (inlined by XLA) so the loop's ``jax.eval_shape`` of an evaluation and the
    # evaluation in its body share one trace: a user's fun is traced once per compiled
    # solve, not once per site.
    return objective.evaluate(x, args, hessian)


def _run(
    static, x0: PyTree, args: tuple, dynamic: dict, box: Box | None, unrolled_trips: int | None
) -> OptimizeResult:
    method, objective, static_opts, callback = static
    opts = {**dict(static_opts), **dynamic}
    stepper = starting_stepper(method.make(opts))
    evaluate = functools.partial(
        evaluate_objective, objective, args=args, hessian=method.needs_hessian
    )
    config = LoopConfig(
        maxiter=opts["maxiter"],
        disp=opts["disp"],
        trace=opts["trace"],
        callback=callback,
        unrolled_trips=unrolled_trips,
        progress=opts["progress"],
    )
    return run(stepper, evaluate, x0, box, opts, config)


def _solve_impl(static, x0: PyTree, args: tuple, dynamic: dict, box: Box | None):
    """One solve; under ``jax.vmap``, the queue where it gives the same results
    (``_vmap_rule``).

    ``custom_vmap`` refuses a function that closes over a batched value (a ``fun`` that
    closes over the ``vmap``'s own variable, an optax rule built from a vmapped learning
    rate), so the solve is traced once to a jaxpr, and what it closes over is passed in
    explicitly: ``_vmap_rule`` sees whether it is batched.
    """
    single = functools.partial(_run, static, unrolled_trips=None)
    closed, out_shape = jax.make_jaxpr(single, return_shape=True)(x0, args, dynamic, box)
    jaxpr, consts, out_tree = closed.jaxpr, list(closed.consts), jax.tree.structure(out_shape)

    def replay(consts: list, inputs: tuple) -> OptimizeResult:
        out = jax.core.eval_jaxpr(jaxpr, consts, *jax.tree.leaves(inputs))
        return jax.tree.unflatten(out_tree, out)

    if _names_axes(jaxpr, frozenset(manual_axes())):
        # A collective over a named axis (``lax.psum(.., "i")`` in fun) needs the vmap's
        # axis name, which custom_vmap does not give its rule: JAX batches this one.
        return replay(consts, (x0, args, dynamic, box))
    # The queue traces fun and the method again (per lane), where a traced value they
    # close over (a user's jit argument, an outer vmap's variable) would be baked in as a
    # constant: such a solve batches plainly.
    queue_ok = not any(isinstance(c, jax.core.Tracer) for c in consts)
    one = jax.custom_batching.custom_vmap(replay)
    one.def_vmap(functools.partial(_vmap_rule, static, replay, queue_ok))
    return one(consts, (x0, args, dynamic, box))


def _names_axes(jaxpr: Any, mesh_axes: frozenset) -> bool:
    """Whether ``jaxpr`` (its sub-jaxprs too) names an axis other than the manual mesh
    axes of an enclosing ``shard_map`` (which the solve's own carries are cast over): a
    collective (``psum``, ``axis_index``, ``all_gather``, ...) over a ``vmap`` axis."""
    for eqn in jaxpr.eqns:
        for key in ("axes", "axis_name"):
            names = eqn.params.get(key, ())
            names = names if isinstance(names, (tuple, list)) else (names,)
            if any(isinstance(n, str) and n not in mesh_axes for n in names):
                return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns") and _names_axes(inner, mesh_axes):
                    return True
    return False


def _vmap_rule(
    static,
    replay: Callable,
    queue_ok: bool,
    axis_size: int,
    in_batched,
    consts: list,
    inputs: tuple,
) -> tuple[OptimizeResult, Any]:
    """``jax.vmap`` of one solve (``custom_vmap``'s rule): the queue of
    ``solve_queue`` where it runs the same problems to the same results faster, else
    plain batching of the single solve (``replay``).

    The queue is used when all of these hold:
      - more problems than the queue's default lanes (``default_lanes``: 256, or 32-64
        for least squares on CPU): with fewer, every problem is in flight from the first
        trip and the queue is plain batching plus bookkeeping;
      - only ``x0`` and ``args`` batched (the queue shares options and bounds, and a
        batched value that ``fun`` or the method closes over is not one it can hand out);
      - ``queue_ok`` (``_solve_impl``): no traced value closed over;
      - no callback, ``disp``, ``trace`` or ``progress`` (their per-problem reports under
        ``vmap`` are the single solve's);
      - one device, or inside ``shard_map``: under a plain ``jit`` over a mesh, the
        queue's gathers and scatters would not keep the batch's sharding (each device
        solving its own slice), which plain batching does.

    Otherwise, where the solve can be traced again, it is, under ``vmap`` (the methods'
    batched form); else the single solve's jaxpr is batched as it is.

    Leaves of ``x0`` the ``vmap`` does not batch are broadcast (one start for all
    problems); so are unbatched leaves of an arg that has batched ones. An arg with no
    batched leaf is shared by the lanes, as ``minimize_batch``'s ``args_axes=None``.
    """
    consts_batched, (x0_batched, args_batched, dynamic_batched, box_batched) = in_batched
    x0, args, dynamic, box = inputs
    opts = dict(static.options)
    reports = static.callback is not None or any(
        opts.get(name) for name in ("disp", "trace", "progress")
    )
    lanes = default_lanes(static.method.long_tail, axis_size)
    # The solve can be traced again (by the queue per lane, or batched as a whole): it
    # closes over no traced value, and has no per-problem reports to keep.
    retraceable = queue_ok and not any(jax.tree.leaves(consts_batched)) and not reports
    queue = (
        retraceable
        and axis_size > lanes
        and not any(jax.tree.leaves((dynamic_batched, box_batched)))
        and (jax.device_count() == 1 or in_manual_mesh())
    )
    if retraceable and not queue:
        # Traced again, batched, so that a method knows it is (``_tree.is_batched``) and
        # selects where a single solve skips work in a cond (``while_loop`` traces its
        # body per problem, and under vmap a cond runs both branches anyway).
        in_axes = jax.tree.map(lambda batched: 0 if batched else None, in_batched[1])
        single = functools.partial(_run, static, unrolled_trips=None)
        with tracing_batched_solve():
            out = jax.vmap(single, in_axes=tuple(in_axes))(*inputs)
    elif not queue:
        in_axes = jax.tree.map(lambda batched: 0 if batched else None, in_batched)
        out = jax.vmap(replay, in_axes=tuple(in_axes))(consts, inputs)
    else:
        broadcast = lambda leaf, batched: (
            leaf if batched else jnp.broadcast_to(leaf, (axis_size,) + jnp.shape(leaf))
        )
        x0 = jax.tree.map(broadcast, x0, x0_batched)
        args_axes = tuple(0 if any(jax.tree.leaves(b)) else None for b in args_batched)
        args = tuple(
            jax.tree.map(broadcast, arg, batched) if axis == 0 else arg
            for arg, batched, axis in zip(args, args_batched, args_axes)
        )
        out = _solve_queue_impl((static, lanes, args_axes), x0, args, dynamic, box)
    return out, jax.tree.map(lambda _: True, out)


# One compiled program per (method, fun, static options, callback); differentiable in args
# and bounds by implicit differentiation at the solution (``_implicit.py``).
_solve_implicit = jit(
    with_implicit_diff(
        _solve_impl,
        lambda static: static.objective.value_and_grad,
        aux_of=lambda static: static.objective.aux,
        active_of=lambda static: getattr(static.objective, "active_masks", None),
    ),
    static_argnums=0,
)


# ``adjoint="unrolled"``: plain autodiff through a bounded, checkpointed loop
# (``_loop.checkpointed_loop``); the key adds the bound on its trips.
_solve_unrolled = jit(
    lambda key, x0, args, dynamic, box: _run(key[0], x0, args, dynamic, box, key[1]),
    static_argnums=0,
)


def unrolled_trips(static: SolveStatic, dynamic: Mapping[str, Any]) -> int:
    """The static bound on the trips of an unrolled solve: ``maxfun`` (one evaluation per
    trip), and ``maxiter + 1`` for a method with one evaluation per iteration (no line
    search).

    Raises:
      ValueError: a callback, ``disp`` or ``progress`` given (the checkpointed reverse
        pass runs iterations again, which would report them again).
    """
    opts = dict(static.options)
    if static.callback is not None or opts["disp"] or opts["progress"]:
        raise ValueError(
            "options['adjoint']='unrolled' does not take a callback or disp (nor progress): "
            "its reverse pass recomputes iterations (checkpointing), which would report "
            "them again."
        )
    trips = opts["maxfun"]  # static under this adjoint (``prepare_solve``)
    if not static.method.make({**opts, **dynamic}).rejects_nonfinite:  # no line search
        trips = min(trips, opts["maxiter"] + 1)
    return trips


def solve(static, x0: PyTree, args: tuple, dynamic: dict, box: Box | None) -> OptimizeResult:
    """The compiled solve for ``static``'s adjoint (``options["adjoint"]``)."""
    if dict(static.options)["adjoint"] == "unrolled":
        trips = unrolled_trips(static, dynamic)
        return _solve_unrolled((static, trips), x0, args, dynamic, box)
    return _solve_implicit(static, x0, args, dynamic, box)


class SolveStatic(NamedTuple):
    """Everything that keys the compiled program (hashable)."""

    method: Method
    # An ``Objective``, or what offers its interface (``evaluate``, ``value_and_grad``,
    # ``aux``): PG's (``Method.prepare``), least squares' (``_least_squares``).
    objective: Objective | Any
    options: tuple[tuple[str, Any], ...]
    callback: Callable[[OptimizeResult], Any] | None


def take_row(tree: PyTree, index: int | jax.Array) -> PyTree:
    """Entry ``index`` of every leaf's leading axis."""
    return jax.tree.map(lambda leaf: leaf[index], tree)


class _BatchProgress:
    """The host side of ``minimize_batch``'s ``progress``: a bar of the problems finished
    out of B. Under a user's ``jax.vmap`` of ``minimize_batch`` (``broadcast_all``: each
    update gets every batch's count at once) the bar counts all their problems together."""

    def __init__(self):
        self.bar = Bar(unit="problem", desc="minimize_batch")
        self.per_batch = 0

    def open(self, n_problems):
        self.per_batch = int(np.ravel(n_problems)[0])  # B (a constant: never batched)
        self.bar.open(self.per_batch)
        return np.zeros(np.shape(n_problems), np.int32)

    def update(self, finished):
        n, total = int(np.sum(finished)), self.per_batch * int(np.size(finished))
        self.bar.show(n, close=n >= total, total=total)
        return np.zeros(np.shape(finished), np.int32)


def _solve_queue_impl(
    key: tuple[SolveStatic, int, tuple], x0: PyTree, args: tuple, dynamic: dict, box
) -> OptimizeResult:
    # Traced as a batched solve (``_tree.traced_as_batch``), the lanes' initial states
    # (made outside the vmapped step) included: a method may lay its state out by that.
    with tracing_batched_solve():
        return _queue(key, x0, args, dynamic, box)


def _queue(
    key: tuple[SolveStatic, int, tuple], x0: PyTree, args: tuple, dynamic: dict, box
) -> OptimizeResult:
    static, lanes, args_axes = key
    opts = {**dict(static.options), **dynamic}
    progress = _BatchProgress() if opts["progress"] else None
    int_type = jax.ShapeDtypeStruct((), jnp.int32)
    stepper = starting_stepper(static.method.make(opts))
    config = LoopConfig(maxiter=opts["maxiter"])
    hessian = static.method.needs_hessian
    evaluate_lanes = jax.vmap(
        lambda x, a: evaluate_objective(static.objective, x, a, hessian=hessian),
        in_axes=(0, args_axes),
    )
    # Only the batched args live in the lanes; shared ones are read as they are.
    batched = [i for i, axis in enumerate(args_axes) if axis == 0]

    def evaluate(x, lane_args):
        full = list(args)
        for i, leaf in zip(batched, lane_args):
            full[i] = leaf
        return evaluate_lanes(x, tuple(full))

    advance_lanes = jax.vmap(lambda c, ev: advance(stepper, c, ev, box, opts, config))
    finish_lanes = jax.vmap(lambda c: finish(c, config))

    n_problems = jax.tree.leaves(x0)[0].shape[0]
    x0 = jax.vmap(lambda x: project_start(x, box))(x0)
    # The lanes' own copies of args: gathering every lane's data on every trip would
    # copy the whole working set once per evaluation (for 200x10 regressions, about as
    # much memory traffic as ``fun`` itself). Problems are handed out in order, so the
    # ones taken on a trip are a run of consecutive rows: at most ``refill`` of them are
    # fetched per trip and scattered into the lanes that take them.
    refill = _refill_slots(lanes)
    lane_problem = jnp.arange(lanes, dtype=jnp.int32)
    args_batched = tuple(args[i] for i in batched)
    lane_args = take_row(args_batched, lane_problem)
    ev_types = jax.eval_shape(evaluate, take_row(x0, lane_problem), lane_args)
    carry = jax.vmap(lambda x, ev: start(stepper, x, ev, box, config))(
        take_row(x0, lane_problem), ev_types
    )
    results = jax.tree.map(
        lambda leaf: jnp.zeros((n_problems,) + leaf.shape[1:], leaf.dtype), finish_lanes(carry)
    )

    def cond(loop):
        return jnp.any(loop[3])

    def body(loop):
        carry, lane_args, lane_problem, active, next_problem, results = loop
        ev = evaluate(carry.trial, lane_args)
        carry = advance_lanes(carry, ev)
        done = active & (carry.status != RUNNING)
        if progress is not None:
            # The bar moves on trips that finish a problem (the cond skips the host
            # otherwise). The host returns 0, added where it orders the call in the loop.
            update = functools.partial(
                jax.pure_callback, progress.update, int_type, vmap_method="broadcast_all"
            )
            finished = next_problem - jnp.sum(active & ~done, dtype=jnp.int32)
            next_problem += jax.lax.cond(jnp.any(done), update, jnp.zeros_like, finished)

        def write(results):
            rows = jnp.where(done, lane_problem, n_problems)  # out of range: dropped
            return jax.tree.map(
                lambda buf, new: buf.at[rows].set(new, mode="drop"), results, finish_lanes(carry)
            )

        # Most trips finish no problem: the cond skips the writes (no fun inside).
        results = jax.lax.cond(jnp.any(done), write, lambda r: r, results)
        # Free lanes (finished now, or idle) take the next pending problems in lane order,
        # at most ``refill`` per trip; the rest wait a trip.
        free = done | ~active
        rank = jnp.cumsum(free, dtype=jnp.int32) - 1
        pending = n_problems - next_problem
        taken = jnp.minimum(jnp.minimum(jnp.sum(free, dtype=jnp.int32), refill), pending)
        takes_new = free & (rank < taken)
        lane_problem = jnp.where(takes_new, next_problem + rank, lane_problem)
        active = (active & ~done) | takes_new

        def fetch(trial, lane_args):
            slots = jnp.arange(refill, dtype=jnp.int32)
            rows = jnp.minimum(next_problem + slots, n_problems - 1)
            # Slot j goes to the lane of rank j; unused slots go out of range (dropped).
            target = jnp.full((refill,), lanes, jnp.int32)
            target = target.at[jnp.where(takes_new, rank, refill)].set(
                jnp.arange(lanes, dtype=jnp.int32), mode="drop"
            )
            put = lambda lane_leaf, src: lane_leaf.at[target].set(src[rows], mode="drop")
            return jax.tree.map(put, trial, x0), jax.tree.map(put, lane_args, args_batched)

        trial, lane_args = fetch(carry.trial, lane_args)
        next_problem = next_problem + taken
        # The lane's next trip is its new problem's first (see ``_loop.advance``).
        carry = carry._replace(
            trial=trial,
            nfev=jnp.where(takes_new, 0, carry.nfev),
            status=jnp.where(takes_new, RUNNING, carry.status),
        )
        return carry, lane_args, lane_problem, active, next_problem, results

    next_problem = jnp.asarray(lanes, jnp.int32)
    if progress is not None:  # opens the bar; the 0 it returns orders it before the loop
        total = jnp.asarray(n_problems, jnp.int32)
        next_problem += jax.pure_callback(
            progress.open, int_type, total, vmap_method="broadcast_all"
        )
    loop = (carry, lane_args, lane_problem, jnp.ones(lanes, bool), next_problem, results)
    return jax.lax.while_loop(cond, body, vary_over_manual_axes(loop))[5]


# One compiled program per (method, fun, static options, lanes, args axes); differentiable
# in args and bounds by implicit differentiation at each problem's solution, like
# ``minimize``.
solve_queue = jit(
    with_implicit_diff(
        _solve_queue_impl,
        lambda key: key[0].objective.value_and_grad,
        args_axes_of=lambda key: key[2],
        aux_of=lambda key: key[0].objective.aux,
        active_of=lambda key: getattr(key[0].objective, "active_masks", None),
    ),
    static_argnums=0,
)


# The queue's lanes unless told otherwise (at most B): ``default_lanes``.
DEFAULT_LANES = 256


def default_lanes(long_tail: bool, n_problems: int) -> int:
    """The queue's lanes when none are given (then at most B): 256; for a method with a
    long tail (``Method.long_tail``: least squares) on CPU, ``B // 32`` clipped to [32, 64].

    A few curve fits per thousand run to ``max_nfev`` (100 n evaluations, as scipy's)
    where the mean fit takes about 8, and on CPU a trip costs about its lanes' work, so
    the lanes that idle on that tail should be few: about B * mean / max of them keeps
    every lane busy until the tail. Measured on B exponential fits
    (``benchmarks/least_squares.py``'s, fits/s at 32 / 64 lanes, one process, round-robin,
    after the small SVD's kernels were made cheap in 8192280): B = 1,000 trf 45.3k / 31.9k,
    lm 56.0k / 31.8k; B = 10,000 trf 85.9k / 85.9k, lm 84.7k / 76.5k (before it, at 32 /
    64 / 128 lanes, B = 1,000 trf 23.8k / 19.4k / 13.1k; 256 lanes: 9.4k). ``minimize``'s
    batches keep 256 (logistic regressions: 64 lanes ran at 0.75x; their tails are short).
    On an accelerator a wide trip costs about what a narrow one does.
    """
    if long_tail and jax.default_backend() == "cpu":
        return min(64, max(32, n_problems // 32))
    return DEFAULT_LANES


def _refill_slots(lanes: int) -> int:
    """How many problems the lanes may take per trip, together (see ``solve_queue``).

    A trade-off: every trip fetches this many rows, taken or not, and a free lane beyond
    it waits a trip. Measured on 200x10 regressions (B = 1000, 256 lanes): lanes
    that own their args and fetch this way run 1.1x the throughput of gathering every
    lane's args on every trip. Half the lanes ran 3-4% faster than a quarter there (the
    first wave of problems finishes within a few trips of each other, and fewer lanes
    wait), and the same within noise at B = 10,000 and on 2-D Rosenbrock; all of them
    (every lane's row fetched on every trip) was 6% slower at B = 1000, 15% at 10,000.
    """
    return max(1, lanes // 2)
