"""Only the tree helpers that ``optax.tree`` lacks: tree-valued bounds, finiteness, a
fusion barrier for XLA:CPU, a ``lax.cond`` whose scalar outputs cross it stacked,
reductions written out term by term for small leaves, and
mixing dtypes (``promoted``, ``ravel``) under ``jax.numpy_dtype_promotion("strict")``."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import jax
import jax.core
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxopt_dict._method import Box

PyTree = Any
T = TypeVar("T")


def project(x: PyTree, box: Box | None) -> PyTree:
    """Clip ``x`` onto the box, leaf by leaf (``optax.tree.clip`` takes scalars only)."""
    if box is None:
        return x
    return jax.tree.map(
        lambda xi, lo, hi: jnp.clip(xi, lo, hi).astype(xi.dtype), x, box.lower, box.upper
    )


def interval_holds_points(lower: jax.Array, upper: jax.Array) -> jax.Array:
    """Per coordinate, whether ``[lower, upper]`` holds a point (False for NaN too)."""
    return (lower <= upper) & (lower < jnp.inf) & (upper > -jnp.inf)


def empty_box(box: Box) -> jax.Array:
    """Whether some coordinate's interval holds no point: lower > upper, a lower bound of
    +inf or an upper bound of -inf, or NaN. The front door refuses such bounds where they
    are concrete; traced ones reach the solve, which then stops at x0 (``_loop.advance``)."""
    empty = [
        jnp.any(~interval_holds_points(lo, hi))
        for lo, hi in zip(jax.tree.leaves(box.lower), jax.tree.leaves(box.upper))
    ]
    return functools.reduce(jnp.logical_or, empty)


def project_start(x0: PyTree, box: Box | None) -> PyTree:
    """``project(x0, box)``, but a coordinate whose interval holds no point keeps x0's
    value (traced empty bounds: clipping would give a bound, possibly infinite)."""
    if box is None:
        return x0

    def leaf(xi, lo, hi):
        clipped = jnp.clip(xi, lo, hi)
        return jnp.where(interval_holds_points(lo, hi), clipped, xi).astype(xi.dtype)

    return jax.tree.map(leaf, x0, box.lower, box.upper)


def projected_gradient(x: PyTree, g: PyTree, box: Box | None) -> PyTree:
    """``x - P(x - g)`` for x in the box, by comparisons as scipy's ``projgr``: ``g`` where
    no bound is within reach, else the distance to the bound it pushes toward.

    Zero exactly where x is stationary for the box. Not computed as written: where
    ``|g_i|`` is below half an ulp of ``x_i``, ``x - (x - g)`` rounds to 0 and a
    far-from-stationary point would pass ``gtol`` (float32 x near 1e4 hid gradients 50x
    the default gtol).
    """
    if box is None:
        return g

    def leaf(xi, gi, lo, hi):
        toward_upper = jnp.maximum(xi - hi, gi)  # g < 0 moves x up; at most to hi
        toward_lower = jnp.minimum(xi - lo, gi)
        return jnp.where(gi < 0, toward_upper, toward_lower).astype(gi.dtype)

    return jax.tree.map(leaf, x, g, box.lower, box.upper)


SMALL_LEAF = 4
"""Leaves of at most this many entries are reduced term by term (see ``_reduce``)."""


def _reduce(tree: PyTree, term, combine, whole) -> jax.Array:
    """Reduce every entry of every leaf: ``combine`` over ``term(entry)``.

    A small leaf is written out entry by entry, an elementwise expression that fuses into
    whatever reads it; a reduction is a kernel of its own, one more pass over the batch per
    trip when small problems are vmapped (measured on 1000 vmapped 2-D Rosenbrocks with
    the two-loop L-BFGS: 20 fewer kernels, about 12% less time per trip). Larger leaves
    use ``whole(leaf)``. Written out, a leaf costs three jaxpr equations per entry, against
    about two for the whole leaf: above 4 entries the solve compiles slower and runs no
    faster (L-BFGS on 10-D Rosenbrock with the limit at 16: 1,128 equations against 822,
    compile 1.3-1.4x, steady 1.05-1.25x; 1,000 vmapped 8-D ones 1.16-1.27x the time,
    200x10 logistic regressions within noise; side by side, one process).
    """
    leaves = [jnp.asarray(leaf) for leaf in jax.tree.leaves(tree)]
    # term(0) starts every fold here: 0 for sums, |0| for max, isfinite(0) for and.
    parts = [term(jnp.zeros((), leaves[0].dtype))] if leaves else []
    for leaf in leaves:
        if leaf.size <= SMALL_LEAF:
            parts += [term(entry) for entry in leaf.ravel()]
        else:
            parts.append(whole(leaf))
    total = parts[0]
    for part in parts[1:]:
        total = promoted(combine, total, part)
    return total


def promoted(op, a, b) -> jax.Array:
    """``op(a, b)`` with a and b cast to their standard promotion first: the values
    implicit promotion gives, also under ``jax.numpy_dtype_promotion("strict")``, which
    refuses to mix float32 with float64 (a mixed-precision tree, a strongly typed
    float64 option with a float32 x) or int32 with int64 (issue 18). Weak types count
    as implicit promotion counts them: a Python float does not widen a float32 array."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.dtype != b.dtype:
        with jax.numpy_dtype_promotion("standard"):
            dtype = jnp.result_type(a, b)
        a, b = a.astype(dtype), b.astype(dtype)
    return op(a, b)


