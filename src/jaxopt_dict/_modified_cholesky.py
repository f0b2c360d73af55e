"""Solve ``(H + E) x = b`` with the Gill–Murray–Wright modified Cholesky factorization.

``P (H + E) P^T = L D L^T`` with P a symmetric pivoting (the largest remaining diagonal
entry in magnitude goes next), L unit lower triangular and E >= 0 diagonal, chosen column
by column so that every pivot ``d_j >= delta`` and every scaled factor entry
``|l_ij| sqrt(d_j) <= beta``. Where H is positive definite with pivots above ``delta``,
E = 0 and this is the plain (pivoted) Cholesky solve: for such H, ``l_ij^2 d_j <= h_ii
<= beta^2``, so the bound never binds. Elsewhere ``H + E`` is positive definite with
factors bounded by H's entries, so Newton's direction stays a descent direction of
sensible length. Without the pivoting, a small diagonal entry taken first forces a large E
there and leaves a tiny pivot later (a step too long for any line search): on 2-D
Rosenbrock from 1,000 random starts, 49 Newton solves failed that way; pivoted, none.

Gill, Murray & Wright, "Practical Optimization" (1981), sec. 4.4.2.2; Nocedal & Wright,
"Numerical Optimization" (2006), sec. 3.4.

How it is computed, by size (all give the same numbers up to rounding):

* ``n <= UNROLLED_MAX_N`` (1 and 2): written out entry by entry, every operation
  elementwise, so under ``vmap`` the solve fuses into the trip's few kernels over the
  batch. Larger n would not profit: XLA:CPU copies cheap producers into every consumer,
  and the entries' dependence chains grow with n (measured: at n = 3 the unrolled solve
  already costs more than the loop below, 348 against 207 us for 1,000 solves; at n = 4
  one call took longer than 5 s).
* ``n <= LOOPED_MAX_N``: one column per trip of a ``lax.scan``, pivots as one-hot masks (no
  gathers), the forward substitution fused into the factorization. This inner loop is
  linear algebra, not a search: n trips for every problem of a batch, no ``fun`` inside,
  so the driver's loop stays the only one that evaluates.
* larger n: LAPACK's Cholesky first; only where it fails (not finite, or a pivot below
  ``delta``) the looped factorization runs, in a ``lax.cond`` branch. LAPACK's batched
  factorizations loop over the batch one small matrix at a time, which is why small n
  avoid them: under ``vmap`` the branch becomes a select and both sides run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg

UNROLLED_MAX_N = 2
LOOPED_MAX_N = 16


def _bounds(hess: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GMW's ``beta^2`` (bound on ``l_ij^2 d_j``) and ``delta`` (least pivot)."""
    n = hess.shape[0]
    eps = jnp.finfo(hess.dtype).eps
    gamma = jnp.max(jnp.abs(jnp.diagonal(hess)))
    if n == 1:
        return jnp.maximum(gamma, eps), eps * jnp.maximum(gamma, 1.0)
    xi = jnp.max(jnp.abs(hess - jnp.diag(jnp.diagonal(hess))))
    beta2 = jnp.maximum(jnp.maximum(gamma, xi / jnp.sqrt(n * n - 1.0)), eps)
    return beta2, eps * jnp.maximum(gamma + xi, 1.0)


def _pivot(c_jj, theta, beta2, delta):
    """GMW's pivot: ``max(|c_jj|, theta^2 / beta^2, delta)``."""
    return jnp.maximum(jnp.maximum(jnp.abs(c_jj), theta * theta / beta2), delta)


