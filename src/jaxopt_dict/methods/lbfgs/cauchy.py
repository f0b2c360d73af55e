"""The generalized Cauchy point of L-BFGS-B, vectorized over the breakpoints.

The GCP is the first local minimizer of the quadratic model
``m(s) = g^T s + s^T B s / 2`` along the projected steepest-descent path
``x(t) = P(x - t g)`` (Byrd, Lu, Nocedal & Zhu 1995, sec. 4). scipy's ``cauchy`` walks the
breakpoints one by one with a heap. Here the slope ``f'`` and curvature ``f''`` of the
piecewise quadratic at the start of every segment come from prefix sums over the sorted
breakpoints, so a stretch of the path is examined in a fixed number of array operations:

In segment j the variables with the j smallest breakpoints sit on their bounds and the
rest move along ``d_j`` (``-g`` on the moving ones). With ``z_j = x(t_{j-1}) - x``,
``p_j = W^T d_j`` and ``c_j = W^T z_j``:

    f'_j  = -|d_j|^2 + theta t_{j-1} |d_j|^2 - p_j^T M c_j
    f''_j = theta |d_j|^2 - p_j^T M p_j

``|d_j|^2`` and ``p_j`` are the totals over all variables less a prefix sum over the
passed ones (scipy updates them the same way, by subtraction); ``c_j`` is a prefix sum of
``t_i d_i w_i`` plus ``t_{j-1} p_j``. The GCP lies in the first segment whose minimizer
``t_{j-1} - f'_j / f''_j`` comes before the segment's end.

The GCP usually passes few breakpoints, and on CPU a full sort of n float64 keys costs
more than the rest of an iteration (100 us at n = 1000). So for large n only the first
``WINDOW`` breakpoints' segments are examined, picked by a float32 ``top_k`` (XLA:CPU
has a fast kernel for it, unlike for a float64 sort) and ordered exactly in float64; the
full sort runs, in a ``lax.cond``, only when the GCP lies beyond them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_dict.methods.lbfgs.compact import Memory, w_rows, w_transpose

WINDOW = 32  # breakpoints examined before falling back to the full sort (large n)


def has_window(n: int, window: int = WINDOW) -> bool:
    """Whether the Cauchy point of n variables examines a window of breakpoints first
    (else it sorts all of them)."""
    return n > 2 * window


class CauchyPoint(NamedTuple):
    """The GCP and what the subspace minimization needs from it.

    Attributes:
      xcp: the generalized Cauchy point (in the box; exactly on the bounds it reached).
      free: bool mask of the variables free at xcp (scipy's ``iwhere <= 0``).
      c: ``W^T (xcp - x)`` (2m,).
    """

    xcp: jax.Array
    free: jax.Array
    c: jax.Array


class _Path(NamedTuple):
    """The projected gradient path from x: what every stretch of the walk reads."""

    x: jax.Array
    d: jax.Array  # -g on the moving variables, 0 elsewhere
    t: jax.Array  # breakpoints (inf: the variable never reaches a bound)
    lower: jax.Array
    upper: jax.Array
    stays: jax.Array  # fixed or pinned: not free at any point of the path
    bnded: jax.Array  # every moving variable reaches a bound
    n_break: jax.Array  # finite breakpoints
    dd: jax.Array  # |d|^2
    p: jax.Array  # W^T d


def _safe(den: jax.Array) -> jax.Array:
    return jnp.where(den == 0, jnp.ones_like(den), den)


def cauchy_point(
    x: jax.Array,
    g: jax.Array,
    lower: jax.Array,
    upper: jax.Array,
    mem: Memory,
    mid: jax.Array,
    window: int = WINDOW,
) -> CauchyPoint:
    """The generalized Cauchy point from x along ``P(x - t g)`` for ``B`` given by
    ``mem`` and its middle matrix ``mid`` (see ``compact.middle_matrix``).

    Args:
      x, g: the iterate (in the box) and the gradient there, flat.
      lower, upper: the bounds, flat, ``-inf``/``inf`` where absent.
      mem, mid: the limited-memory matrix.
      window: for ``n > 2 * window``, how many breakpoints are examined before the full
        sort (static).

    Returns:
      A ``CauchyPoint``.
    """
    n = x.shape[0]
    has_l, has_u = lower > -jnp.inf, upper < jnp.inf
    fixed = has_l & has_u & (upper - lower <= 0)
    bounded = (has_l | has_u) & ~fixed
    at_l = has_l & (x - lower <= 0)
    at_u = has_u & (upper - x <= 0)
    # On a bound with the gradient pushing out, or bounded with a zero gradient: not moved.
    pinned = bounded & jnp.where(at_l, g >= 0, at_u & (g <= 0))
    idle = bounded & ~at_l & ~at_u & (g == 0)
    moving = ~fixed & ~pinned & ~idle
    d = jnp.where(moving, -g, 0.0)
    to_l = moving & has_l & (g > 0)
    to_u = moving & ~to_l & has_u & (g < 0)
    t = jnp.where(to_l, (x - lower) / _safe(g), jnp.where(to_u, (upper - x) / _safe(-g), jnp.inf))
    path = _Path(
        x=x,
        d=d,
        t=t,
        lower=lower,
        upper=upper,
        stays=fixed | pinned,
        # No moving variable runs to infinity: the path ends once every breakpoint is passed.
        bnded=~jnp.any(moving & ~to_l & ~to_u & (g != 0)),
        n_break=jnp.sum(jnp.isfinite(t)),
        dd=jnp.dot(d, d),
        p=w_transpose(mem, d),
    )

    def everything():
        # All n breakpoints in order (stable: ties by index), then no further one.
        return _walk(path, mem, mid, jnp.argsort(t), n, jnp.asarray(jnp.inf, x.dtype))[1]

    if not has_window(n, window):
        return everything()
    # The ``window`` smallest float32 keys. Rounding is monotone, so a key strictly below
    # the largest one picked belongs to a breakpoint below every one not picked: those
    # come first in the exact (float64, then index) order, and are exactly the smallest.
    # (Only top_k's indices are read: XLA:CPU then keeps its fast TopK kernel; slicing the
    # values output turned it back into a full sort.)
    keys = t.astype(jnp.float32)
    picked = jax.lax.top_k(-keys, window)[1]
    _, picked = jax.lax.sort((t[picked], picked), num_keys=2)
    picked_keys = keys[picked]
    exact = jnp.sum(picked_keys < jnp.max(picked_keys))
    known = jnp.zeros((n,), bool).at[picked].set(jnp.arange(window) < exact)
    t_after = jnp.min(jnp.where(known, jnp.inf, t))
    found, gcp = _walk(path, mem, mid, picked, exact, t_after)
    return jax.lax.cond(found, lambda: gcp, everything)


def _walk(path: _Path, mem: Memory, mid, order, exact, t_after) -> tuple[jax.Array, CauchyPoint]:
    """The segments that start at the breakpoints ``order`` (increasing), of which the
    first ``exact`` are the smallest of all, followed by ``t_after``: whether the GCP lies
    in one of them (segments ``0..exact``), and the point it gives if so."""
    x, d, t = path.x, path.d, path.t
    dtype = x.dtype
    length = order.shape[0]
    ts, ds = t[order], d[order]
    ws = w_rows(mem, order)  # (length, 2m)
    finite_t = jnp.isfinite(ts)
    k2 = ws.shape[1]
    # One cumulative sum (over all n, the slowest op of the fallback on CPU) for the three
    # prefix sums over the passed variables (positions < j): |d_i|^2, d_i w_i, t_i d_i w_i.
    rows = jnp.concatenate(
        [(ds * ds)[:, None], ds[:, None] * ws, jnp.where(finite_t, ts * ds, 0.0)[:, None] * ws],
        axis=1,
    )
    before = jnp.concatenate([jnp.zeros((1, rows.shape[1]), dtype), jnp.cumsum(rows, axis=0)])
    dd = path.dd - before[:, 0]  # |d_j|^2
    p = path.p - before[:, 1 : k2 + 1]  # W^T d_j
    start = jnp.concatenate([jnp.zeros((1,), dtype), jnp.where(finite_t, ts, 0.0)])  # t_{j-1}
    segment = jnp.arange(length + 1)
    end = jnp.where(
        segment == exact, t_after, jnp.concatenate([ts, jnp.full((1,), jnp.inf, dtype)])
    )
    c = before[:, k2 + 1 :] + start[:, None] * p
    pm = p @ mid
    theta = mem.theta
    f1 = -dd + theta * start * dd - jnp.sum(pm * c, axis=1)
    f2 = theta * dd - jnp.sum(pm * p, axis=1)
    # scipy floors the curvature past the first breakpoint at eps times the initial one.
    f2 = jnp.where(segment >= 1, jnp.maximum(jnp.finfo(dtype).eps * f2[0], f2), f2)
    dtm = -f1 / _safe(f2)
    last = segment == path.n_break
    dtm = jnp.where(last & (path.n_break > 0) & path.bnded, 0.0, dtm)
    valid = (segment <= path.n_break) & (segment <= exact)
    hit = valid & ((dtm < end - start) | last)
    j = jnp.argmax(hit)
    step = jnp.where(jnp.isfinite(dtm[j]), jnp.maximum(dtm[j], 0.0), 0.0)
    passed = jnp.zeros(x.shape, bool).at[order].set(jnp.arange(length) < j)
    xcp = jnp.where(passed, jnp.where(d > 0, path.upper, path.lower), x + (start[j] + step) * d)
    gcp = CauchyPoint(
        xcp=jnp.clip(xcp, path.lower, path.upper),
        free=~path.stays & ~passed,
        c=c[j] + step * p[j],
    )
    return jnp.any(hit), gcp
