"""Trust-region pieces shared by the least-squares methods, on flat vectors.

The same quantities as scipy's ``scipy/optimize/_lsq/common.py`` (whose rules the methods
reproduce, so that iterations and evaluations compare one to one), written for JAX: no
data-dependent Python control flow, fixed-length inner iterations, ``where`` for every
branch, so a step traces once and vmaps.

References:
  J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory", Lecture
  Notes in Mathematics 630 (1978): the trust-region subproblem by a Newton iteration on
  the secular equation (sec. 5, eq. 5.5), here on one SVD (scipy's variant).
  M. A. Branch, T. F. Coleman, Y. Li, "A subspace, interior, and conjugate gradient
  method for large-scale bound-constrained minimization problems", SIAM J. Sci. Comput.
  21(1), 1999: the scaling vector v (eq. 2.2) and reflective steps of "trf".
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxopt_dict._result import RUNNING, Status
from jaxopt_dict._tree import vary_over_manual_axes


class LsqAux(NamedTuple):
    """What one evaluation hands a least-squares step (``Evaluation.aux``), flat, in x's
    and the residuals' promoted dtype."""

    J: jax.Array  # the Jacobian, m x n, rows scaled for the loss; matrix-free: J B (m x 2)
    f: jax.Array  # the residuals, scaled for the loss
    g: jax.Array  # the cost's gradient J^T f
    B: jax.Array | None = None  # matrix-free: [g, p] (n x 2), p the Gauss-Newton direction


def init_from_step(step: Any) -> Any:
    """``Stepper.init`` of a step that starts the solve itself (``Stepper.step_starts``):
    its first-trip result, from no state (the step builds a placeholder)."""

    def init(ev: Any, box: Any) -> tuple[Any, Any]:
        state, trial, _ = step(None, ev, box, jnp.asarray(True))
        return state, trial

    return init


def _coarsest_eps(x: Any) -> float:
    """The eps of x's least precise leaf."""
    return max(float(jnp.finfo(jnp.result_type(leaf)).eps) for leaf in jax.tree.leaves(x))


def resolvable(tol: jax.Array, x: Any) -> jax.Array:
    """A relative tolerance on x floored at what x's least precise leaf resolves (its
    eps; the SPEC's float32 floor), unless it is 0 (the test turned off)."""
    eps = _coarsest_eps(x)
    return jnp.where(tol > 0, jnp.maximum(tol, eps), 0.0)


def xtol_met(
    step_norm: jax.Array, x: jax.Array, moved: jax.Array, xtol: jax.Array, like: Any
) -> jax.Array:
    """scipy's ``xtol`` test, ``||dx|| < xtol (xtol + ||x||)``, or, where x's dtype cannot
    resolve that (``xtol`` below its eps: float32's default), the step as evaluated
    (``moved``, the trial less x, both rounded) changed no coordinate by more than its
    eps times the coordinate: x stopped changing.

    The floor is per coordinate because x's resolution is: flooring ``xtol`` at eps in the
    norm test (as before) stopped float32 solves whose small coordinates still moved by
    percents, as successes far from the minimum (Brown's badly scaled problem with "trf":
    optimality 4.2e3; with b = (250, 5e-4), a step moving b2 by 3e-5, 6%, is below
    eps ||b||). Where ``xtol >= eps`` the floor adds nothing: it implies
    ``||dx|| <= eps ||x|| <= xtol ||x||``."""
    eps = _coarsest_eps(like)
    scipy_test = step_norm < xtol * (xtol + jnp.linalg.norm(x))
    unresolved = jnp.all(jnp.abs(moved) <= eps * jnp.abs(x))
    return scipy_test | ((xtol > 0) & unresolved)


