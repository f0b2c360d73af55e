"""The SVD least squares computes itself for Jacobians of at most ``SMALL_SVD_COLUMNS`` (5)
columns (Householder QR, then one-sided Jacobi: ``lsq_methods._common.factorize``), against
LAPACK's (numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_dict.lsq_methods import _common

_factorize = jax.jit(_common.factorize)
_factorize_batch = jax.jit(jax.vmap(_common.factorize))


def _check(A, f, uf, s, V, rtol):
    """What the trust-region solves use: s (descending, LAPACK's values), V orthonormal,
    ``A^T f = V diag(s) uf`` and ``||A v_j|| = s_j``."""
    A, f, uf, s, V = (np.asarray(v, np.float64) for v in (A, f, uf, s, V))
    s_ref = np.linalg.svd(A, compute_uv=False)
    scale = s_ref[0] if s_ref[0] > 0 else 1.0
    np.testing.assert_allclose(s, s_ref, rtol=0, atol=rtol * scale)
    assert np.all(np.diff(s) <= 0)
    np.testing.assert_allclose(V.T @ V, np.eye(V.shape[1]), atol=rtol)
    gradient = A.T @ f
    np.testing.assert_allclose(V @ (s * uf), gradient, atol=rtol * scale * np.linalg.norm(f))
    np.testing.assert_allclose(np.linalg.norm(A @ V, axis=0), s, atol=rtol * scale)
    # V diagonalizes A^T A (the checks above hold for any orthogonal V): a Jacobi stopped
    # early fails here, and the Gauss-Newton step then equals least squares' own.
    np.testing.assert_allclose(V.T @ (A.T @ A) @ V, np.diag(s**2), atol=rtol * scale**2)
    if s[-1] > 1e-6 * scale:
        step = V @ (uf / s)
        want = np.linalg.lstsq(A, f, rcond=None)[0]
        np.testing.assert_allclose(step, want, atol=1e3 * rtol * np.linalg.norm(want))


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 12),
    n=st.integers(1, _common.SMALL_SVD_COLUMNS),
    grading=st.floats(0.0, 8.0),
    rank_deficient=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_lapack_on_random_graded_and_rank_deficient_matrices(
    m, n, grading, rank_deficient, seed
):
    m = max(m, n)
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m, n)) * 10.0 ** rng.uniform(-grading, grading, size=n)
    if rank_deficient and n > 1:
        A[:, -1] = 3.0 * A[:, 0]
    f = rng.normal(size=m)
    _check(A, f, *_factorize(jnp.asarray(A), jnp.asarray(f)), rtol=1e-13)


def test_batched_equals_one_at_a_time_and_float32():
    rng = np.random.default_rng(0)
    A, f = rng.normal(size=(64, 30, 3)), rng.normal(size=(64, 30))
    batched = _factorize_batch(jnp.asarray(A), jnp.asarray(f))
    for i in (0, 17, 63):
        alone = _factorize(jnp.asarray(A[i]), jnp.asarray(f[i]))
        for got, want in zip(batched, alone):
            np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-14)
    A32, f32 = jnp.asarray(A[0], jnp.float32), jnp.asarray(f[0], jnp.float32)
    uf, s, V = _factorize(A32, f32)
    assert s.dtype == jnp.float32
    _check(A[0], f[0], uf, s, V, rtol=2e-6)


def test_zero_and_non_finite_jacobians_end():
    # A zero matrix: no rotation at all, s = 0 and uf = 0 exactly; NaN: no rotation either
    # (comparisons are False), and the NaN reaches s instead of a finite answer.
    uf, s, V = _factorize(jnp.zeros((5, 3)), jnp.ones(5))
    np.testing.assert_array_equal(s, 0.0)
    np.testing.assert_array_equal(uf, 0.0)
    np.testing.assert_allclose(np.asarray(V).T @ np.asarray(V), np.eye(3))
    _, s, _ = _factorize(jnp.full((5, 3), jnp.nan), jnp.ones(5))
    assert s.shape == (3,) and bool(jnp.all(jnp.isnan(s)))


@pytest.mark.parametrize("shape", [(3, 7), (2, 3), (20, 6), (20, 8)])
def test_wide_or_many_columns_use_lapack(shape):
    rng = np.random.default_rng(1)
    A, f = rng.normal(size=shape), rng.normal(size=shape[0])
    uf, s, V = _factorize(jnp.asarray(A), jnp.asarray(f))
    U, s_ref, Vt = np.linalg.svd(A, full_matrices=False)
    np.testing.assert_allclose(s, s_ref, rtol=1e-12)
    np.testing.assert_allclose(np.abs(uf), np.abs(U.T @ f), rtol=1e-10)
    np.testing.assert_allclose(np.abs(V), np.abs(Vt.T), atol=1e-10)  # up to column signs


@pytest.mark.parametrize(
    ("dtype", "magnitude"),
    [(jnp.float64, 1e200), (jnp.float64, 1e-200), (jnp.float32, 1e20), (jnp.float32, 1e-20)],
)
def test_entries_far_from_one_are_scaled_not_squared_away(dtype, magnitude):
    # Squares of 1e-200 underflow and of 1e200 overflow; LAPACK scales, and so does this.
    rng = np.random.default_rng(2)
    A, f = rng.normal(size=(5, 3)), rng.normal(size=5)
    uf, s, V = _factorize(jnp.asarray(A * magnitude, dtype), jnp.asarray(f * magnitude, dtype))
    rtol = 1e-13 if dtype == jnp.float64 else 2e-6
    _check(A, f, uf / magnitude, s / magnitude, V, rtol=rtol)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_times_pow2_is_ldexp_wherever_input_and_result_are_normal(dtype):
    # ``factorize`` scales by powers of two with two multiplications instead of
    # ``jnp.ldexp`` (which works on every entry's bits, 6x the time under vmap); exact
    # as ldexp is, over twice the exponent range. (XLA:CPU flushes subnormal inputs.)
    info = np.finfo(dtype)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(2000) * 10.0 ** rng.uniform(-35, 35, 2000)
    x = np.concatenate([x, [0.0, info.tiny, -info.tiny, info.max, -info.max]]).astype(dtype)
    low, high = 2 * info.minexp, 2 * (info.maxexp - 1)  # twice the normal exponents
    for k in [low, low + 1, -200, -127, -1, 0, 1, 127, 200, high - 1, high]:
        got = np.asarray(_common.times_pow2(jnp.asarray(x), jnp.asarray(k, jnp.int32)))
        with np.errstate(over="ignore", under="ignore"):
            want = np.ldexp(x, k)
        normal = np.isfinite(want) & (np.abs(want) >= info.tiny) | (want == 0) & (x == 0)
        np.testing.assert_array_equal(got[normal], want[normal], err_msg=f"k = {k}")
        overflow = ~np.isfinite(want)
        assert np.all(np.isinf(got[overflow]))
    special = jnp.asarray([np.inf, -np.inf, np.nan], dtype)
    out = np.asarray(_common.times_pow2(special, jnp.asarray(-50, jnp.int32)))
    assert np.isposinf(out[0]) and np.isneginf(out[1]) and np.isnan(out[2])
