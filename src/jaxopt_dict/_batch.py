"""minimize_batch: continuous batching over a queue of problems (the queue itself is
``_programs.solve_queue``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_dict._method import Method
from jaxopt_dict._minimize import prepare_solve
from jaxopt_dict._problem import check_args
from jaxopt_dict._programs import default_lanes, solve_queue, take_row
from jaxopt_dict._result import OptimizeResult

PyTree = Any


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
    lanes, args_axes, one_problem = batch_layout(x0, args, lanes, args_axes, long_tail=False)
    static, _, solve_args, dynamic, box = prepare_solve(
        fun, take_row(x0, 0), one_problem, method, jac, bounds, tol, options, None, has_aux
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
    return solve_queue((static, lanes, args_axes), x0, args, dynamic, box)


def batch_layout(
    x0: PyTree,
    args: tuple,
    lanes: int | None,
    args_axes: Any,
    long_tail: bool,
    caller: str = "minimize_batch",
) -> tuple[int, tuple[int | None, ...], tuple]:
    """Check a batch's inputs: ``(lanes, args_axes, one problem's args)``, lanes at most B
    (``_programs.default_lanes`` where none are given); ``caller`` names the entry point in
    errors.

    Raises:
      TypeError: ``lanes`` not an int, ``args`` not a tuple.
      ValueError: ``lanes < 1``, bad ``args_axes``, no leaves, leading axes that differ.
    """
    if lanes is not None:
        if isinstance(lanes, (bool, np.bool_)) or not isinstance(lanes, (int, np.integer)):
            raise TypeError(f"lanes must be a positive int (or None), got {lanes!r}.")
        if lanes < 1:
            raise ValueError(f"lanes must be a positive int (or None), got {lanes!r}.")
    check_args(args)
    args_axes = _normalize_args_axes(args_axes, len(args))
    if not jax.tree.leaves(x0):
        raise ValueError("x0 has no array leaves: there is nothing to optimize.")
    n_problems = _batch_size(x0, args, args_axes, caller)
    if lanes is None:
        lanes = default_lanes(long_tail, n_problems)
    lanes = min(n_problems, int(lanes))
    one_problem = tuple(take_row(a, 0) if axis == 0 else a for a, axis in zip(args, args_axes))
    return lanes, args_axes, one_problem


def with_hidden_args(
    solve_args: tuple, one_problem: tuple, args: tuple, args_axes: tuple[int | None, ...]
) -> tuple[tuple, tuple[int | None, ...]]:
    """The batch's args and axes after the hidden leading args the front door added to one
    problem's (the arrays fun/jac hold, least squares' f_scale): shared by all problems."""
    hidden = len(solve_args) - len(one_problem)
    return solve_args[:hidden] + args, (None,) * hidden + args_axes


def _batch_size(x0: PyTree, args: tuple, args_axes: tuple[int | None, ...], caller: str) -> int:
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
            f"{caller} needs a leading batch axis of one length B on every leaf of x0 and "
            f"of the batched args; got {found} (an arg shared by all problems takes "
            "args_axes=None)."
        )
    (n_problems,) = by_size
    assert n_problems is not None
    if n_problems == 0:
        raise ValueError(
            f"{caller} got an empty batch (B = 0: the leading axis of x0's leaves has "
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
