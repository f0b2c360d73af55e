"""Newton's linear algebra: the Gill–Murray–Wright modified Cholesky solve against a NumPy
reference written from the definition (Gill, Murray & Wright, "Practical Optimization",
sec. 4.4.2.2, with symmetric pivoting on the largest remaining diagonal entry), on each of
the three ways it is computed (unrolled n <= 2, looped n <= 16, LAPACK first up to
``GMW_MAX_N``), plain and under ``jit(vmap)``; above ``GMW_MAX_N`` the eigenvalue
modification (Nocedal & Wright 2006, sec. 3.4) against its NumPy reference, on definite,
indefinite, zero and singular matrices, batched, and in a Newton solve."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxopt_dict as jd
from jaxopt_dict import _modified_cholesky as mc

jax.config.update("jax_enable_x64", True)

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


SIZES = [1, 2, 3, 5, 16, 24]  # unrolled, looped, and LAPACK-first (n > 16)


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
# Above GMW_MAX_N: LAPACK's Cholesky, else the eigenvalue modification.
# ----------------------------------------------------------------------------------------

EIGEN_SIZES = [mc.GMW_MAX_N + 1, mc.GMW_MAX_N + 32]


def eigen_reference(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, lam')`` with ``H + E = Q diag(lam') Q^T``, ``lam' = max(|lam|, sqrt(eps)
    max|lam|, delta)``, in float64, delta as GMW's."""
    assert a.shape[0] > mc.GMW_MAX_N
    gamma = np.max(np.abs(np.diag(a)))
    xi = np.max(np.abs(a - np.diag(np.diag(a))))
    delta = EPS * max(gamma + xi, 1.0)
    lam, q = np.linalg.eigh(a)
    return q, np.maximum(np.abs(lam), max(np.sqrt(EPS) * np.abs(lam).max(), delta))


def eigen_reference_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    q, lam = eigen_reference(a)
    return q @ ((q.T @ b) / lam)


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(mc.modified_cholesky_solve(jnp.asarray(a), jnp.asarray(b)))


@pytest.mark.parametrize("n", EIGEN_SIZES)
@pytest.mark.parametrize("shift", [-1.0, -0.5, -3.0], ids=["straddling", "mostly", "negative"])
def test_eigen_path_matches_the_reference(n, shift):
    # a a^T / n has its spectrum in [0, 4]: shifted by -0.5 and -1 it is indefinite, by -3
    # mostly negative definite.
    rng = np.random.default_rng(n)
    a, b = _matrix(rng, n, shift), rng.standard_normal(n)
    x = _solve(a, b)
    np.testing.assert_allclose(x, eigen_reference_solve(a, b), rtol=1e-8, atol=1e-12)
    assert b @ x > 0  # -x is a descent direction for gradient b
    # The flip: H's own eigenvectors and |lam|, not H shifted or clipped at a small floor.
    lam = np.linalg.eigvalsh(a)
    assert lam.min() < 0 and np.abs(x).max() <= np.abs(b).sum() / np.abs(lam).min()


@pytest.mark.parametrize("n", EIGEN_SIZES)
def test_eigen_path_equals_the_plain_cholesky_solve_where_definite(n):
    rng = np.random.default_rng(200 + n)
    a, b = jnp.asarray(_matrix(rng, n, 0.1)), jnp.asarray(rng.standard_normal(n))
    plain = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(a), True), b)
    x = mc.modified_cholesky_solve(a, b)
    np.testing.assert_array_equal(x, plain)  # the very same numbers: no modification ran
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_eigen_path_descent_on_random_symmetric_matrices(seed):
    # Gaussian symmetric (spectrum straddling 0), rank-deficient indefinite, at scales
    # 1e-6..1e6: a finite descent direction no longer than |b| / the floor.
    rng = np.random.default_rng(seed)
    n = EIGEN_SIZES[0]
    scale = 10.0 ** rng.uniform(-6, 6)
    g = rng.standard_normal((n, n))
    if seed % 2:
        v = rng.standard_normal((n, 12))
        a = v @ np.diag(rng.choice([-1.0, 1.0], 12)) @ v.T
    else:
        a = 0.5 * (g + g.T)
    a, b = scale * a, rng.standard_normal(n)
    x = _solve(a, b)
    assert np.all(np.isfinite(x))
    assert b @ x > 0
    lam = np.abs(np.linalg.eigvalsh(a))
    assert np.linalg.norm(x) <= 1.001 * np.linalg.norm(b) / (np.sqrt(EPS) * lam.max())
    # Norm-wise: components along the (near-)null space are b's divided by the floor.
    expected = eigen_reference_solve(a, b)
    assert np.linalg.norm(x - expected) <= 1e-7 * np.linalg.norm(expected)