def ravel(tree: PyTree) -> tuple[jax.Array, Any]:
    """``jax.flatten_util.ravel_pytree``, also under strict promotion: a tree of float32
    and float64 leaves is raveled to float64 as the standard rules do (``ravel_pytree``
    asks the active rules for the common dtype, and strict ones have none; issue 18)."""
    with jax.numpy_dtype_promotion("standard"):
        return ravel_pytree(tree)


def flat_dtype_of(tree: PyTree) -> Any:
    """The dtype ``ravel(tree)`` gives (the leaves' dtypes promoted, weak types as strong:
    ``ravel_pytree``'s rule), without raveling: no eager operation."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(
            *[jnp.dtype(jnp.result_type(leaf)) for leaf in jax.tree.leaves(tree)]
        )


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """``optax.tree.vdot`` for real leaves, small leaves written out (see ``_reduce``)."""
    return _reduce(optax.tree.mul(a, b), lambda entry: entry, jnp.add, jnp.sum)


def inf_norm(tree: PyTree) -> jax.Array:
    """Largest absolute entry over all leaves (NaN if any entry is NaN)."""
    return _reduce(tree, jnp.abs, jnp.maximum, lambda leaf: jnp.max(jnp.abs(leaf)))


def _same_kind(leaves: Sequence[jax.Array]) -> list[list[int]]:
    """Indices of ``leaves`` grouped by (dtype, shape): what one stacked kernel can take."""
    groups: dict = {}
    for i, leaf in enumerate(leaves):
        groups.setdefault((leaf.dtype, leaf.shape), []).append(i)
    return list(groups.values())


def inf_norms(*trees: PyTree) -> tuple[jax.Array, ...]:
    """``inf_norm`` of each tree; large leaves of one shape and dtype go through one
    reduction together (on XLA:CPU each reduction over a large leaf is two kernels, so
    the driver's norms per trip cost two kernels instead of two per norm)."""
    large, owner = [], []
    parts: list[list[jax.Array]] = []
    for i, tree in enumerate(trees):
        leaves = [jnp.asarray(leaf) for leaf in jax.tree.leaves(tree)]
        small = [leaf for leaf in leaves if leaf.size <= SMALL_LEAF]
        parts.append([inf_norm(small)] if small else [])
        for leaf in leaves:
            if leaf.size > SMALL_LEAF:
                large.append(leaf)
                owner.append(i)
    for members in _same_kind(large):
        stacked = jnp.abs(jnp.stack([large[j] for j in members]))
        maxima = jnp.max(stacked.reshape(len(members), -1), axis=1)
        for k, j in enumerate(members):
            parts[owner[j]].append(maxima[k])
    maximum = functools.partial(promoted, jnp.maximum)
    return tuple(functools.reduce(maximum, p) for p in parts)


def dots(*pairs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
    """``a @ b`` for each pair of flat vectors of one length: written out term by term up
    to ``SMALL_LEAF`` entries (``vdot``), above that one reduction for all of them (as in
    ``inf_norms``)."""
    if pairs[0][0].size <= SMALL_LEAF:
        return tuple(vdot(a, b) for a, b in pairs)
    return tuple(jnp.sum(jnp.stack([a * b for a, b in pairs]), axis=1))


def select_first(rules: Sequence[tuple[Any, Any]], default: Any) -> jax.Array:
    """The value of the first rule whose condition holds, else ``default``: ``jnp.select``
    as nested ``where``s. ``jnp.select`` stacks its conditions and takes their argmax,
    which XLA:CPU runs as a kernel per condition, a concatenate and a reduction; nested
    selects fuse with the conditions into one kernel (the driver's trip: 9 fewer). Under
    vmap XLA may copy that kernel into each consumer: ``materialize`` a result many read
    (Moré-Thuente's task this way cost 1.2-1.3x the time of 1,000 vmapped solves)."""
    out = jnp.asarray(default)
    for condition, value in reversed(rules):
        out = jnp.where(condition, value, out)
    return out


def safe_divide(a, b):
    """``a / b`` with a zero denominator replaced by one. Branches that a ``where`` later
    discards (a placeholder state, a degenerate bracket) must not put 0/0 or 1/0 into the
    carry, nor inf into reverse mode's partials (a discarded branch's zero cotangent times
    an infinite partial is NaN: ``adjoint="unrolled"``)."""
    return a / jnp.where(b == 0, jnp.ones_like(b), b)


def safe_sqrt(v):
    """``sqrt(max(v, 0))`` whose derivative is finite (zero) where ``v <= 0``: sqrt's is
    infinite at 0, which reverse mode would turn into NaN (see ``safe_divide``)."""
    positive = v > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, jnp.ones_like(v))), 0.0)


