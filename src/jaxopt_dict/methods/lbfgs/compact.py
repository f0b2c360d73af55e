"""The compact limited-memory BFGS matrices of L-BFGS(-B), on flat vectors, static shapes.

``B = theta I - W M W^T`` with ``W = [Y^T, theta S^T]`` and the middle matrix
``M = [[-D, L^T], [L, theta S^T S]]^{-1}`` (Byrd, Nocedal & Schnabel 1994, eq. 3.5;
Byrd, Lu, Nocedal & Zhu 1995, eq. 3.2); its inverse ``H = gamma I + ...`` with
``gamma = 1 / theta`` (BNS eq. 3.1) uses ``R``, the upper triangle of ``S^T Y``. ``D`` is
the diagonal of ``S^T Y`` and ``L`` its strictly lower triangle, pairs taken oldest first.

The pairs live in a circular buffer of m + 1 slots, written in place; everything is kept
in slot order, with ``age`` (the update number of each slot) standing in for the
chronological order: "oldest first" triangles become masks ``age_i < age_j``, and the
inverse of R, a permuted triangle, is updated in place (dropping the oldest pair is
zeroing its row and column, since R is block triangular). The spare slot is never one of
the m pairs in use, so the next pair is written there unconditionally and storing it is
only a matter of advancing ``count``: no read of an old row, no copy of the buffer, and
no reordering of anything. Slots outside the last ``min(count, m)`` updates (and, after
a reset, all of them) are masked out everywhere.
Only this small dense algebra is flattened (``jax.flatten_util.ravel_pytree``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg

from jaxopt_dict._tree import materialize, safe_divide


class Memory(NamedTuple):
    """The correction pairs and the small matrices the compact forms need.

    With ``k = m + 1`` slots:

    Attributes:
      v: ``(2k, n)``: ``v[j] = s`` and ``v[k + j] = y`` of the pair in slot j.
      gram: ``(2k, 2k)`` inner products of the rows of v (stale where a slot is unused,
        and in the s rows and columns when pushed with ``s_rows=False``).
      r_inv: ``(k, k)`` the inverse of R in slot order; zero rows and columns for unused
        slots.
      age: ``(k,)`` int32, the update number (since the last reset) in each slot, -1 if
        none.
      count: int32, updates since the last reset (scipy's ``iupdat``).
      theta: ``B0 = theta I``: ``y^T y / s^T y`` of the newest pair (1 after a reset).
    """

    v: jax.Array
    gram: jax.Array
    r_inv: jax.Array
    age: jax.Array
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (shadows tuple.count)
    theta: jax.Array


def memory_empty(m: int, n: int, dtype) -> Memory:
    """No pairs: ``B = H = I`` (what L-BFGS-B starts and restarts from)."""
    k = m + 1
    return Memory(
        v=jnp.zeros((2 * k, n), dtype),
        gram=jnp.zeros((2 * k, 2 * k), dtype),
        r_inv=jnp.zeros((k, k), dtype),
        age=jnp.full((k,), -1, jnp.int32),
        count=jnp.zeros((), jnp.int32),
        theta=jnp.ones((), dtype),
    )


def memory_reset(mem: Memory, when: jax.Array) -> Memory:
    """Forget every pair if ``when`` (the buffer itself is left stale, never copied)."""
    keep = ~when
    return mem._replace(
        r_inv=jnp.where(keep, mem.r_inv, 0.0),
        age=jnp.where(keep, mem.age, -1),
        count=jnp.where(keep, mem.count, 0),
        theta=jnp.where(keep, mem.theta, 1.0),
    )


def valid_slots(mem: Memory) -> jax.Array:
    """Which slots hold one of the last ``min(count, m)`` pairs."""
    m = mem.age.shape[0] - 1
    return (mem.age >= 0) & (mem.age >= mem.count - m)


def pair_products(mem: Memory, x: jax.Array) -> jax.Array:
    """``v @ x`` (slot order, the s block then the y block) for x (n,), or ``x @ v^T`` for
    x (j, n); not masked. (XLA:CPU runs ``(j, n) @ (n, 2k)`` 4x faster than
    ``(2k, n) @ (n, j)``.)"""
    return mem.v @ x if x.ndim == 1 else x @ mem.v.T


def _twice(mask: jax.Array) -> jax.Array:
    return jnp.concatenate([mask, mask])


def memory_push(
    mem: Memory,
    s: jax.Array,
    y: jax.Array,
    sy: jax.Array,
    yy: jax.Array,
    ss: jax.Array,
    when: jax.Array | bool = True,
    products: jax.Array | None = None,
    s_rows: bool = True,
) -> Memory:
    """Store the pair ``(s, y)``, dropping the oldest of m (scipy's ``matupd``), if
    ``when`` and its products with the stored pairs are finite.

    Args:
      mem: the memory.
      s, y: the new pair.
      sy, yy, ss: ``s^T y``, ``y^T y``, ``s^T s`` as the caller computed them (L-BFGS-B
        takes ``s^T y`` from the line search's directional derivatives).
      when: whether to store it. The rows go to the spare slot either way, in place.
      products: ``pair_products(mem, [s, y])`` (2, 2k) if the caller has them (L-BFGS
        gets ``Y^T y`` from ``V g`` before and after the step; it needs no ``S^T s``);
        computed if None.
      s_rows: whether to update the s rows and columns of ``gram`` (L-BFGS, which reads
        only ``S^T y``'s diagonal and ``Y^T Y``, leaves them stale: half the work).
    """
    k = mem.age.shape[0]
    if products is None:
        products = pair_products(mem, jnp.stack([s, y]))
    # Writing depends on the products, so the buffer is read before it is written and
    # XLA updates it in place instead of copying it every step.
    finite = jnp.all(jnp.isfinite(products))
    when = when & finite
    slot = mem.count % k
    # ``at``: the slot the pair is stored in, -1 if it is not (then nothing below matches
    # and the small matrices stay as they were, with no select over them on ``when``).
    # These per-problem scalars are materialized once (see ``materialize``).
    at = jnp.where(when, slot, -1)
    at_y = jnp.where(when, k + slot, -1)
    when, finite, slot, at, at_y, sy, yy, ss = materialize(
        (when, finite, slot, at, at_y, sy, yy, ss)
    )
    v = mem.v.at[slot].set(jnp.where(finite, s, 0.0))
    v = v.at[k + slot].set(jnp.where(finite, y, 0.0))
    index = jnp.arange(2 * k, dtype=jnp.int32)  # int32, as count and slot (x64 on)
    s_row = jnp.where(index == slot, ss, jnp.where(index == k + slot, sy, products[0]))
    y_row = jnp.where(index == slot, sy, jnp.where(index == k + slot, yy, products[1]))
    s_row, y_row = materialize((s_row, y_row))
    row, col = index[:, None], index[None, :]
    gram = mem.gram
    if s_rows:
        gram = jnp.where(row == at, s_row[None, :], jnp.where(col == at, s_row[:, None], gram))
    # (The y row's entry in column ``slot`` is ``s^T y`` as well.)
    gram = jnp.where(row == at_y, y_row[None, :], jnp.where(col == at_y, y_row[:, None], gram))
    count = mem.count + 1
    slots = jnp.arange(k, dtype=jnp.int32)
    age = jnp.where(slots == at, mem.count, mem.age)
    # R gains the column S^T y (the pairs kept), and the oldest pair leaves: for a block
    # triangular R, [[R', r], [0, sy]]^{-1} = [[R'^-1, -R'^-1 r / sy], [0, 1/sy]], and
    # dropping the first block keeps the rest of the inverse. (Without ``when`` every
    # slot is "kept" and the column is not written.)
    m = k - 1
    kept = (age >= 0) & (age >= count - m) & (slots != slot)  # valid_slots(new)
    kept = kept | ~when
    # Of the slots not kept, only the one that leaves (``age == count - m``, in slot
    # ``(count + 1) % k``) can have a nonzero row or column: the others already have
    # zero ones. Zeroing just that one is a cheap compare per element.
    leaves = jnp.where(when & (mem.count >= m), (mem.count + 1) % k, -1)
    kept, leaves = materialize((kept, leaves))
    r_inv = jnp.where((slots[:, None] == leaves) | (slots[None, :] == leaves), 0.0, mem.r_inv)
    column = -safe_divide(r_inv @ jnp.where(kept, products[1, :k], 0.0), sy)
    column = jnp.where(slots == slot, safe_divide(1.0, sy), column)
    r_inv = jnp.where(slots[None, :] == at, column[:, None], r_inv)
    return Memory(
        v=v,
        gram=gram,
        r_inv=r_inv,
        age=age,
        count=jnp.where(when, count, mem.count),
        theta=jnp.where(when, safe_divide(yy, sy), mem.theta),
    )


def pushed_products(mem: Memory, old: jax.Array, s_x: jax.Array, y_x: jax.Array) -> jax.Array:
    """``pair_products(after, x)`` from ``old = pair_products(mem, x)`` and the new pair's
    products with x, where ``after`` is ``mem`` with one more pair: no pass over v."""
    k = mem.age.shape[0]
    slot = mem.count % k
    index = jnp.arange(2 * k, dtype=jnp.int32)
    return jnp.where(index == slot, s_x, jnp.where(index == k + slot, y_x, old))


def inverse_times(mem: Memory, g: jax.Array, vg: jax.Array | None = None) -> jax.Array:
    """``H g`` for the inverse L-BFGS matrix (BNS 1994, eq. 3.1):
    ``H = gamma I + [S, gamma Y] [[R^-T (D + gamma Y^T Y) R^-1, -R^-T], [-R^-1, 0]]
    [S^T; gamma Y^T]``: (k, k) algebra and one or two passes over the pairs (``vg``,
    ``pair_products(mem, g)``, may be given), no factorization."""
    k = mem.age.shape[0]
    gamma = 1.0 / mem.theta
    vg = pair_products(mem, g) if vg is None else vg
    valid = valid_slots(mem)
    a = jnp.where(valid, vg[:k], 0.0)
    b = jnp.where(valid, vg[k:], 0.0)
    q = mem.r_inv @ a  # zero on unused slots (their rows of r_inv are)
    diag = jnp.diagonal(mem.gram[:k, k:])
    # Unused rows of this vector meet zero columns of R^-T.
    t = jnp.where(valid, diag * q + gamma * (mem.gram[k:, k:] @ q) - gamma * b, 0.0)
    coef = jnp.concatenate([mem.r_inv.T @ t, -gamma * q])
    return gamma * g + coef @ mem.v


def w_transpose(mem: Memory, x: jax.Array) -> jax.Array:
    """``W^T x`` (2k,), the Y block then the S block, zero for unused slots."""
    k = mem.age.shape[0]
    vx = jnp.where(_twice(valid_slots(mem)), pair_products(mem, x), 0.0)
    return jnp.concatenate([vx[k:], mem.theta * vx[:k]])


def w_times(mem: Memory, a: jax.Array) -> jax.Array:
    """``W a`` (n,) for a (2k,) laid out as ``w_transpose``'s result."""
    k = mem.age.shape[0]
    coef = jnp.concatenate([mem.theta * a[k:], a[:k]])
    return jnp.where(_twice(valid_slots(mem)), coef, 0.0) @ mem.v


def w_rows(mem: Memory, index: jax.Array) -> jax.Array:
    """Rows ``index`` of W, as an ``(len(index), 2k)`` array (zero for unused slots)."""
    k = mem.age.shape[0]
    cols = jnp.where(_twice(valid_slots(mem))[:, None], mem.v[:, index], 0.0).T
    return jnp.concatenate([cols[:, k:], mem.theta * cols[:, :k]], axis=1)


def _pieces(mem: Memory):
    """``D`` (unused slots: 1), ``L`` and ``S^T S`` in slot order, and the valid mask."""
    k = mem.age.shape[0]
    valid = valid_slots(mem)
    both = valid[:, None] & valid[None, :]
    sy = jnp.where(both, mem.gram[:k, k:], 0.0)  # sy[i, j] = s_i^T y_j
    diag = jnp.where(valid, jnp.diagonal(sy), 1.0)
    low = jnp.where(mem.age[:, None] > mem.age[None, :], sy, 0.0)  # s newer than y
    return diag, low, jnp.where(both, mem.gram[:k, :k], 0.0), valid


def middle_matrix(mem: Memory) -> jax.Array:
    """``M`` explicitly (2k x 2k, symmetric), via the Cholesky factor of
    ``T = theta S^T S + L D^{-1} L^T`` (scipy's ``formt``/``bmv``). With the Schur
    complement of ``-D``: ``M = [[-D^-1 + D^-1 L^T T^-1 L D^-1, D^-1 L^T T^-1],
    [T^-1 L D^-1, T^-1]]``. Unused slots get an identity block. Not finite if T is
    not positive definite."""
    k = mem.age.shape[0]
    diag, low, ss, valid = _pieces(mem)
    ld = safe_divide(low, diag[None, :])  # L D^{-1} (the placeholder state: diag 0)
    t = jnp.where(jnp.diag(~valid), 1.0, mem.theta * ss + ld @ low.T)
    chol = jnp.linalg.cholesky(t)
    eye = jnp.eye(k, dtype=ld.dtype)  # the memory's dtype (float32 stays float32, x64 on)
    sol = jax.scipy.linalg.cho_solve((chol, True), jnp.concatenate([eye, ld], axis=1))
    m22, m21 = sol[:, :k], sol[:, k:]
    m11 = -jnp.diag(safe_divide(1.0, diag)) + ld.T @ m21
    return jnp.block([[m11, m21.T], [m21, m22]])


def reduced_inverse_times(mem: Memory, free: jax.Array, r: jax.Array) -> jax.Array:
    """``(Z^T B Z)^{-1} r`` for r supported on the free set Z (scipy's ``subsm``).

    Sherman–Morrison–Woodbury on ``B_ZZ = theta I - W_Z M W_Z^T`` gives
    ``(1/theta) r + (1/theta^2) W_Z K^{-1} W_Z^T r`` with the indefinite
    ``K = M^{-1} - W_Z^T W_Z / theta = [[-N, E^T], [E, C]]``,
    ``N = D + Y_Z^T Y_Z / theta`` (positive definite), solved as scipy's ``formk`` does:
    Cholesky of N, then of the Schur complement ``C + E N^{-1} E^T`` (Byrd et al. 1995,
    sec. 5.1). Only meaningful on the free coordinates; the caller masks it.
    """
    k = mem.age.shape[0]
    theta = mem.theta
    diag, low, ss, valid = _pieces(mem)
    both = _twice(valid)
    gz = jnp.where(both[:, None] & both[None, :], (mem.v * free.astype(mem.v.dtype)) @ mem.v.T, 0.0)
    n_mat = jnp.diag(diag) + safe_divide(gz[k:, k:], theta)
    e = low - gz[:k, k:]
    c = jnp.where(jnp.diag(~valid), 1.0, theta * (ss - gz[:k, :k]))
    wr = w_transpose(mem, r)
    u, w = wr[:k], wr[k:]  # the Y block and the S block of W^T r
    chol_n = jnp.linalg.cholesky(n_mat)
    ninv = jax.scipy.linalg.cho_solve((chol_n, True), jnp.concatenate([e.T, u[:, None]], axis=1))
    schur = c + e @ ninv[:, :k]
    # [[-N, E^T], [E, C]] [p; q] = [u; w]:  (C + E N^-1 E^T) q = w + E N^-1 u,
    # p = N^-1 (E^T q - u).
    q = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(schur), True), w + e @ ninv[:, k])
    p = ninv[:, :k] @ q - ninv[:, k]
    return safe_divide(r + safe_divide(w_times(mem, jnp.concatenate([p, q])), theta), theta)
