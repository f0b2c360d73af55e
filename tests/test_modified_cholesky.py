"""Newton's linear algebra. For n <= 16, the Gill–Murray–Wright modified Cholesky solve
against a NumPy reference written from the definition (Gill, Murray & Wright, "Practical
Optimization", sec. 4.4.2.2, with symmetric pivoting on the largest remaining diagonal
entry), unrolled (n <= 2) and looped, plain and under ``jit(vmap)``. Above, Cholesky with
an added multiple of the identity (Nocedal & Wright 2006, Algorithm 3.3) against a NumPy
replay of its shifts, on definite, indefinite, zero and singular matrices, batched, and in
a Newton solve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.extend.core import Literal
from problems import jaxpr_equations

import jaxopt_dict as jd
from jaxopt_dict import _modified_cholesky as mc

EPS = np.finfo(np.float64).eps


def gmw_reference(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(H + E, diag(E))`` from the textbook algorithm, entry by entry, in float64."""
    n = a.shape[0]
    gamma = np.max(np.abs(np.diag(a)))
    xi = np.max(np.abs(a - np.diag(np.diag(a)))) if n > 1 else 0.0
    beta2 = max(gamma, xi / np.sqrt(n * n - 1.0) if n > 1 else 0.0, EPS)
    delta = EPS * max(gamma + xi, 1.0)
    c = a.astype(np.float64).copy()  # c[i, k]: a_ik less the terms of the columns done
    d, l_cols, e = [], [], np.zeros(n)
    remaining = list(range(n))
    for _ in range(n):
        q = max(remaining, key=lambda i: (abs(c[i, i]), -i))
        remaining.remove(q)
        theta = max((abs(c[i, q]) for i in remaining), default=0.0)
        d_q = max(abs(c[q, q]), theta * theta / beta2, delta)
        e[q] = d_q - c[q, q]
        l_col = np.zeros(n)
        for i in remaining:
            l_col[i] = c[i, q] / d_q
        l_col[q] = 1.0
        for i in remaining:
            for k in remaining:
                c[i, k] -= d_q * l_col[i] * l_col[k]
        d.append(d_q)
        l_cols.append(l_col)
    modified = sum(d_q * np.outer(l, l) for d_q, l in zip(d, l_cols))
    return modified, e


SIZES = [1, 2, 3, 5, 16]  # unrolled (n <= 2) and looped GMW