def all_finite(tree: PyTree) -> jax.Array:
    """True when every entry of every leaf is finite."""
    return _reduce(tree, jnp.isfinite, jnp.logical_and, lambda leaf: jnp.all(jnp.isfinite(leaf)))


def materialize(tree: PyTree) -> PyTree:
    """``tree`` unchanged, computed once.

    XLA:CPU copies cheap elementwise producers into each consumer fusion, so a chain of
    per-problem scalars (a line search's state machine) read by many fusions is recomputed
    in every one of them. A reduction is never copied: leaves of one dtype and shape go
    through one exact reduction together (the max of a value's bits and the smallest
    integer is the value, NaN included), one small kernel per group. Integer bits keep
    XLA:CPU from handing the reduction to its library path, which costs 10x more for
    these shapes. ``optimization_barrier`` would not do: XLA:CPU drops it before fusion.
    The bits carry no derivative, so the identity's is attached (``custom_jvp``): the
    iterations stay differentiable (``adjoint="unrolled"``).

    Only where a method traces itself as batched (``is_batched``) or inside ``shard_map``
    (both make its conds selects: ``cond_or_select``): in a single solve the scalars come
    out of real conds, and the group kernels cost more than the recomputation they save
    (L-BFGS-B's trip, 1000-D Rosenbrock 85 -> 80 kernels, a logistic regression in a box
    93 -> 90; same iterates). A single solve's program that ``jax.vmap`` batches as it is
    (``_programs._vmap_rule``'s replay: reports, closures over the vmap's values) has
    none either: it took 0.88-1.09x the time it took with them (100 10-D and 50 300-D
    vmapped solves, with and without a box).
    """
    if not (is_batched(tree) or in_manual_mesh()):
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten(_materialize_leaves(tuple(jnp.asarray(leaf) for leaf in leaves)))


