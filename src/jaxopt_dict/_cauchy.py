"""The generalized Cauchy point of L-BFGS-B, vectorized over all breakpoints.

The GCP is the first local minimizer of the quadratic model
``m(s) = g^T s + s^T B s / 2`` along the projected steepest-descent path
``x(t) = P(x - t g)`` (Byrd, Lu, Nocedal & Zhu 1995, sec. 4). scipy's ``cauchy`` walks the
breakpoints one by one with a heap. Here they are sorted once, and the slope ``f'`` and
curvature ``f''`` of the piecewise quadratic at the start of every segment come from
cumulative sums, so the whole path is examined in a fixed number of array operations:

In segment j the variables with the j smallest breakpoints sit on their bounds and the
rest move along ``d_j`` (``-g`` on the moving ones). With ``z_j = x(t_{j-1}) - x``,
``p_j = W^T d_j`` and ``c_j = W^T z_j``:

    f'_j  = -|d_j|^2 + theta t_{j-1} |d_j|^2 - p_j^T M c_j
    f''_j = theta |d_j|^2 - p_j^T M p_j

``|d_j|^2`` and ``p_j`` are suffix sums over the sorted variables; ``c_j`` is a prefix sum
of ``t_i d_i w_i`` plus ``t_{j-1} p_j``. The GCP lies in the first segment whose
minimizer ``t_{j-1} - f'_j / f''_j`` comes before the segment's end.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_dict._compact import Memory, w_rows


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


def _safe(den: jax.Array) -> jax.Array:
    return jnp.where(den == 0, jnp.ones_like(den), den)


def cauchy_point(
    x: jax.Array, g: jax.Array, lower: jax.Array, upper: jax.Array, mem: Memory, mid: jax.Array
) -> CauchyPoint:
    """The generalized Cauchy point from x along ``P(x - t g)`` for ``B`` given by
    ``mem`` and its middle matrix ``mid`` (see ``_compact.middle_matrix``).

    Args:
      x, g: the iterate (in the box) and the gradient there, flat.
      lower, upper: the bounds, flat, ``-inf``/``inf`` where absent.
      mem, mid: the limited-memory matrix.

    Returns:
      A ``CauchyPoint``.
    """
    dtype = x.dtype
    n = x.shape[0]
    theta = mem.theta
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
    # No moving variable runs to infinity: the path ends once every breakpoint is passed.
    bnded = ~jnp.any(moving & ~to_l & ~to_u & (g != 0))
    n_break = jnp.sum(jnp.isfinite(t))

    order = jnp.argsort(t)
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    ts, ds = t[order], d[order]
    ws = w_rows(mem, order)  # (n, 2m)
    finite_t = jnp.isfinite(ts)
    zero_row = jnp.zeros((1,), dtype)
    # One cumulative sum (the slowest op here on CPU) for all three: the suffix sums
    # |d_j|^2 and p_j run over the flipped order, the prefix sum of t_i d_i w_i forward.
    k2 = ws.shape[1]
    ahead = jnp.concatenate([(ds * ds)[:, None], ds[:, None] * ws], axis=1)[::-1]
    behind = jnp.where(finite_t, ts * ds, 0.0)[:, None] * ws
    sums = jnp.cumsum(jnp.concatenate([ahead, behind], axis=1), axis=0)
    zero = jnp.zeros((1, 2 * k2 + 1), dtype)
    suffix = jnp.concatenate([sums[::-1, : k2 + 1], zero[:, : k2 + 1]])  # positions >= j
    prefix = jnp.concatenate([zero[:, :k2], sums[:, k2 + 1 :]])  # positions < j
    dd, p = suffix[:, 0], suffix[:, 1:]  # |d_j|^2 and W^T d_j
    start = jnp.concatenate([zero_row, jnp.where(finite_t, ts, 0.0)])  # t_{j-1}
    end = jnp.concatenate([ts, jnp.full((1,), jnp.inf, dtype)])
    c = prefix + start[:, None] * p
    pm = p @ mid
    f1 = -dd + theta * start * dd - jnp.sum(pm * c, axis=1)
    f2 = theta * dd - jnp.sum(pm * p, axis=1)
    segment = jnp.arange(n + 1)
    # scipy floors the curvature past the first breakpoint at eps times the initial one.
    f2 = jnp.where(segment >= 1, jnp.maximum(jnp.finfo(dtype).eps * f2[0], f2), f2)
    dtm = -f1 / _safe(f2)
    last = segment == n_break
    dtm = jnp.where(last & (n_break > 0) & bnded, 0.0, dtm)
    valid = segment <= n_break
    hit = (valid & (dtm < end - start)) | last
    j = jnp.argmax(hit)
    step = jnp.where(jnp.isfinite(dtm[j]), jnp.maximum(dtm[j], 0.0), 0.0)
    passed = rank < j
    xcp = jnp.where(passed, jnp.where(d > 0, upper, lower), x + (start[j] + step) * d)
    return CauchyPoint(
        xcp=jnp.clip(xcp, lower, upper),
        free=~fixed & ~pinned & ~passed,
        c=c[j] + step * p[j],
    )