def safe_div(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a / b`` where ``b != 0``, else 0 (a discarded branch must stay finite)."""
    nonzero = b != 0
    return jnp.where(nonzero, a / jnp.where(nonzero, b, 1), 0)


def scaled_norm(v: jax.Array) -> jax.Array:
    """``||v||`` as MINPACK's ``enorm`` keeps it: scaled by the largest entry first, so that
    no square of a large or small entry overflows or underflows (float32 from |v| ~ 1e19
    or 1e-19 on)."""
    big = jnp.max(jnp.abs(v))
    big = jnp.where((big > 0) & jnp.isfinite(big), big, jnp.ones_like(big))
    return big * jnp.linalg.norm(v / big)


class Factors(NamedTuple):
    """One SVD of the (scaled) Jacobian, ``A = U diag(s) V^T``, and ``uf = U^T f``: all a
    trust-region solve needs, whatever the radius (computed once per iterate)."""

    uf: jax.Array
    s: jax.Array
    V: jax.Array


# Up to this many columns (and at least as many rows), ``factorize`` computes the SVD itself:
# a Householder QR written out column by column, then one-sided Jacobi on the n x n triangle.
# Every operation is elementwise or a short reduction, so a batch of small Jacobians (under
# ``vmap``, in the queue) is one vectorized kernel per step, where LAPACK's gesdd is one
# call per matrix: 3.5 us of the 4.4 us a trf trip costs per fit at B = 256 (30 x 3).
# The sweeps grow as n^2 pairs: ``factorize`` of 30 x n Jacobians under vmap, against
# LAPACK's, took 0.53 / 0.69 / 0.93x the time at n = 3 / 4 / 5 and 1.51x at n = 6 (256 at a
# time; 32: 0.81 / 0.71 / 0.86 / 1.12x). One Jacobian alone (no vmap) it takes 2-3x
# LAPACK's, which a single fit pays as 5-9% of its time (trf, lm on the curve fit).
SMALL_SVD_COLUMNS = 5
_JACOBI_MAX_SWEEPS = 30  # typically 4-6 (the last one finds nothing left to rotate)


def newton_correction(value, by, q, q_norm, divisor) -> jax.Array:
    """MINPACK's ``((value / by) / t) / t`` with ``t = ||(q / q_norm) / divisor||``
    (lmpar, Moré 1978 eq. 5.5): the Newton correction of a secular equation, formed from a
    normalized norm, never from squares (``suf**2 / s**4`` overflowed in float32 from
    |J| ~ 1e9, in float64 from ~1e78)."""
    t = scaled_norm(safe_div(safe_div(q, q_norm), divisor))
    return safe_div(safe_div(safe_div(value, by), t), t)


def factorize(A: jax.Array, f: jax.Array) -> Factors:
    """The SVD of ``A`` (m x n) as ``Factors``: ``uf = U^T f``, ``s`` descending, ``V``.

    For n <= ``SMALL_SVD_COLUMNS`` and m >= n: ``A = Q R`` (Householder), then ``R``'s SVD by
    one-sided Jacobi rotations (Hestenes 1958; Demmel & Veselic 1992, which shows the
    QR-then-Jacobi order is as accurate as LAPACK's, and more for small singular values).
    Otherwise LAPACK's (``jnp.linalg.svd``).
    """
    m, n = A.shape
    if n > SMALL_SVD_COLUMNS or m < n:
        U, s, Vt = jnp.linalg.svd(A, full_matrices=False)
        return Factors(U.T @ f, s, Vt.T)
    return _triangle_factors(A, f)()


def _triangle_factors(A: jax.Array, f: jax.Array):
    """A function ``svd(k=None)`` that gives the ``Factors`` of A, or of ``A 2^-k`` (A's
    columns scaled by powers of two), from one Householder QR of A and the SVD of its
    triangle by Jacobi. Scaling a column scales the reflections' effect on it exactly, so
    the triangle of ``A 2^-k`` is A's with its columns scaled the same (bit for bit,
    unless an entry underflows)."""
    # Scaled by powers of two (exact) so that the squares below neither overflow nor
    # underflow whatever the magnitudes, as LAPACK scales: s scales with A, uf with f.
    a_exp, f_exp = exponent_of_max(A), exponent_of_max(f)
    R, qf = _householder_triangle(times_pow2(A, -a_exp), times_pow2(f, -f_exp))

    def svd(k: jax.Array | None = None) -> Factors:
        if k is None:
            uf, s, V = _jacobi_svd(R, qf)
            return Factors(times_pow2(uf, f_exp), times_pow2(s, a_exp), V)
        # (R 2^(a_exp - k): each column's largest entry near 1, for A's column exponents k)
        uf, s, V = _jacobi_svd(times_pow2(R, a_exp - k), qf)
        return Factors(times_pow2(uf, f_exp), s, V)

    return svd


def equilibrated_factors(A: jax.Array, f: jax.Array):
    """``(k, scaled, unscaled)``: A's column exponents k (``exponent_of_max``), the
    ``Factors`` of ``A 2^-k`` (each column divided by the power of two nearest its largest
    entry), and ``unscaled()``, A's own ``Factors``. Where ``factorize`` computes the SVD
    itself, both come from one QR of A."""
    m, n = A.shape
    k = exponent_of_max(A, axis=0)
    if n > SMALL_SVD_COLUMNS or m < n:
        return k, factorize(times_pow2(A, -k), f), lambda: factorize(A, f)
    svd = _triangle_factors(A, f)
    return k, svd(k), svd


def exponent_of_max(x: jax.Array, axis: int | None = None) -> jax.Array:
    """e with ``max |x| = m 2^e``, m in [0.5, 1) (over ``axis``, or all of x); 0 where x is
    all zero or not finite."""
    big = jnp.max(jnp.abs(x), axis=axis)
    exponent = jnp.frexp(big)[1]
    return jnp.where(jnp.isfinite(big) & (big > 0), exponent, 0)


def _pow2(k: jax.Array, dtype) -> jax.Array:
    """``2^k`` in ``dtype``, exactly, for k in the normal exponent range (built from its
    bits: no rounding, whatever the backend's ``exp2``)."""
    info = jnp.finfo(dtype)
    int_type = {16: jnp.int16, 32: jnp.int32, 64: jnp.int64}[info.bits]  # same width
    biased = (k + info.maxexp - 1).astype(int_type)
    return jax.lax.bitcast_convert_type(biased << info.nmant, dtype)


def times_pow2(x: jax.Array, k: jax.Array) -> jax.Array:
    """``x 2^k``, exact unless the result is subnormal or overflows (as ``jnp.ldexp``), for
    k from twice the smallest normal exponent to twice the largest: two factors, each a
    normal power of two. (jnp.ldexp works on the bits of every entry: 6x the time of this
    under vmap, measured on 32 Jacobians of 30 x 3, and most of a small SVD's.)"""
    half = k // 2
    return x * _pow2(half, x.dtype) * _pow2(k - half, x.dtype)


def _householder_triangle(A: jax.Array, f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``R`` (n x n, upper triangular) of ``A = Q R`` and the first n entries of ``Q^T f``:
    n Householder reflections applied to ``[A | f]`` (Golub & Van Loan, Alg. 5.2.1)."""
    m, n = A.shape
    M = jnp.concatenate([A, f[:, None]], axis=1)
    rows = jnp.arange(m)
    for k in range(n):
        x = jnp.where(rows >= k, M[:, k], 0)
        norm = jnp.linalg.norm(x)
        alpha = jnp.where(M[k, k] >= 0, -norm, norm)  # the sign that avoids cancellation
        v = x.at[k].add(-alpha)
        two_over_vv = safe_div(jnp.ones_like(norm), norm * (norm + jnp.abs(M[k, k])))
        M = M - jnp.outer(v, two_over_vv * (v @ M))
    return jnp.triu(M[:n, :n]), M[:n, n]


def _jacobi_svd(R: jax.Array, qf: jax.Array) -> Factors:
    """``R = W V^T`` with W's columns orthogonal (one-sided Jacobi: rotate column pairs
    until every pair is orthogonal to n eps), so ``s`` = W's column norms, ``U = W / s`` and
    ``uf = U^T qf``; sorted by ``s`` descending, as LAPACK's. W and V are carried as lists
    of columns: a rotation is then elementwise arithmetic, with no scatter."""
    n = R.shape[0]
    tol = n * jnp.finfo(R.dtype).eps
    pairs = [(p, q) for p in range(n) for q in range(p + 1, n)]

    def sweep(carry):
        W, V, _, count = carry
        W, V = list(W), list(V)
        rotated = jnp.asarray(False)
        for p, q in pairs:
            a, b, g = jnp.sum(W[p] * W[p]), jnp.sum(W[q] * W[q]), jnp.sum(W[p] * W[q])
            rotate = jnp.abs(g) > tol * jnp.sqrt(a) * jnp.sqrt(b)
            # tan of the angle that makes the pair orthogonal, the smaller root (Golub &
            # Van Loan, Alg. 8.5.1), written to stay finite where zeta is huge
            zeta = safe_div(b - a, 2 * g)
            t = jnp.where(zeta >= 0, 1.0, -1.0) / (jnp.abs(zeta) + jnp.hypot(1.0, zeta))
            c = jnp.where(rotate, 1 / jnp.sqrt(1 + t * t), 1.0)
            s = jnp.where(rotate, c * t, 0.0)
            W[p], W[q] = c * W[p] - s * W[q], s * W[p] + c * W[q]
            V[p], V[q] = c * V[p] - s * V[q], s * V[p] + c * V[q]
            rotated = rotated | rotate
        return tuple(W), tuple(V), rotated, count + 1

    def more(carry):
        return carry[2] & (carry[3] < _JACOBI_MAX_SWEEPS)

    eye = jnp.eye(n, dtype=R.dtype)
    columns = (tuple(R[:, j] for j in range(n)), tuple(eye[:, j] for j in range(n)))
    carry = (*columns, jnp.asarray(True), jnp.asarray(0))
    W, V, _, _ = jax.lax.while_loop(more, sweep, vary_over_manual_axes(carry))
    s = [jnp.linalg.norm(w) for w in W]
    columns = [(s_j, safe_div(w @ qf, s_j), v) for s_j, w, v in zip(s, W, V)]
    # Descending by s, stably (ties keep their order), by odd-even transposition (n rounds
    # of compare-exchange, Knuth TAOCP 5.3.4): selects, where a batched argsort and
    # gathers cost 0.2 us per Jacobian under vmap.
    for round_ in range(n):
        for i in range(round_ % 2, n - 1, 2):
            first, second = columns[i], columns[i + 1]
            swap = first[0] < second[0]
            columns[i] = optax.tree.where(swap, second, first)
            columns[i + 1] = optax.tree.where(swap, first, second)
    s, uf, V = (jnp.stack(parts, axis=-1) for parts in zip(*columns))
    return Factors(uf, s, V)


def subspace(JB: jax.Array, B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An orthonormal basis S of the span of B's two columns (the gradient and the
    Gauss-Newton direction, matrix-free "trf") and ``J S`` from ``J B``, without J:
    ``B = S R`` (QR), ``J S = J B R^-1``. A second column (nearly) parallel to the first
    is dropped (zero), as is the first where it is 0."""
    S, R = jnp.linalg.qr(B)
    eps = jnp.finfo(B.dtype).eps
    js0 = safe_div(JB[:, 0], R[0, 0])
    if B.shape[0] == 1:  # one variable: the subspace is the line itself
        return S, js0[:, None]
    independent = jnp.abs(R[1, 1]) > jnp.sqrt(eps) * jnp.linalg.norm(B[:, 1])
    js1 = jnp.where(independent, safe_div(JB[:, 1] - R[0, 1] * js0, R[1, 1]), 0)
    S = S.at[:, 1].set(jnp.where(independent, S[:, 1], 0))
    S = S.at[:, 0].set(jnp.where(R[0, 0] != 0, S[:, 0], 0))
    return S, jnp.stack([js0, js1], axis=1)


def full_rank(factors: Factors, m: int, n: int) -> jax.Array:
    """scipy's rank test for the Gauss-Newton step: m >= n and the smallest singular value
    above ``eps * m * s_max``."""
    s = factors.s
    if m < n:
        return jnp.asarray(False)
    return s[-1] > jnp.finfo(s.dtype).eps * m * s[0]


def solve_trust_region(
    factors: Factors, Delta: jax.Array, alpha: jax.Array, m: int, n: int, rtol: float = 0.01
) -> tuple[jax.Array, jax.Array]:
    """``argmin ||A p + f||`` subject to ``||p|| <= Delta``, and its Levenberg-Marquardt
    parameter alpha (``(A^T A + alpha I) p = -A^T f``).

    The Gauss-Newton step if it is inside the region (alpha = 0); otherwise at most 10
    safeguarded Newton steps on ``phi(alpha) = ||p(alpha)|| - Delta`` (Moré 1978, eq. 5.5)
    started from ``alpha`` (the previous solve's), until ``|phi| < rtol * Delta``.
    """
    uf, s, V = factors
    suf = s * uf
    is_full_rank = full_rank(factors, m, n)
    p_newton = -V @ safe_div(uf, s)
    newton_fits = is_full_rank & (jnp.linalg.norm(p_newton) <= Delta)

    def phi_and_newton_step(a):
        """``phi(a)`` and ``phi(a) / phi'(a)``, where ``phi' = -sum(suf^2 / denom^3) /
        ||p||``. With ``q = suf / denom`` (p in V's basis) that sum is ``||q / sqrt(denom)||^2``,
        and the ratio is formed from norms, never their squares: ``suf**2 / denom**3``
        overflowed in float32 from |J| ~ 1e9 (scipy's formula; float64 from ~1e100), and
        the solve then took no step at all."""
        denom = s**2 + a
        q = safe_div(suf, denom)
        p_norm = scaled_norm(q)
        phi = p_norm - Delta
        return phi, -newton_correction(phi, p_norm, q, p_norm, jnp.sqrt(denom))

    upper = scaled_norm(suf) / Delta  # (||suf||^2 overflowed in float32 from |J| ~ 1e9)
    _, newton0 = phi_and_newton_step(jnp.zeros_like(Delta))
    lower = jnp.where(is_full_rank, -newton0, 0.0)
    # sqrt(lo) sqrt(up): lo * up overflowed in float32 from |J| ~ 1e10 (alpha = inf, no step).
    restart = lambda lo, up: jnp.maximum(0.001 * up, jnp.sqrt(lo) * jnp.sqrt(up))
    alpha = jnp.where(~is_full_rank & (alpha == 0), restart(lower, upper), alpha)

    def body(carry):
        k, a, lo, up, done = carry
        a_in = jnp.where((a < lo) | (a > up), restart(lo, up), a)
        phi, ratio = phi_and_newton_step(a_in)
        up_new = jnp.where(phi < 0, a_in, up)
        lo_new = jnp.maximum(lo, a_in - ratio)
        a_new = a_in - (phi + Delta) * ratio / Delta
        keep = lambda old, new: jnp.where(done, old, new)
        return (
            k + 1,
            keep(a, a_new),
            keep(lo, lo_new),
            keep(up, up_new),
            done | (jnp.abs(phi) < rtol * Delta),
        )

    # A while loop: it stops when the solve is done (usually after 1-3 steps; under vmap,
    # when every problem's is), where a fixed 10 trips cost 10x its kernels on every trip.
    # Not started where the Gauss-Newton step fits (its result is not used).
    carry = (jnp.asarray(0), alpha, lower, upper, newton_fits)
    carry = vary_over_manual_axes(carry)  # (shard_map)
    _, alpha, *_ = jax.lax.while_loop(lambda c: (c[0] < 10) & ~c[4], body, carry)
    p = -V @ safe_div(suf, s**2 + alpha)
    p = p * safe_div(Delta, jnp.linalg.norm(p))
    return (
        jnp.where(newton_fits, p_newton, p),
        jnp.where(newton_fits, jnp.zeros_like(alpha), alpha),
    )


def evaluate_quadratic(J, g, s, diag=None) -> jax.Array:
    """``0.5 s^T (J^T J + diag(diag)) s + g^T s``: the model's change along step s."""
    Js = J @ s
    q = Js @ Js
    if diag is not None:
        q = q + (s * diag) @ s
    return 0.5 * q + g @ s


def update_tr_radius(Delta, actual_reduction, predicted_reduction, step_norm, bound_hit):
    """The new radius and the ratio of actual to predicted reduction (scipy's rule:
    quarter the step's norm below ratio 0.25, double the radius above 0.75 at its edge)."""
    ratio = jnp.where(
        predicted_reduction > 0,
        safe_div(actual_reduction, predicted_reduction),
        jnp.where((predicted_reduction == 0) & (actual_reduction == 0), 1.0, 0.0),
    )
    Delta = jnp.where(
        ratio < 0.25, 0.25 * step_norm, jnp.where((ratio > 0.75) & bound_hit, 2.0 * Delta, Delta)
    )
    return Delta, ratio


def check_termination(dF, F, ratio, ftol, x_converged) -> jax.Array:
    """scipy's ``ftol`` (``dF < ftol * F`` on a trusted model, ratio > 0.25) and ``xtol``
    (``x_converged``, from ``xtol_met``) tests as a status (FTOL when both hold)."""
    ftol_met = (dF < ftol * F) & (ratio > 0.25)
    return jnp.where(ftol_met, Status.FTOL, jnp.where(x_converged, Status.XTOL, RUNNING))


def jac_scale(J: jax.Array, scale_inv_old: jax.Array | None = None) -> jax.Array:
    """``x_scale="jac"``: the inverse scale is the Jacobian's column norms (Moré 1978,
    sec. 6), never decreasing; a zero column at the start gets 1."""
    norms = jnp.sqrt(jnp.sum(J**2, axis=0))
    if scale_inv_old is None:
        return jnp.where(norms == 0, 1.0, norms).astype(J.dtype)
    return jnp.maximum(norms, scale_inv_old)


# --- bounds (trust-region reflective) ---------------------------------------------------


def cl_scaling(x, g, lower, upper) -> tuple[jax.Array, jax.Array]:
    """Coleman-Li scaling v (Branch, Coleman & Li 1999, eq. 2.2, scipy's sign convention)
    and its derivative dv: the distance to the bound the anti-gradient points at."""
    to_upper = (g < 0) & jnp.isfinite(upper)
    to_lower = (g > 0) & jnp.isfinite(lower)
    v = jnp.where(to_lower, x - lower, jnp.where(to_upper, upper - x, 1.0))
    dv = jnp.where(to_lower, 1.0, jnp.where(to_upper, -1.0, 0.0))
    return v.astype(x.dtype), dv.astype(x.dtype)


def in_bounds(x, lower, upper) -> jax.Array:
    return jnp.all((x >= lower) & (x <= upper))


def step_size_to_bound(x, s, lower, upper) -> tuple[jax.Array, jax.Array]:
    """The smallest t >= 0 with x + t s on a bound, and which coordinates hit it (-1/0/+1
    times the sign of s)."""
    moving = s != 0
    s_safe = jnp.where(moving, s, 1)
    steps = jnp.where(moving, jnp.maximum((lower - x) / s_safe, (upper - x) / s_safe), jnp.inf)
    min_step = jnp.min(steps)
    hits = jnp.where(steps == min_step, jnp.sign(s), 0)
    return min_step, hits


def intersect_trust_region(x, s, Delta) -> tuple[jax.Array, jax.Array]:
    """The roots t of ``||x + t s|| = Delta`` (x inside), negative one first."""
    a = s @ s
    b = x @ s
    c = x @ x - Delta**2
    d = jnp.sqrt(jnp.maximum(b * b - a * c, 0))
    q = -(b + jnp.where(b >= 0, d, -d))
    t1, t2 = safe_div(q, a), safe_div(c, q)
    return jnp.minimum(t1, t2), jnp.maximum(t1, t2)


def build_quadratic_1d(J, g, s, diag=None, s0=None):
    """Coefficients (a, b, c) of the model along the line ``s0 + t s``."""
    v = J @ s
    a = v @ v
    if diag is not None:
        a = a + (s * diag) @ s
    a = 0.5 * a
    b = g @ s
    if s0 is None:
        return a, b, jnp.zeros_like(a)
    u = J @ s0
    b = b + u @ v
    c = 0.5 * (u @ u) + g @ s0
    if diag is not None:
        b = b + (s0 * diag) @ s
        c = c + 0.5 * (s0 * diag) @ s0
    return a, b, c


def minimize_quadratic_1d(a, b, lo, hi, c: Any = 0.0) -> tuple[jax.Array, jax.Array]:
    """The minimizer of ``a t^2 + b t + c`` on [lo, hi] and its value (ends, then the
    extremum if inside; ties go to the first, as scipy's argmin)."""
    extremum = -0.5 * safe_div(b, a)
    inside = (a != 0) & (lo < extremum) & (extremum < hi)
    t = jnp.stack([lo, hi, jnp.where(inside, extremum, lo)])
    y = t * (a * t + b) + c
    i = jnp.argmin(y)
    return t[i], y[i]


def select_step(x, J_h, diag_h, g_h, p, p_h, d, Delta, lower, upper, theta):
    """The trust-region reflective step (scipy's ``trf.select_step``): the trust-region
    step if it stays in the box; else the best of that step cut back at the boundary
    (times theta), its reflection off the boundary, and the scaled anti-gradient (Cauchy)
    step. Returns ``(step, step_h, predicted_reduction)``."""
    inside = in_bounds(x + p, lower, upper)
    value_inside = evaluate_quadratic(J_h, g_h, p_h, diag=diag_h)

    p_stride, hits = step_size_to_bound(x, p, lower, upper)
    r_h = jnp.where(hits != 0, -p_h, p_h)
    r = d * r_h
    p_cut, p_h_cut = p * p_stride, p_h * p_stride
    _, to_tr = intersect_trust_region(p_h_cut, r_h, Delta)
    to_bound, _ = step_size_to_bound(x + p_cut, r, lower, upper)
    r_stride = jnp.minimum(to_bound, to_tr)
    positive = r_stride > 0
    r_lo = jnp.where(positive, (1 - theta) * p_stride / jnp.where(positive, r_stride, 1), 0.0)
    r_hi = jnp.where(positive, jnp.where(r_stride == to_bound, theta * to_bound, to_tr), -1.0)
    has_reflection = r_lo <= r_hi
    a, b, c = build_quadratic_1d(J_h, g_h, r_h, s0=p_h_cut, diag=diag_h)
    r_t, r_value = minimize_quadratic_1d(a, b, r_lo, jnp.where(has_reflection, r_hi, r_lo), c)
    r_h = r_h * r_t + p_h_cut
    r = r_h * d
    r_value = jnp.where(has_reflection, r_value, jnp.inf)

    p_cut, p_h_cut = p_cut * theta, p_h_cut * theta
    p_value = evaluate_quadratic(J_h, g_h, p_h_cut, diag=diag_h)

    ag_h = -g_h
    ag = d * ag_h
    to_tr = Delta / jnp.linalg.norm(ag_h)
    to_bound, _ = step_size_to_bound(x, ag, lower, upper)
    ag_stride = jnp.where(to_bound < to_tr, theta * to_bound, to_tr)
    a, b, _ = build_quadratic_1d(J_h, g_h, ag_h, diag=diag_h)
    ag_stride, ag_value = minimize_quadratic_1d(a, b, jnp.zeros_like(a), ag_stride)
    ag_h, ag = ag_h * ag_stride, ag * ag_stride

    take_p = (p_value < r_value) & (p_value < ag_value)
    take_r = ~take_p & (r_value < p_value) & (r_value < ag_value)
    pick = lambda u, v, w: jnp.where(take_p, u, jnp.where(take_r, v, w))
    step = pick(p_cut, r, ag)
    step_h = pick(p_h_cut, r_h, ag_h)
    value = pick(p_value, r_value, ag_value)
    return (
        jnp.where(inside, p, step),
        jnp.where(inside, p_h, step_h),
        -jnp.where(inside, value_inside, value),
    )


def find_active_constraints(x, lower, upper, rtol) -> jax.Array:
    """-1 / 0 / +1 where x is within ``rtol * max(1, |bound|)`` of its lower / no / upper
    bound (the nearer one); ``rtol = 0``: on or beyond the bound."""
    lower_dist, upper_dist = x - lower, upper - x
    lower_threshold = rtol * jnp.maximum(1, jnp.abs(lower))
    upper_threshold = rtol * jnp.maximum(1, jnp.abs(upper))
    at_lower = jnp.isfinite(lower) & (lower_dist <= jnp.minimum(upper_dist, lower_threshold))
    at_upper = jnp.isfinite(upper) & (upper_dist <= jnp.minimum(lower_dist, upper_threshold))
    return jnp.where(at_upper, 1, jnp.where(at_lower, -1, 0)).astype(jnp.int32)


def make_strictly_feasible(x, lower, upper, rstep) -> jax.Array:
    """x moved off its bounds into the box's interior: by ``rstep * max(1, |bound|)``, or
    by one ulp where ``rstep == 0``; to the middle where the box is too tight for that."""
    if rstep == 0:
        at_lower, at_upper = x <= lower, x >= upper
        x_new = jnp.where(at_lower, jnp.nextafter(lower, upper), x)
        x_new = jnp.where(at_upper, jnp.nextafter(upper, lower), x_new)
    else:
        active = find_active_constraints(x, lower, upper, rstep)
        x_new = jnp.where(active == -1, lower + rstep * jnp.maximum(1, jnp.abs(lower)), x)
        x_new = jnp.where(active == 1, upper - rstep * jnp.maximum(1, jnp.abs(upper)), x_new)
    tight = (x_new < lower) | (x_new > upper)
    return jnp.where(tight, 0.5 * (lower + upper), x_new).astype(x.dtype)