def _matrix(rng, n, shift):
    a = rng.standard_normal((n, n))
    return a @ a.T / n + shift * np.eye(n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("shift", [0.1, -1.0], ids=["definite", "indefinite"])
def test_solve_matches_the_reference(n, shift):
    rng = np.random.default_rng(n)
    a, b = _matrix(rng, n, shift), rng.standard_normal(n)
    modified, e = gmw_reference(a)
    x = np.asarray(mc.modified_cholesky_solve(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(x, np.linalg.solve(modified, b), rtol=1e-9, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(modified) > 0)
    if shift > 0:  # positive definite: no modification, the plain Newton solve
        assert np.all(e == 0)
        np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-9, atol=1e-12)
    else:
        assert np.any(e > 0)
        assert b @ x > 0  # -x is a descent direction for gradient b


@pytest.mark.parametrize("n", SIZES)
def test_batched_under_jit_matches_one_at_a_time(n):
    rng = np.random.default_rng(100 + n)
    hess = np.stack([_matrix(rng, n, s) for s in (0.1, -1.0, 0.5, -0.2)])
    rhs = rng.standard_normal((4, n))
    batched = jax.jit(jax.vmap(mc.modified_cholesky_solve))(jnp.asarray(hess), jnp.asarray(rhs))
    for h, b, x in zip(hess, rhs, np.asarray(batched)):
        np.testing.assert_allclose(x, np.linalg.solve(gmw_reference(h)[0], b), rtol=1e-9)


def test_unrolled_and_looped_agree():
    rng = np.random.default_rng(7)
    for n in (1, 2):
        for shift in (0.3, -0.7):
            a, b = jnp.asarray(_matrix(rng, n, shift)), jnp.asarray(rng.standard_normal(n))
            np.testing.assert_allclose(
                mc._solve_unrolled(a, b), mc._solve_looped(a, b), rtol=1e-13, atol=1e-15
            )


def test_ties_and_zero_hessian():
    # Equal diagonals: the first is the pivot; a zero Hessian gets the least pivot delta.
    x = mc.modified_cholesky_solve(jnp.eye(3), jnp.asarray([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(x, [1.0, 2.0, 3.0])
    for n in (2, 3):
        x = mc.modified_cholesky_solve(jnp.zeros((n, n)), jnp.ones(n))
        np.testing.assert_allclose(x, np.full(n, 1.0 / EPS))


@settings(max_examples=30, deadline=None)
@given(
    n=st.sampled_from([1, 2, 3, 6]),
    entries=st.lists(st.floats(-10.0, 10.0), min_size=36, max_size=36),
    rhs=st.lists(st.floats(-10.0, 10.0), min_size=6, max_size=6),
)
def test_random_symmetric_matrices(n, entries, rhs):
    a = np.asarray(entries).reshape(6, 6)[:n, :n]
    a = 0.5 * (a + a.T)
    b = np.asarray(rhs)[:n]
    modified, _ = gmw_reference(a)
    x = np.asarray(mc.modified_cholesky_solve(jnp.asarray(a), jnp.asarray(b)))
    assert np.all(np.isfinite(x))
    scale = n * np.abs(modified).max() * np.abs(x).max() + np.abs(b).max()
    np.testing.assert_allclose(modified @ x, b, rtol=0, atol=1e-10 * scale)
    assert b @ x >= -1e-9 * np.abs(b).sum() * np.abs(x).sum()


# ----------------------------------------------------------------------------------------
# Above LOOPED_MAX_N: Cholesky with an added multiple of the identity.
# ----------------------------------------------------------------------------------------

SHIFTED_SIZES = [mc.LOOPED_MAX_N + 8, 129]


def shifted_reference(a: np.ndarray) -> float:
    """tau of Nocedal & Wright's Algorithm 3.3 as specified in ``_solve_shifted``, replayed
    with NumPy's Cholesky (``delta`` as GMW's, ``beta = 1e-3 max |a_ij|``)."""
    n = a.shape[0]
    gamma = np.max(np.abs(np.diag(a)))
    xi = np.max(np.abs(a - np.diag(np.diag(a))))
    delta = EPS * max(gamma + xi, 1.0)
    beta = max(1e-3 * np.abs(a).max(), delta)
    tau = 0.0 if np.diag(a).min() > 0 else beta - np.diag(a).min()
    for _ in range(64):
        try:
            chol = np.linalg.cholesky(a + tau * np.eye(n))
            if np.diag(chol).min() ** 2 >= delta:
                return tau
        except np.linalg.LinAlgError:
            pass
        tau = max(2.0 * tau, beta)
    raise AssertionError("no shift found")


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(mc.modified_cholesky_solve(jnp.asarray(a), jnp.asarray(b)))


def _tau_bound(a: np.ndarray) -> float:
    """tau <= 2 (|lam_min| + delta) after a doubling, <= beta + |lam_min| from ``beta - min
    a_ii``: the shifted matrix's least eigenvalue is at most ``|lam_min| + beta`` (module
    docstring), with room for rounding."""
    lam_min = np.linalg.eigvalsh(a).min()
    scale = np.abs(a).max()
    return 2.0 * abs(lam_min) + 1e-3 * scale + 2.0 * EPS * max(2.0 * scale, 1.0) + 1e-12 * scale


@pytest.mark.parametrize("n", SHIFTED_SIZES)
@pytest.mark.parametrize(
    "shift", [-0.5, -1.0, -3.0], ids=["positive-diagonal", "mixed-diagonal", "negative"]
)
def test_shifted_matches_the_reference(n, shift):
    # a a^T / n has its spectrum in [0, 4] and diagonal about 1: shifted by -0.5 it is
    # indefinite with a positive diagonal (tau doubles up from beta), by -1 the diagonal
    # has both signs, by -3 it is mostly negative definite (tau starts at beta - min a_ii).
    rng = np.random.default_rng(n)
    a, b = _matrix(rng, n, shift), rng.standard_normal(n)
    tau = shifted_reference(a)
    assert np.linalg.eigvalsh(a).min() < 0 and 0 < tau <= _tau_bound(a)
    x = _solve(a, b)
    np.testing.assert_allclose(x, np.linalg.solve(a + tau * np.eye(n), b), rtol=1e-9)
    assert b @ x > 0  # -x is a descent direction for gradient b


@pytest.mark.parametrize("n", SHIFTED_SIZES)
def test_shifted_equals_the_plain_cholesky_solve_where_definite(n):
    rng = np.random.default_rng(200 + n)
    a, b = jnp.asarray(_matrix(rng, n, 0.1)), jnp.asarray(rng.standard_normal(n))
    plain = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(a), True), b)
    x = mc.modified_cholesky_solve(a, b)
    np.testing.assert_array_equal(x, plain)  # the very same numbers: no shift
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_shifted_descent_on_random_symmetric_matrices(seed):
    # Gaussian symmetric (spectrum straddling 0) and rank-deficient indefinite, at scales
    # 1e-6..1e6: a finite descent direction, the reference's, of sensible length.
    rng = np.random.default_rng(seed)
    n = SHIFTED_SIZES[seed % 2]
    g = rng.standard_normal((n, n))
    if seed % 3 == 2:
        v = rng.standard_normal((n, 12))
        a = v @ np.diag(rng.choice([-1.0, 1.0], 12)) @ v.T
    else:
        a = 0.5 * (g + g.T)
    a, b = 10.0 ** rng.uniform(-6, 6) * a, rng.standard_normal(n)
    x = _solve(a, b)
    assert np.all(np.isfinite(x)) and b @ x > 0
    tau = shifted_reference(a)
    assert tau <= _tau_bound(a)
    np.testing.assert_allclose(x, np.linalg.solve(a + tau * np.eye(n), b), rtol=1e-7)


@pytest.mark.parametrize("n", SHIFTED_SIZES)
def test_shifted_zero_and_singular_hessians(n):
    rng = np.random.default_rng(3)
    b = rng.standard_normal(n)
    # Zero: tau = beta = delta = eps, as GMW's least pivot for n <= 16.
    np.testing.assert_allclose(_solve(np.zeros((n, n)), b), b / EPS, rtol=1e-12)
    # Singular PSD of rank 10: the plain factorization fails on rounding-sized pivots and
    # the first shift, beta = 1e-3 max|a_ij|, succeeds: the null-space part of b is divided
    # by beta, not by a rounding-sized pivot.
    v = rng.standard_normal((n, 10))
    a = v @ v.T
    beta = 1e-3 * np.abs(a).max()
    assert shifted_reference(a) == beta
    x = _solve(a, b)
    assert np.all(np.isfinite(x)) and b @ x > 0
    np.testing.assert_allclose(x, np.linalg.solve(a + beta * np.eye(n), b), rtol=1e-9)
    basis = np.linalg.svd(v, full_matrices=False)[0]
    x_null = x - basis @ (basis.T @ x)
    np.testing.assert_allclose(x_null, (b - basis @ (basis.T @ b)) / beta, rtol=1e-8)


def test_shifted_non_finite_hessian_gives_a_non_finite_solve():
    # Newton's direction then falls back to steepest descent; the loop stops at once.
    n = SHIFTED_SIZES[0]
    a = np.eye(n)
    a[3, 3] = np.nan
    assert not np.any(np.isfinite(_solve(a, np.ones(n))))


@pytest.mark.parametrize("n", SHIFTED_SIZES)
def test_shifted_batched_under_jit_matches_one_at_a_time(n):
    rng = np.random.default_rng(11)
    shifts = (0.1, -1.0, 0.5, -0.5, -3.0)
    hess = np.stack([_matrix(rng, n, s) for s in shifts])
    rhs = rng.standard_normal((len(shifts), n))
    batched = jax.jit(jax.vmap(mc.modified_cholesky_solve))(jnp.asarray(hess), jnp.asarray(rhs))
    for h, b, x in zip(hess, rhs, np.asarray(batched)):
        expected = np.linalg.solve(h + shifted_reference(h) * np.eye(n), b)
        np.testing.assert_allclose(x, expected, rtol=1e-9)


LAPACK_PRIMITIVES = {"cholesky", "eigh", "triangular_solve", "lu", "qr", "svd"}


def _lapack_calls(eqn) -> list[str]:
    """The LAPACK primitives of ``eqn`` and of its sub-jaxprs, in order."""
    names = [eqn.primitive.name]
    for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
            inner = getattr(sub, "jaxpr", sub)
            if hasattr(inner, "eqns"):
                names += [e.primitive.name for e, _ in jaxpr_equations(inner)]
    return [name for name in names if name in LAPACK_PRIMITIVES]


def _depends_on(jaxpr, eqn, source) -> bool:
    """Whether ``eqn`` consumes ``source``'s outputs, through the equations between."""
    reached = set(source.outvars)
    for e in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in reached for v in e.invars):
            if e is eqn:
                return True
            reached.update(e.outvars)
    return False


def test_shifted_batched_factorizations_run_one_after_another():
    # jaxlib 0.10's batched LAPACK kernels each hold a worker of XLA's intra-op pool while
    # waiting on it, so two of them side by side deadlock a 2-core machine (seen with a
    # plain Cholesky and eigh in the two branches of a cond, which vmap turns into a select
    # with both sides run: 200 calls on a batch of 16 at n = 129 hung in 3 of 3 runs). Under
    # vmap, each LAPACK call must wait for the one before: the first Cholesky, the loop of
    # shifted ones (one per trip), the two triangular solves.
    n = SHIFTED_SIZES[0]
    jaxpr = jax.make_jaxpr(jax.vmap(mc.modified_cholesky_solve))(
        jnp.zeros((3, n, n)), jnp.zeros((3, n))
    ).jaxpr
    calls = [(e, _lapack_calls(e)) for e in jaxpr.eqns if _lapack_calls(e)]
    assert [names for _, names in calls] == [
        ["cholesky"],
        ["cholesky"],  # the while loop's body
        ["triangular_solve", "triangular_solve"],
    ]
    (first, _), (loop, _), (solve, _) = calls
    assert loop.primitive.name == "while"
    assert _depends_on(jaxpr, loop, first) and _depends_on(jaxpr, solve, loop)


_N_WELL = 40
_ROTATION = np.linalg.qr(np.random.default_rng(5).standard_normal((_N_WELL, _N_WELL)))[0]


def _rotated_double_well(x: jax.Array) -> jax.Array:
    """``sum(y^4 / 4 - y^2 / 2)`` with ``y = Q^T x``: minimizers ``Q s``, s in {-1, 1}^n."""
    y = jnp.asarray(_ROTATION).T @ x
    return jnp.sum(0.25 * y**4 - 0.5 * y**2)


def test_newton_with_indefinite_hessians_reaches_the_local_minimizer():
    # Half the coordinates of y start where the curvature 3 y^2 - 1 is negative: H = Q
    # diag(3 y^2 - 1) Q^T is dense and indefinite, so the first steps are shifted. A step
    # d = -(H + tau I)^{-1} g keeps the sign of every y_i (tau > -min(3 y^2 - 1)), so
    # Newton must end at the local minimizer Q sign(y0).
    rng = np.random.default_rng(6)
    n = _N_WELL
    y0 = rng.choice([-1.0, 1.0], n) * np.where(
        np.arange(n) % 2 == 0, rng.uniform(0.05, 0.5, n), rng.uniform(0.7, 1.6, n)
    )
    x0 = _ROTATION @ y0
    assert np.linalg.eigvalsh(_ROTATION @ np.diag(3 * y0**2 - 1) @ _ROTATION.T).min() < -0.2
    res = jd.minimize(
        _rotated_double_well, jnp.asarray(x0), method="Newton", options={"gtol": 1e-10}
    )
    assert bool(res.success), res.message
    np.testing.assert_allclose(np.asarray(res.x), _ROTATION @ np.sign(y0), atol=1e-9)
    np.testing.assert_allclose(float(res.fun), -0.25 * n, rtol=1e-12)
    # Measured: 6 iterations, 7 evaluations. With flipped eigenvalues instead (Q diag(|3 y^2
    # - 1|) Q^T) 21 evaluations; with the GMW fallback used before, 111, ending at another
    # minimizer.
    assert int(res.nfev) <= 12
