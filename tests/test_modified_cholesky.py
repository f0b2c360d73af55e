"""Newton's linear algebra: the Gill–Murray–Wright modified Cholesky solve against a NumPy
reference written from the definition (Gill, Murray & Wright, "Practical Optimization",
sec. 4.4.2.2, with symmetric pivoting on the largest remaining diagonal entry), on each of
the three ways it is computed (unrolled n <= 2, looped n <= 16, LAPACK first above), plain
and under ``jit(vmap)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
