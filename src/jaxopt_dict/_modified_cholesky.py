"""Solve ``(H + E) x = b`` with a modified Cholesky factorization, for Newton's direction.

Where H is safely positive definite (a Cholesky factorization with every pivot at least
``delta``), E = 0 and this is the plain Cholesky solve. Elsewhere ``H + E`` is positive
definite with a size set by H, so Newton's direction stays a descent direction of sensible
length. Pure linear algebra, no ``fun`` call inside, so the driver's loop stays the only
one that evaluates. Nocedal & Wright, "Numerical Optimization" (2006), sec. 3.4.

n <= LOOPED_MAX_N, Gill–Murray–Wright: ``P (H + E) P^T = L D L^T`` with P a symmetric
pivoting (the largest remaining diagonal entry in magnitude goes next), L unit lower
triangular and E >= 0 diagonal, chosen column by column so that every pivot ``d_j >=
delta`` and every scaled factor entry ``|l_ij| sqrt(d_j) <= beta``. For H positive definite
with pivots above ``delta``, ``l_ij^2 d_j <= h_ii <= beta^2``, so the bound never binds and
E = 0. Without the pivoting, a small diagonal entry taken first forces a large E there and
leaves a tiny pivot later (a step too long for any line search): on 2-D Rosenbrock from
1,000 random starts, 49 Newton solves failed that way; pivoted, none. Gill, Murray &
Wright, "Practical Optimization" (1981), sec. 4.4.2.2.

Larger n, Cholesky with an added multiple of the identity (Nocedal & Wright, Algorithm
3.3): ``E = tau I``, tau the first of 0 (if H's diagonal is positive: the plain
factorization), else ``beta - min h_ii``, then doublings, at least ``beta``, at which
LAPACK's Cholesky succeeds with pivots of at least ``delta``, in a bounded
``lax.while_loop`` of factorizations. ``beta = 1e-3 max |h_ij|`` (at least ``delta``): N&W's
1e-3, made scale-free. Then tau is at most ``2 |lam_min| + beta`` and the shifted matrix's
least eigenvalue at most ``|lam_min| + beta`` (both up to ``2 delta``): a step of sensible
length. It takes at most ``log2(1e3 n) + 2`` factorizations (``|lam_min| <= n max
|h_ij|``): 1 or 2 on the indefinite iterates of ``benchmarks/newton_large.py``, the most
where a positive diagonal hides a large negative eigenvalue (``a a^T / n - 0.5 I``, n =
500: 75 ms, as the looped GMW, against 3 ms for a Cholesky and 23 ms for eigh). Before
(issue 18), a failed Cholesky fell back to the looped GMW below, which sweeps the n x n
Schur complement through memory once per column: 73 s a factorization at n = 3000, where
a Cholesky takes 0.06 to 0.3 s (2 or 1 OpenBLAS threads) and ``eigh``, for an eigenvalue
modification (N&W eq. 3.41), 2.2 to 4.2 s.
Measured with each fallback above n = 16, Newton on the Moré–Garbow–Hillstrom zoo padded to
n = 20 took 365 evaluations, against 407 with GMW and, padded to n = 130, 402 with the
eigenvalue modification ``lam' = max(|lam|, sqrt(eps) max |lam|)``, 723 and one failure
with ``lam' = max(lam, delta)`` (eq. 3.41); on the rotated double well of
``tests/test_modified_cholesky.py`` (n = 40) 7, against 111 with GMW (ending at another
minimizer) and 21 with flipped eigenvalues; on the benchmark's problem (n = 300, 3 seeds)
46, as with flipped eigenvalues, from near the minimizers, and 59 against 138 from near
the saddle. A uniform shift is not scale-aware within H (it also shortens the steps along
small positive curvature), but no problem measured here paid for it. Under ``vmap``, on
indefinite batches with 1 OpenBLAS thread, it took 7.8 against 30 ms (Cholesky, then the
looped GMW) for 1,000 matrices at n = 24 and 16 against 83 ms for 50 at n = 128; single
solves took the same time either way, definite or not, at n = 24 and 64.

How it is computed, by size:

* ``n <= UNROLLED_MAX_N`` (1 and 2): GMW written out entry by entry, every operation
  elementwise, so under ``vmap`` the solve fuses into the trip's few kernels over the
  batch. Larger n would not profit: XLA:CPU copies cheap producers into every consumer,
  and the entries' dependence chains grow with n (measured: at n = 3 the unrolled solve
  already costs more than the loop below, 348 against 207 us for 1,000 solves; at n = 4
  one call took longer than 5 s).
* ``n <= LOOPED_MAX_N``: GMW one column per trip of a ``lax.scan``, pivots as one-hot masks
  (no gathers), the forward substitution fused into the factorization: n trips for every
  problem of a batch. The same numbers as the unrolled solve up to rounding.
* larger n: the shifted Cholesky, one factorization for a positive definite H. Under
  ``vmap`` the loop runs until every problem of the batch has succeeded, one batched
  factorization per trip. LAPACK's batched factorizations loop over the batch one small
  matrix at a time, which is why small n avoid them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg

from jaxopt_dict._tree import safe_divide, vary_over_manual_axes

UNROLLED_MAX_N = 2
LOOPED_MAX_N = 16
SHIFT_BETA = 1e-3  # Nocedal & Wright's beta, relative to max |h_ij|
SHIFT_MAX_TRIPS = 64  # > log2(1e3 n) + 2 for any n: reached only by a non-finite H


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


def _solve_looped(hess: jax.Array, rhs: jax.Array) -> jax.Array:
    """The factorization one column per ``lax.scan`` trip (right-looking, fused with the
    forward substitution), then the back substitution. Rows and columns stay in place; a
    step's pivot is a one-hot mask."""
    n = rhs.shape[0]
    beta2, delta = _bounds(hess)
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
    the plain factorization wherever H's diagonal is positive.

    Differentiable in H and rhs (``adjoint="unrolled"``) although the search for tau is a
    ``while_loop``: the search runs on values only, and tau, a power of two times ``beta``
    or times ``beta - min h_ii``, is then written as that function of H."""
    # beta and min h_ii as functions of H (for tau's derivative, below); the search
    # itself runs on values only (a while_loop has no reverse mode).
    hess_d = hess
    beta_d = jnp.maximum(SHIFT_BETA * jnp.max(jnp.abs(hess)), delta)
    min_diag_d = jnp.min(jnp.diagonal(hess))
    hess, delta, beta, min_diag = jax.lax.stop_gradient((hess, delta, beta_d, min_diag_d))
    eye = jnp.eye(rhs.shape[0], dtype=hess.dtype)
    tau = jnp.where(min_diag > 0, jnp.zeros_like(beta), beta - min_diag)

    def attempt(tau: jax.Array) -> tuple[jax.Array, jax.Array]:
        chol = jnp.linalg.cholesky(hess + tau * eye)  # tau = 0: H itself, exactly
        return chol, jnp.all(jnp.isfinite(chol)) & (jnp.min(jnp.diagonal(chol)) ** 2 >= delta)

    def failed(state) -> jax.Array:  # a non-finite H stops at once (tau not finite)
        _, tau, ok, trips, _ = state
        return ~ok & (trips < SHIFT_MAX_TRIPS) & jnp.isfinite(tau)

    def retry(state):
        _, tau, _, trips, on_beta = state
        on_beta = on_beta | (2.0 * tau < beta)  # from here on, doublings of beta
        tau = jnp.maximum(2.0 * tau, beta)
        chol, ok = attempt(tau)
        return chol, tau, ok, trips + 1, on_beta

    # Each attempt waits for the previous one: batched LAPACK kernels never run side by
    # side (jaxlib 0.10's, run so under vmap, each hold a worker of the intra-op pool while
    # waiting on it: a deadlock on 2 cores).
    chol, ok = attempt(tau)
    carry = (chol, tau, ok, jnp.zeros((), jnp.int32), jnp.asarray(False))
    chol, tau, _, _, on_beta = jax.lax.while_loop(
        failed,
        retry,
        vary_over_manual_axes(carry),  # (shard_map)
    )
    base_d = jnp.where(on_beta, beta_d, beta_d - min_diag_d)
    power = jax.lax.stop_gradient(safe_divide(tau, base_d))
    tau_d = jnp.where(tau > 0, power * base_d, 0.0)
    return _cho_solve_shifted(hess_d, tau_d, rhs, chol)


@jax.custom_jvp
def _cho_solve_shifted(hess: jax.Array, tau: jax.Array, rhs: jax.Array, chol: jax.Array):
    """``(H + tau I)^-1 rhs`` from ``chol``, the Cholesky factor of ``H + tau I``, with
    the solve's derivative, ``dx = (H + tau I)^-1 (drhs - dH x - dtau x)``."""
    return jax.scipy.linalg.cho_solve((chol, True), rhs)


@_cho_solve_shifted.defjvp
def _cho_solve_shifted_jvp(primals, tangents):
    hess, tau, rhs, chol = primals
    dhess, dtau, drhs, _ = tangents
    x = _cho_solve_shifted(hess, tau, rhs, chol)
    return x, jax.scipy.linalg.cho_solve((chol, True), drhs - dhess @ x - dtau * x)


def modified_cholesky_solve(hess: jax.Array, rhs: jax.Array) -> jax.Array:
    """``x`` with ``(H + E) x = rhs``: E = 0 where H (symmetrized) is safely positive
    definite, else GMW's diagonal E (n <= LOOPED_MAX_N) or ``tau I`` (module docstring)."""
    hess = 0.5 * (hess + hess.T)
    n = rhs.shape[0]
    if n <= UNROLLED_MAX_N:
        return _solve_unrolled(hess, rhs)
    if n <= LOOPED_MAX_N:
        return _solve_looped(hess, rhs)
    return _solve_shifted(hess, rhs, _bounds(hess)[1])
