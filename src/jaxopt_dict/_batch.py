"""Continuous batching: a fixed number of lanes works through a queue of problems.

Under plain ``jax.vmap`` the whole batch runs until its slowest member finishes (2-D
Rosenbrock from random starts: mean 30 iterations, max 149), so most lanes idle most of the
time. Here each of ``lanes`` slots runs the same driver (``_loop.start``/``advance``) as a
single solve; when a lane's problem stops, its result is written out and the lane takes the
next pending problem, all inside one compiled ``while_loop`` with one (vmapped) evaluation
per trip. Throughput then follows the mean iteration count instead of the max, and each
problem's result equals its result when solved alone (same code path; XLA may round a
batched program differently in the last ulp).

A lane that takes a new problem evaluates its x0 on the next trip and hands that evaluation
to the method's ``init`` instead of ``step``: both are computed for every lane and one is
selected, which keeps every trip a single evaluation of ``fun``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_dict._loop import LoopConfig, advance, finish, start
from jaxopt_dict._method import Method
from jaxopt_dict._minimize import SolveStatic, evaluate_objective, prepare_solve
from jaxopt_dict._result import RUNNING, OptimizeResult
from jaxopt_dict._tree import project

PyTree = Any


def _take(tree: PyTree, index: jax.Array) -> PyTree:
    return jax.tree.map(lambda leaf: leaf[index], tree)


def _where_lanes(mask: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """Per lane (leading axis), ``new`` where ``mask`` else ``old``."""
    return jax.tree.map(
        lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (o.ndim - 1)), n, o), new, old
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _solve_queue(
    static: SolveStatic, lanes: int, x0: PyTree, args: tuple, dynamic: dict, box
) -> OptimizeResult:
    opts = {**dict(static.options), **dynamic}
    stepper = static.method.make(opts)
    config = LoopConfig(maxiter=opts["maxiter"])
    hessian = static.method.needs_hessian
    evaluate = jax.vmap(lambda x, a: evaluate_objective(static.objective, x, a, hessian=hessian))
    start_lanes = jax.vmap(lambda ev: start(stepper, ev, box, opts, config))
    advance_lanes = jax.vmap(lambda c, ev: advance(stepper, c, ev, box, opts, config))
    finish_lanes = jax.vmap(lambda c: finish(c, config))

    n_problems = jax.tree.leaves(x0)[0].shape[0]
    x0 = jax.vmap(lambda x: project(x, box))(x0)
    lane_problem = jnp.arange(lanes, dtype=jnp.int32)
    # A zero carry of the right shapes for every lane; ``start`` replaces it on the first
    # trip (every lane begins fresh), so no evaluation is spent on it.
    carry_shape = jax.eval_shape(
        lambda x, a: start_lanes(evaluate(x, a)),
        _take(x0, lane_problem),
        _take(args, lane_problem),
    )
    carry = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), carry_shape)
    results = jax.tree.map(
        lambda leaf: jnp.zeros((n_problems,) + leaf.shape[1:], leaf.dtype), finish_lanes(carry)
    )

    def cond(loop):
        return jnp.any(loop[3])

    def body(loop):
        carry, lane_problem, fresh, active, next_problem, results = loop
        ev = evaluate(carry.trial, _take(args, lane_problem))
        carry = advance_lanes(carry, ev)
        # Lanes that took a new problem last trip hand this evaluation (at their x0) to
        # ``init`` instead. Most trips have none: the conds skip the work (no fun inside).
        carry = jax.lax.cond(
            jnp.any(fresh),
            lambda c: _where_lanes(fresh, start_lanes(ev), c),
            lambda c: c,
            carry,
        )
        done = active & (carry.status != RUNNING)

        def write(results):
            out = finish_lanes(carry)
            return jax.tree.map(
                lambda buf, new: buf.at[lane_problem].set(
                    _where_lanes(done, new, buf[lane_problem])
                ),
                results,
                out,
            )

        results = jax.lax.cond(jnp.any(done), write, lambda r: r, results)
        new_problem = next_problem + jnp.cumsum(done, dtype=jnp.int32) - 1
        takes_new = done & (new_problem < n_problems)
        lane_problem = jnp.where(takes_new, new_problem, lane_problem)
        next_problem = jnp.minimum(next_problem + jnp.sum(done, dtype=jnp.int32), n_problems)
        active = jnp.where(done, takes_new, active)
        # Gather the new problems' x0 only on trips where some lane took one.
        trial = jax.lax.cond(
            jnp.any(takes_new),
            lambda t: _where_lanes(takes_new, _take(x0, lane_problem), t),
            lambda t: t,
            carry.trial,
        )
        return carry._replace(trial=trial), lane_problem, takes_new, active, next_problem, results

    carry = carry._replace(trial=_take(x0, lane_problem))
    loop = (
        carry,
        lane_problem,
        jnp.ones(lanes, bool),
        jnp.ones(lanes, bool),
        jnp.asarray(lanes, jnp.int32),
        results,
    )
    return jax.lax.while_loop(cond, body, loop)[5]


def minimize_batch(
    fun: Callable[..., Any],
    x0: PyTree,
    *,
    args: tuple = (),
    method: str | Method | optax.GradientTransformation = "L-BFGS-B",
    jac: bool | Callable[..., PyTree] | None = None,
    bounds: tuple[Any, Any] | None = None,
    tol: float | None = None,
    options: Mapping[str, Any] | None = None,
    lanes: int | None = None,
) -> OptimizeResult:
    """Solve a batch of problems with continuous batching; like ``jax.vmap(minimize)``.

    Args:
      fun, jac, method, tol, options: as for ``minimize`` (``disp``/``trace`` not taken).
      x0: a pytree whose every leaf has a leading batch axis of the same length B.
      args: a tuple of pytrees whose every leaf has the leading batch axis B.
      bounds: as for ``minimize``, shared by all problems (no batch axis).
      lanes: how many problems are in flight at once (default ``min(B, 256)``).

    Returns:
      An ``OptimizeResult`` whose every field has the leading batch axis B; entry i equals
      ``minimize`` on problem i alone.

    Example:
      >>> import jax, jax.numpy as jnp, jaxopt_dict as jd
      >>> centers = jnp.arange(6.0).reshape(3, 2)
      >>> res = jd.minimize_batch(lambda x, c: jnp.sum((x - c) ** 2), jnp.zeros((3, 2)),
      ...                         args=(centers,), method="Newton", lanes=2)
      >>> jnp.round(res.x, 4).tolist()
      [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    """
    leaves = jax.tree.leaves(x0) + jax.tree.leaves(args)
    if not leaves:
        raise ValueError("x0 has no array leaves: there is nothing to optimize.")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "minimize_batch needs a leading batch axis of one length on every leaf of x0 and "
            f"args; got leading sizes {sorted(map(str, sizes))}."
        )
    (n_problems,) = sizes
    if options and (options.get("disp") or options.get("trace")):
        raise ValueError("minimize_batch does not take disp or trace; use jax.vmap(minimize).")
    lanes = min(n_problems, 256 if lanes is None else int(lanes))
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}.")
    static, _, dynamic, box = prepare_solve(
        fun, _take(x0, 0), _take(args, 0), method, jac, bounds, tol, options, None
    )
    x0 = jax.tree.map(jnp.asarray, x0)
    return _solve_queue(static, lanes, x0, args, dynamic, box)