@jax.custom_jvp
def _materialize_leaves(leaves: tuple) -> tuple:
    out = list(leaves)
    for members in _same_kind(leaves):
        dtype = leaves[members[0]].dtype
        stacked = jnp.stack([leaves[i] for i in members])
        if dtype == jnp.bool_:
            bits = stacked.astype(jnp.int8)
        elif jnp.issubdtype(dtype, jnp.floating):
            bits = jax.lax.bitcast_convert_type(stacked, _SAME_WIDTH_INT[dtype.itemsize])
        else:
            bits = stacked
        lowest = jnp.full_like(bits, jnp.iinfo(bits.dtype).min)
        bits = jnp.max(jnp.stack([bits, lowest], axis=-1), axis=-1)
        if dtype == jnp.bool_:
            once = bits != 0
        elif jnp.issubdtype(dtype, jnp.floating):
            once = jax.lax.bitcast_convert_type(bits, dtype)
        else:
            once = bits
        for k, i in enumerate(members):
            out[i] = once[k]
    return tuple(out)


@_materialize_leaves.defjvp
def _materialize_jvp(primals: tuple, tangents: tuple) -> tuple:
    (leaves,), (dleaves,) = primals, tangents
    return _materialize_leaves(leaves), dleaves


_SAME_WIDTH_INT = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def cond_stacked(pred: jax.Array, true_fun, false_fun) -> PyTree:
    """``jax.lax.cond(pred, true_fun, false_fun)`` (both without operands) whose scalar
    outputs cross the branch boundary stacked, one array per dtype.

    XLA gives each output of a conditional a buffer of its own, so a branch that passes a
    scalar through, or returns one value in several outputs (a line search's fresh
    state), spends a copy kernel on each. Stacked, the branch writes one array per
    dtype, and the reads after the cond are slices that fuse into their consumers
    (L-BFGS-B's Wolfe cond: 16 kernels to 4 in the branch most trips take). Only for
    outputs read inside the trip: a slice that is itself a loop-carry output is a kernel
    of its own, which costs back what the stacking saved. (A weak-typed scalar stacked
    with a strong one of its dtype comes out strong; values are the same.)
    """
    layout: list = []

    def stacked(fun):
        def branch():
            leaves, treedef = jax.tree.flatten(fun())
            leaves = [jnp.asarray(leaf) for leaf in leaves]
            scalars = [i for i, leaf in enumerate(leaves) if leaf.ndim == 0]
            groups = _same_kind([leaves[i] for i in scalars])
            layout.append((treedef, len(leaves), scalars, groups))
            arrays = tuple(leaf for leaf in leaves if leaf.ndim)
            stacks = tuple(jnp.stack([leaves[scalars[k]] for k in g]) for g in groups)
            return arrays, stacks

        return branch

    arrays, stacks = jax.lax.cond(pred, stacked(true_fun), stacked(false_fun))
    treedef, count, scalars, groups = layout[0]
    out: list = [None] * count
    for stack, members in zip(stacks, groups):
        for k, member in enumerate(members):
            out[scalars[member]] = stack[k]
    arrays_left = iter(arrays)
    out = [next(arrays_left) if leaf is None else leaf for leaf in out]
    return treedef.unflatten(out)


# Tracers that wrap another value (vmap's, a derivative's), and the attribute holding it.
WRAPPING_TRACERS = {"BatchTracer": "val", "JVPTracer": "primal", "LinearizeTracer": "primal"}
_BATCHED_SOLVE = contextvars.ContextVar("jaxopt_dict_batched_solve", default=False)


@contextlib.contextmanager
def tracing_batched_solve() -> Iterator[None]:
    """Within: a solve is being traced for ``jax.vmap`` (``is_batched`` says so), although
    ``while_loop`` traces its body per problem, with no vmap's tracer in sight."""
    token = _BATCHED_SOLVE.set(True)
    try:
        yield
    finally:
        _BATCHED_SOLVE.reset(token)


