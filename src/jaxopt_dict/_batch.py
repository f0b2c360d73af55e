"""Continuous batching: a fixed number of lanes works through a queue of problems.

Under plain ``jax.vmap`` the whole batch runs until its slowest member finishes (1,000
2-D Rosenbrocks from random starts with L-BFGS: mean 26.6 iterations, max 44), so lanes
idle much of the time. Here each of ``lanes`` slots runs the same driver
(``_loop.start``/``advance``) as a single solve; when a lane's problem stops, its result is
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
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_dict._compile import jit
from jaxopt_dict._implicit import with_implicit_diff
from jaxopt_dict._loop import LoopConfig, advance, finish, start
from jaxopt_dict._method import Method
from jaxopt_dict._minimize import SolveStatic, evaluate_objective, prepare_solve
from jaxopt_dict._progress import Bar
from jaxopt_dict._result import RUNNING, OptimizeResult
from jaxopt_dict._tree import project, vary_over_manual_axes

PyTree = Any


def _take(tree: PyTree, index: int | jax.Array) -> PyTree:
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
    static, lanes, args_axes = key
    opts = {**dict(static.options), **dynamic}
    progress = _BatchProgress() if opts["progress"] else None
    int_type = jax.ShapeDtypeStruct((), jnp.int32)
    stepper = static.method.make(opts)
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
    x0 = jax.vmap(lambda x: project(x, box))(x0)
    # The lanes' own copies of args: gathering every lane's data on every trip would
    # copy the whole working set once per evaluation (for 200x10 regressions, about as
    # much memory traffic as ``fun`` itself). Problems are handed out in order, so the
    # ones taken on a trip are a run of consecutive rows: at most ``refill`` of them are
    # fetched per trip and scattered into the lanes that take them.
    refill = _refill_slots(lanes)
    lane_problem = jnp.arange(lanes, dtype=jnp.int32)
    args_batched = tuple(args[i] for i in batched)
    lane_args = _take(args_batched, lane_problem)
    ev_types = jax.eval_shape(evaluate, _take(x0, lane_problem), lane_args)
    carry = jax.vmap(lambda x, ev: start(stepper, x, ev, box, config))(
        _take(x0, lane_problem), ev_types
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
_solve_queue = jit(
    with_implicit_diff(
        _solve_queue_impl,
        lambda key: key[0].objective.value_and_grad,
        args_axes_of=lambda key: key[2],
        aux_of=lambda key: key[0].objective.aux,
        active_of=lambda key: getattr(key[0].objective, "active_masks", None),
    ),
    static_argnums=0,
)


def _refill_slots(lanes: int) -> int:
    """How many problems the lanes may take per trip, together (see ``_solve_queue``).

    A trade-off: every trip fetches this many rows, taken or not, and a free lane beyond
    it waits a trip. Measured on 200x10 regressions (B = 1000, 256 lanes): lanes
    that own their args and fetch this way run 1.1x the throughput of gathering every
    lane's args on every trip. Half the lanes ran 3-4% faster than a quarter there (the
    first wave of problems finishes within a few trips of each other, and fewer lanes
    wait), and the same within noise at B = 10,000 and on 2-D Rosenbrock; all of them
    (every lane's row fetched on every trip) was 6% slower at B = 1000, 15% at 10,000.
    """
    return max(1, lanes // 2)


def minimize_batch(
    fun: Callable[..., Any],
    x0: PyTree,
    args: tuple = (),
    method: str | Method | optax.GradientTransformation | None = "L-BFGS-B",
    *,
    jac: bool | Callable[..., PyTree] | None = None,
    bounds: tuple[Any, Any] | None = None,
    tol: float | None = None,
    options: Mapping[str, Any] | None = None,
    lanes: int | None = None,
    args_axes: int | None | tuple[int | None, ...] = 0,
    has_aux: bool = False,
) -> OptimizeResult:
    """Solve a batch of problems with continuous batching; like ``jax.vmap(minimize)``.

    Args:
      fun, jac, method, tol, options: as for ``minimize`` (``disp``/``trace`` not taken);
        ``options={"progress": True}`` shows a tqdm bar of the problems finished out of
        B, moved from the compiled loop on trips that finish a problem and redrawn at most
        a few times a second (nothing of it is in the program unless asked for).
      x0: a pytree whose every leaf has a leading batch axis of the same length B.
      args: a tuple of pytrees; those batched (see ``args_axes``) have the leading batch
        axis B on every leaf, the others are shared by all problems.
      bounds: as for ``minimize``, shared by all problems (no batch axis).
      lanes: how many problems are in flight at once, a positive int (default
        ``min(B, 256)``).
      args_axes: per arg, 0 (batched along its leading axis) or ``None`` (the same for
        every problem, as ``jax.vmap``'s ``in_axes=None``: one design matrix for many
        targets is passed once, not copied B times); one value applies to all args.

    Returns:
      An ``OptimizeResult`` whose every field has the leading batch axis B; entry i equals
      ``minimize`` on problem i alone. Differentiable in ``args`` and ``bounds`` like
      ``minimize`` (implicit differentiation at each problem's solution; the derivative
      in a shared arg sums over the problems, as through ``jax.vmap``).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxopt_dict as jd
      >>> centers = jnp.arange(6.0).reshape(3, 2)
      >>> res = jd.minimize_batch(lambda x, c: jnp.sum((x - c) ** 2), jnp.zeros((3, 2)),
      ...                         args=(centers,), method="Newton", lanes=2)
      >>> jnp.round(res.x, 4).tolist()
      [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    """
    lanes, args_axes, one_problem = batch_layout(x0, args, lanes, args_axes)
    static, _, solve_args, dynamic, box = prepare_solve(
        fun, _take(x0, 0), one_problem, method, jac, bounds, tol, options, None, has_aux
    )
    args, args_axes = with_hidden_args(solve_args, one_problem, args, args_axes)
    if options and (options.get("disp") or options.get("trace")):  # a dict by now
        raise ValueError("minimize_batch does not take disp or trace; use jax.vmap(minimize).")
    if dict(static.options)["adjoint"] != "implicit":
        raise ValueError(
            "minimize_batch differentiates implicitly only (options['adjoint']='implicit'); "
            "for adjoint='unrolled' use jax.vmap(minimize)."
        )
    x0 = jax.tree.map(jnp.asarray, x0)
    return _solve_queue((static, lanes, args_axes), x0, args, dynamic, box)


def batch_layout(
    x0: PyTree, args: tuple, lanes: int | None, args_axes: Any
) -> tuple[int, tuple[int | None, ...], tuple]:
    """Check a batch's inputs: ``(lanes, args_axes, one problem's args)``, lanes at most B.

    Raises:
      TypeError: ``lanes`` not an int, ``args`` not a tuple.
      ValueError: ``lanes < 1``, bad ``args_axes``, no leaves, leading axes that differ.
    """
    if lanes is not None:
        if isinstance(lanes, (bool, np.bool_)) or not isinstance(lanes, (int, np.integer)):
            raise TypeError(f"lanes must be a positive int (or None), got {lanes!r}.")
        if lanes < 1:
            raise ValueError(f"lanes must be a positive int (or None), got {lanes!r}.")
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple, got {type(args).__name__}.")
    args_axes = _normalize_args_axes(args_axes, len(args))
    if not jax.tree.leaves(x0):
        raise ValueError("x0 has no array leaves: there is nothing to optimize.")
    n_problems = _batch_size(x0, args, args_axes)
    lanes = min(n_problems, 256 if lanes is None else int(lanes))
    one_problem = tuple(_take(a, 0) if axis == 0 else a for a, axis in zip(args, args_axes))
    return lanes, args_axes, one_problem


def with_hidden_args(
    solve_args: tuple, one_problem: tuple, args: tuple, args_axes: tuple[int | None, ...]
) -> tuple[tuple, tuple[int | None, ...]]:
    """The batch's args and axes after the hidden leading args the front door added to one
    problem's (the arrays fun/jac hold, least squares' f_scale): shared by all problems."""
    hidden = len(solve_args) - len(one_problem)
    return solve_args[:hidden] + args, (None,) * hidden + args_axes


def _batch_size(x0: PyTree, args: tuple, args_axes: tuple[int | None, ...]) -> int:
    """B: the leading axis length shared by every leaf of x0 and of the batched args.

    Raises:
      ValueError: a leaf without a leading axis, leaves with different lengths (the message
        names the key paths), or B = 0.
    """
    labelled = {
        f"x0{jax.tree_util.keystr(path)}": leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(x0)
    }
    for i, (arg, axis) in enumerate(zip(args, args_axes)):
        if axis == 0:
            for path, leaf in jax.tree_util.tree_leaves_with_path(arg):
                labelled[f"args[{i}]{jax.tree_util.keystr(path)}"] = leaf
    by_size: dict[int | None, list[str]] = {}
    for name, leaf in labelled.items():
        by_size.setdefault(np.shape(leaf)[0] if np.ndim(leaf) else None, []).append(name)
    if len(by_size) != 1 or None in by_size:
        found = "; ".join(
            f"{'no axis (a scalar)' if size is None else f'B = {size}'}: {', '.join(names)}"
            for size, names in by_size.items()
        )
        raise ValueError(
            "minimize_batch needs a leading batch axis of one length B on every leaf of x0 and "
            f"of the batched args; got {found} (an arg shared by all problems takes "
            "args_axes=None)."
        )
    (n_problems,) = by_size
    assert n_problems is not None
    if n_problems == 0:
        raise ValueError(
            "minimize_batch got an empty batch (B = 0: the leading axis of x0's leaves has "
            "length 0): there is no problem to solve."
        )
    return n_problems


def _normalize_args_axes(args_axes, n_args: int) -> tuple[int | None, ...]:
    """``args_axes`` as one 0 or ``None`` per arg (see ``minimize_batch``)."""
    axes = args_axes if isinstance(args_axes, (tuple, list)) else (args_axes,) * n_args
    if len(axes) != n_args:
        raise ValueError(
            f"args_axes has {len(axes)} entries for {n_args} args; give one per arg, or one "
            "value for all."
        )
    for axis in axes:
        if axis is not None and (isinstance(axis, bool) or axis != 0):
            raise ValueError(
                f"args_axes entries must be 0 (batched along the leading axis) or None "
                f"(shared by all problems), got {axis!r}."
            )
    return tuple(None if axis is None else 0 for axis in axes)