def test_eigen_path_zero_and_singular_hessians():
    n = EIGEN_SIZES[0]
    rng = np.random.default_rng(3)
    b = rng.standard_normal(n)
    # Zero: every eigenvalue is raised to GMW's delta = eps (as for n <= GMW_MAX_N).
    np.testing.assert_allclose(_solve(np.zeros((n, n)), b), b / EPS, rtol=1e-12)
    # Singular PSD of rank 10: the range part of b is solved exactly, the null-space part
    # is divided by the floor sqrt(eps) max(lam), not by a rounding-sized pivot.
    v = rng.standard_normal((n, 10))
    a = v @ v.T
    x = _solve(a, b)
    assert np.all(np.isfinite(x)) and b @ x > 0
    basis = np.linalg.svd(v, full_matrices=False)[0]
    in_range = basis @ (basis.T @ b)
    floor = np.sqrt(EPS) * np.linalg.eigvalsh(a).max()
    np.testing.assert_allclose(a @ x, in_range, rtol=0, atol=1e-6 * np.abs(b).max())
    x_null = x - basis @ (basis.T @ x)
    np.testing.assert_allclose(x_null, (b - in_range) / floor, rtol=1e-6, atol=0)


def test_eigen_path_batched_under_jit_matches_one_at_a_time():
    n = EIGEN_SIZES[0]
    rng = np.random.default_rng(11)
    shifts = (0.1, -1.0, 0.5, -0.2)
    hess = np.stack([_matrix(rng, n, s) for s in shifts])
    rhs = rng.standard_normal((len(shifts), n))
    batched = jax.jit(jax.vmap(mc.modified_cholesky_solve))(jnp.asarray(hess), jnp.asarray(rhs))
    for h, b, x, s in zip(hess, rhs, np.asarray(batched), shifts):
        expected = np.linalg.solve(h, b) if s > 0 else eigen_reference_solve(h, b)
        np.testing.assert_allclose(x, expected, rtol=1e-8)


_BATCH_SCRIPT = """
import os
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])  # XLA sizes its pool from this
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jaxopt_dict._modified_cholesky import modified_cholesky_solve
n, batch = {n}, 16
rng = np.random.default_rng(0)
a = rng.standard_normal((batch, n, n))
hess = jnp.asarray(a @ a.transpose(0, 2, 1) / n - 0.5 * np.eye(n))
rhs = jnp.asarray(rng.standard_normal((batch, n)))
solve = jax.jit(jax.vmap(modified_cholesky_solve))
for _ in range(200):
    x = jax.block_until_ready(solve(hess, rhs))
print("finite", bool(jnp.all(jnp.isfinite(x))))
"""


def test_eigen_path_batched_does_not_deadlock():
    # Under vmap both sides of the cond run; jaxlib 0.10's batched Cholesky and eigh, run
    # side by side, each held one of the 2 pool workers while waiting on the pool: this
    # script hung in 3 of 3 runs before eigh was made to wait for the Cholesky solve.
    script = textwrap.dedent(_BATCH_SCRIPT.format(n=EIGEN_SIZES[0]))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            check=False,
            text=True,
            timeout=240,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the batched solve hung (batched LAPACK kernels deadlocked)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finite True" in proc.stdout


_N_WELL = mc.GMW_MAX_N + 2
_ROTATION = np.linalg.qr(np.random.default_rng(5).standard_normal((_N_WELL, _N_WELL)))[0]


def _rotated_double_well(x: jax.Array) -> jax.Array:
    """``sum(y^4 / 4 - y^2 / 2)`` with ``y = Q^T x``: minimizers ``Q s``, s in {-1, 1}^n."""
    y = jnp.asarray(_ROTATION).T @ x
    return jnp.sum(0.25 * y**4 - 0.5 * y**2)


def test_newton_with_indefinite_hessians_reaches_the_local_minimizer():
    # Half the coordinates of y start where the curvature 3 y^2 - 1 is negative: H = Q
    # diag(3 y^2 - 1) Q^T is dense and indefinite, so the first steps take the eigenvalue
    # modification. Each flipped step keeps the sign of every y_i, so Newton must end at
    # the local minimizer Q sign(y0) (the global ones are all equal; which one is reached
    # tests the step, not luck).
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
    # Sensible lengths: 13 iterations, 19 evaluations; with negative eigenvalues raised to
    # the floor instead of flipped (eq. 3.41), the backtracking took 43 evaluations.
    assert int(res.nfev) <= 25