def traced_as_batch() -> bool:
    """Within ``tracing_batched_solve`` (a vmapped solve traced again, the queue). Unlike
    ``is_batched`` it looks at no tracer, so it reads the same in ``jax.eval_shape`` of a
    method's ``init`` as in its step: what a choice of the state's layout needs."""
    return _BATCHED_SOLVE.get()


def is_batched(tree: PyTree) -> bool:
    """Whether the code is traced for many problems at once: inside
    ``tracing_batched_solve``, or a leaf of ``tree`` is (or a derivative's tracer wraps) a
    vmap's tracer (the queue's per-lane step). Under ``vmap`` a ``lax.cond`` on a
    per-problem predicate runs both branches and selects, so a method that saves work
    with a cond in a single solve selects outright there. (Tracers named, as JAX offers
    no public test; a renamed one reads as not batched: the cond, correct but slower.)"""
    if traced_as_batch():
        return True
    for leaf in jax.tree.leaves(tree):
        while isinstance(leaf, jax.core.Tracer):
            inner = WRAPPING_TRACERS.get(type(leaf).__name__)
            if inner == "val":
                return True
            leaf = None if inner is None else getattr(leaf, inner, None)
    return False


def cond_or_select(pred: jax.Array, true_fun, false_fun, batched: bool) -> PyTree:
    """``jax.lax.cond(pred, true_fun, false_fun)`` in a single solve; both branches and a
    select where the predicate is per problem (``batched``: ``is_batched``), or inside
    ``shard_map`` (its varying-axes check refuses branches that return constants)."""
    if batched or in_manual_mesh():
        both = vary_over_manual_axes((true_fun(), false_fun()))
        return jax.tree.map(lambda a, b: jnp.where(pred, a, b), *both)
    return jax.lax.cond(pred, true_fun, false_fun)


def manual_axes() -> tuple:
    """The manual mesh axes of the ``shard_map`` being traced (empty outside one)."""
    return tuple(getattr(jax.sharding.get_abstract_mesh(), "manual_axes", None) or ())


def in_manual_mesh() -> bool:
    """Whether the code is being traced inside ``shard_map`` (manual mesh axes)."""
    return bool(manual_axes())


def _varying_axes(leaf: Any) -> frozenset:
    """The mesh axes ``leaf``'s type says it varies over (empty outside ``shard_map``)."""
    t: Any = jax.typeof(leaf)
    manual: Any = getattr(t, "manual_axis_type", None)
    return frozenset(getattr(manual, "varying", None) or getattr(t, "vma", None) or ())


def varies_over_manual_axes(leaf: Any) -> bool:
    """Whether ``leaf``'s type varies over every manual mesh axis (outside ``shard_map``,
    trivially true)."""
    return set(manual_axes()) <= _varying_axes(leaf)


def _cast_varying(leaf: Any, axes: tuple) -> Any:
    """``leaf`` varying over ``axes`` too."""
    missing = tuple(a for a in axes if a not in _varying_axes(leaf))
    if not missing:
        return leaf
    lax: Any = jax.lax  # pcast from jax 0.7; jax 0.6 has pvary
    if hasattr(lax, "pcast"):
        return lax.pcast(leaf, missing, to="varying")
    return lax.pvary(leaf, missing)


def vary_over_manual_axes(tree: T) -> T:
    """``tree`` varying over every manual mesh axis, when traced inside ``shard_map``.

    There a value computed from sharded inputs is "varying" over the mesh axes, and
    ``while_loop`` (like ``cond``) requires the carry's types, varying axes included, to
    be the same on entry and exit; the initial carry's zeros and counters are not varying,
    while what the loop body computes from the problem's data is. Outside ``shard_map``
    this is the identity.
    """
    axes = manual_axes()
    if not axes:
        return tree
    return jax.tree.map(lambda leaf: _cast_varying(leaf, axes), tree)


def varying_like(value: Any, reference: Any) -> Any:
    """``value`` varying over the mesh axes ``reference`` varies over (inside
    ``shard_map``; elsewhere the identity): a tangent must have its primal's type."""
    if not in_manual_mesh():
        return value
    return _cast_varying(value, tuple(sorted(_varying_axes(reference))))