def _solve_unrolled(hess: jax.Array, rhs: jax.Array) -> jax.Array:
    """The factorization and both substitutions with every entry a separate scalar."""
    n = rhs.shape[0]
    beta2, delta = _bounds(hess)
    total = lambda terms: functools.reduce(jnp.add, terms)
    schur = [[hess[i, k] for k in range(n)] for i in range(n)]  # H less earlier columns
    residual = [rhs[i] for i in range(n)]  # forward substitution: L z = P rhs
    done = [jnp.zeros((), bool)] * n
    columns = []
    for _ in range(n):
        size = [jnp.where(done[i], -1.0, jnp.abs(schur[i][i])) for i in range(n)]
        largest = functools.reduce(jnp.maximum, size)
        taken = jnp.zeros((), bool)
        one_hot = []
        for i in range(n):  # the first largest remaining diagonal entry is the pivot
            one_hot.append((size[i] == largest) & ~taken)
            taken = taken | one_hot[-1]
        col = [total([jnp.where(one_hot[k], schur[i][k], 0.0) for k in range(n)]) for i in range(n)]
        rest = [~done[i] & ~one_hot[i] for i in range(n)]
        theta = functools.reduce(
            jnp.maximum, [jnp.where(rest[i], jnp.abs(col[i]), 0.0) for i in range(n)]
        )
        d = _pivot(
            total([jnp.where(one_hot[i], col[i], 0.0) for i in range(n)]), theta, beta2, delta
        )
        l_col = [jnp.where(rest[i], col[i] / d, 0.0) for i in range(n)]
        schur = [[schur[i][k] - d * l_col[i] * l_col[k] for k in range(n)] for i in range(n)]
        z = total([jnp.where(one_hot[i], residual[i], 0.0) for i in range(n)])
        residual = [residual[i] - z * l_col[i] for i in range(n)]
        done = [done[i] | one_hot[i] for i in range(n)]
        columns.append((l_col, one_hot, z / d))
    x = [jnp.zeros((), rhs.dtype)] * n
    for l_col, one_hot, w in reversed(columns):  # back substitution: L^T P x = D^{-1} z
        t = w - total([l_col[i] * x[i] for i in range(n)])
        x = [jnp.where(one_hot[i], t, x[i]) for i in range(n)]
    return jnp.stack(x)


def _solve_looped(hess: jax.Array, rhs: jax.Array, bounds=None) -> jax.Array:
    """The factorization one column per ``lax.scan`` trip (right-looking, fused with the
    forward substitution), then the back substitution. Rows and columns stay in place; a
    step's pivot is a one-hot mask. ``bounds``: ``_bounds(hess)`` if already computed."""
    n = rhs.shape[0]
    beta2, delta = _bounds(hess) if bounds is None else bounds
    index = jnp.arange(n)

    def factor(carry, _):
        schur, residual, done = carry
        pivot = index == jnp.argmax(jnp.where(done, -1.0, jnp.abs(jnp.diagonal(schur))))
        col = jnp.sum(jnp.where(pivot, schur, 0.0), axis=1)  # H's column less earlier terms
        rest = ~done & ~pivot
        theta = jnp.max(jnp.where(rest, jnp.abs(col), 0.0))
        d = _pivot(jnp.sum(jnp.where(pivot, col, 0.0)), theta, beta2, delta)
        l_col = jnp.where(rest, col / d, 0.0)
        z = jnp.sum(jnp.where(pivot, residual, 0.0))
        carry = (schur - d * jnp.outer(l_col, l_col), residual - z * l_col, done | pivot)
        return carry, (l_col, pivot, z / d)

    carry = (hess, rhs, jnp.zeros(n, bool))
    _, columns = jax.lax.scan(factor, carry, length=n)

    def back(x, column):
        l_col, pivot, w = column
        return jnp.where(pivot, w - jnp.dot(l_col, x), x), None

    x, _ = jax.lax.scan(back, jnp.zeros_like(rhs), columns, reverse=True)
    return x


def modified_cholesky_solve(hess: jax.Array, rhs: jax.Array) -> jax.Array:
    """``x`` with ``(H + E) x = rhs``: E = 0 where H (symmetrized) is safely positive
    definite, else GMW's diagonal modification (module docstring)."""
    hess = 0.5 * (hess + hess.T)
    n = rhs.shape[0]
    if n <= UNROLLED_MAX_N:
        return _solve_unrolled(hess, rhs)
    if n <= LOOPED_MAX_N:
        return _solve_looped(hess, rhs)
    chol = jnp.linalg.cholesky(hess)
    x = jax.scipy.linalg.cho_solve((chol, True), rhs)
    bounds = _bounds(hess)
    plain = jnp.all(jnp.isfinite(x)) & (jnp.min(jnp.diagonal(chol)) ** 2 >= bounds[1])
    return jax.lax.cond(plain, lambda: x, lambda: _solve_looped(hess, rhs, bounds))
