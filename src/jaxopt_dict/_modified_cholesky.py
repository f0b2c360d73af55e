"""Solve ``(H + E) x = b`` with a modified Cholesky factorization, for Newton's direction.

Where H is safely positive definite (a Cholesky factorization with every pivot at least
``delta``), E = 0 and this is the plain Cholesky solve. Elsewhere ``H + E`` is positive
definite with a size set by H, so Newton's direction stays a descent direction of sensible
length. No ``fun`` call inside: pure linear algebra, so the driver's loop stays the only one
that evaluates. Two modifications, by size:

Gill–Murray–Wright (n <= GMW_MAX_N): ``P (H + E) P^T = L D L^T`` with P a symmetric
pivoting (the largest remaining diagonal entry in magnitude goes next), L unit lower
triangular and E >= 0 diagonal, chosen column by column so that every pivot ``d_j >=
delta`` and every scaled factor entry ``|l_ij| sqrt(d_j) <= beta``. For H positive definite
with pivots above ``delta``, ``l_ij^2 d_j <= h_ii <= beta^2``, so the bound never binds and
E = 0. Without the pivoting, a small diagonal entry taken first forces a large E there and
leaves a tiny pivot later (a step too long for any line search): on 2-D Rosenbrock from
1,000 random starts, 49 Newton solves failed that way; pivoted, none. Gill, Murray &
Wright, "Practical Optimization" (1981), sec. 4.4.2.2.

Eigenvalue modification (n > GMW_MAX_N; Nocedal & Wright, "Numerical Optimization"
(2006), sec. 3.4): ``H = Q diag(lam) Q^T`` and ``H + E = Q diag(lam') Q^T`` with ``lam'_i =
max(|lam_i|, sqrt(eps) max_k |lam_k|, delta)``. Negative eigenvalues are flipped, not raised
to a small floor as in the least-norm modification (eq. 3.41), so a direction of negative
curvature gets the model's step length ``|g_i| / |lam_i|`` instead of ``|g_i| / delta``. The
relative floor caps ``cond(H + E)`` at ``1 / sqrt(eps)``: eigh's eigenvalues carry absolute
errors of order ``eps ||H||``, so smaller ``|lam_i|`` are mostly rounding. GMW's ``delta``
covers H = 0. Measured, Newton on the Moré–Garbow–Hillstrom zoo padded to n = 130 (every
Hessian that is not positive definite takes this path): 402 evaluations with this floor,
407 with ``delta`` alone, 407 with GMW, 723 and one failure with eq. 3.41; floors of 1e-2
and 1e-1 ``max |lam|`` took 572 and 1,207 (one failure; the zoo padded to n = 20 and this
path forced), slowing the ill-conditioned problems. It costs one ``eigh``, LAPACK's blocked
O(n^3), where the looped GMW sweeps the n x n Schur complement through memory n times: at
n = 3000, 3.5 s against 73 s (issue 18). Single solves, one OpenBLAS thread, eigh against looped GMW: n = 128, 1.19
against 1.02 ms; n = 192, 2.7 against 3.6 ms; n = 384, 13 against 31 ms. Under ``vmap``
GMW fuses over the batch and keeps its lead up to n ~ 128 (n = 32: 0.046 against 0.078 ms
per matrix), hence GMW_MAX_N = 128.

How it is computed, by size (the GMW variants give the same numbers up to rounding):

* ``n <= UNROLLED_MAX_N`` (1 and 2): GMW written out entry by entry, every operation
  elementwise, so under ``vmap`` the solve fuses into the trip's few kernels over the
  batch. Larger n would not profit: XLA:CPU copies cheap producers into every consumer,
  and the entries' dependence chains grow with n (measured: at n = 3 the unrolled solve
  already costs more than the loop below, 348 against 207 us for 1,000 solves; at n = 4
  one call took longer than 5 s).
* ``n <= LOOPED_MAX_N``: GMW one column per trip of a ``lax.scan``, pivots as one-hot masks
  (no gathers), the forward substitution fused into the factorization: n trips for every
  problem of a batch.
* larger n: LAPACK's Cholesky first; only where it fails (not finite, or a pivot below
  ``delta``) the looped GMW (n <= GMW_MAX_N) or the eigenvalue modification runs, in a
  ``lax.cond`` branch, so a positive definite H costs one Cholesky. LAPACK's batched
  factorizations loop over the batch one small matrix at a time, which is why small n
  avoid them: under ``vmap`` the branch becomes a select and both sides run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg

from jaxopt_dict._tree import vary_over_manual_axes

UNROLLED_MAX_N = 2
LOOPED_MAX_N = 16
GMW_MAX_N = 128
SHIFT_BETA = 1e-3
SHIFT_MAX_TRIPS = 64


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

    carry = vary_over_manual_axes((hess, rhs, jnp.zeros(n, bool)))  # (inside shard_map)
    _, columns = jax.lax.scan(factor, carry, length=n)

    def back(x, column):
        l_col, pivot, w = column
        return jnp.where(pivot, w - jnp.dot(l_col, x), x), None

    x, _ = jax.lax.scan(back, vary_over_manual_axes(jnp.zeros_like(rhs)), columns, reverse=True)
    return x


def _solve_shifted(hess: jax.Array, rhs: jax.Array, delta: jax.Array) -> jax.Array:
    """``x`` with ``(H + tau I) x = rhs``, tau the first of ``0`` (if H's diagonal is
    positive) or ``beta - min h_ii``, then doublings (at least ``beta``), at which LAPACK's
    Cholesky succeeds with pivots of at least ``delta``: Nocedal & Wright (2006), Algorithm
    3.3, with ``beta = SHIFT_BETA max |h_ij|`` (at least ``delta``). The first attempt is
    the plain factorization wherever H's diagonal is positive."""
    eye = jnp.eye(rhs.shape[0], dtype=hess.dtype)
    beta = jnp.maximum(SHIFT_BETA * jnp.max(jnp.abs(hess)), delta)
    min_diag = jnp.min(jnp.diagonal(hess))
    tau = jnp.where(min_diag > 0, jnp.zeros_like(beta), beta - min_diag)

    def attempt(tau: jax.Array) -> tuple[jax.Array, jax.Array]:
        chol = jnp.linalg.cholesky(jnp.where(tau > 0, hess + tau * eye, hess))
        return chol, jnp.all(jnp.isfinite(chol)) & (jnp.min(jnp.diagonal(chol)) ** 2 >= delta)

    def failed(state) -> jax.Array:
        _, _, ok, trips = state
        return ~ok & (trips < SHIFT_MAX_TRIPS)

    def retry(state):
        _, tau, _, trips = state
        tau = jnp.maximum(2.0 * tau, beta)
        chol, ok = attempt(tau)
        return chol, tau, ok, trips + 1

    # Each attempt waits for the previous one: batched LAPACK kernels never run side by
    # side (jaxlib 0.10's, run so under vmap, each hold a worker of the intra-op pool while
    # waiting on it: a deadlock on 2 cores).
    chol, ok = attempt(tau)
    chol, _, _, _ = jax.lax.while_loop(failed, retry, (chol, tau, ok, jnp.zeros((), jnp.int32)))
    return jax.scipy.linalg.cho_solve((chol, True), rhs)


def modified_cholesky_solve(hess: jax.Array, rhs: jax.Array) -> jax.Array:
    """``x`` with ``(H + E) x = rhs``: E = 0 where H (symmetrized) is safely positive
    definite, else GMW's diagonal E (n <= GMW_MAX_N) or ``tau I`` (larger n); see the
    module docstring."""
    hess = 0.5 * (hess + hess.T)
    n = rhs.shape[0]
    if n <= UNROLLED_MAX_N:
        return _solve_unrolled(hess, rhs)
    if n <= LOOPED_MAX_N:
        return _solve_looped(hess, rhs)
    bounds = _bounds(hess)
    if n > GMW_MAX_N:
        return _solve_shifted(hess, rhs, bounds[1])
    chol = jnp.linalg.cholesky(hess)
    x = jax.scipy.linalg.cho_solve((chol, True), rhs)
    plain = jnp.all(jnp.isfinite(x)) & (jnp.min(jnp.diagonal(chol)) ** 2 >= bounds[1])
    return jax.lax.cond(plain, lambda: x, lambda: _solve_looped(hess, rhs, bounds))
