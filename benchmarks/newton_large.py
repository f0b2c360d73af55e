"""Newton at large n: a convex problem against an indefinite one of the same size (issue 18).

Both share a dense coupling ``C = G G^T / n`` (G standard normal, so C's spectrum fills
[0, 4], Marchenko-Pastur), so their Hessians (``jax.jacobian`` twice) cost the same and the
difference is the factorization: plain Cholesky where the Hessian is positive definite, the
modified solve of ``_modified_cholesky`` where it is not (Cholesky of ``H + tau I``;
``--gmw``: the looped GMW factorization where Cholesky fails, the fallback before issue 18).

* convex: ``0.5 x^T (C + 0.1 I) x + sum(logcosh(x - c))``, c uniform in [-2, 2], x0 = 0;
* indefinite: ``sum(x^4 / 4 - x^2 / 2) + 0.025 x^T C x``, Hessian ``diag(3 x^2 - 1) +
  0.05 C``, from x0 with random signs and magnitudes uniform in
  - [0.5, 1.5] ("wells"): indefinite at x0 (negative curvature where ``|x_i| < 0.58``),
    positive definite after a few iterations, as in issue 18;
  - [0.25, 1.25] ("saddle"): many coordinates start with negative curvature, and each
    modified step only about doubles the smallest, so tens of iterations are indefinite
    (at n = 500 with GMW's modification 21 iterations, with the shifted Cholesky 7).

Float64, ``jd.minimize(..., method="Newton")`` with the line search. Each problem is solved
twice: the first wall time includes tracing and compilation, the second does not.
"indefinite iterations" counts the iterates whose Hessian (checked with NumPy's Cholesky
afterwards, untimed) is not positive definite. The direction is computed at every
evaluation, trial points of the line search included, so nfev counts modified solves. The
second start reuses the first one's compiled program (its first time compiles nothing).
``--primitives`` also times one Cholesky solve, one eigh and one Hessian at this n. Nothing
is asserted and nothing is written to disk.

    python benchmarks/newton_large.py --n 500 [--gmw] [--primitives]
    python benchmarks/newton_large.py --n 3000 --starts wells   # minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_dict as jd
from jaxopt_dict import _modified_cholesky as mc

jax.config.update("jax_enable_x64", True)

MAXITER = 200
STARTS = {"wells": (0.5, 1.5), "saddle": (0.25, 1.25)}


def gmw_fallback(hess: jax.Array, rhs: jax.Array, delta: jax.Array) -> jax.Array:
    """The solve for n > 16 before issue 18: LAPACK's Cholesky, the looped GMW where it fails."""
    chol = jnp.linalg.cholesky(hess)
    x = jax.scipy.linalg.cho_solve((chol, True), rhs)
    plain = jnp.all(jnp.isfinite(x)) & (jnp.min(jnp.diagonal(chol)) ** 2 >= delta)
    return jax.lax.cond(plain, lambda: x, lambda: mc._solve_looped(hess, rhs))


def logcosh(x: jax.Array) -> jax.Array:
    return jnp.logaddexp(x, -x) - jnp.log(2.0)


def convex(x: jax.Array, coupling: jax.Array, c: jax.Array) -> jax.Array:
    return 0.5 * x @ (coupling @ x) + 0.05 * x @ x + jnp.sum(logcosh(x - c))


def indefinite(x: jax.Array, coupling: jax.Array, c: jax.Array) -> jax.Array:
    del c
    return jnp.sum(0.25 * x**4 - 0.5 * x**2) + 0.025 * x @ (coupling @ x)


def convex_hessian(x: np.ndarray, coupling: np.ndarray, c: np.ndarray) -> np.ndarray:
    return coupling + np.diag(0.1 + 1.0 / np.cosh(x - c) ** 2)


def indefinite_hessian(x: np.ndarray, coupling: np.ndarray, c: np.ndarray) -> np.ndarray:
    return 0.05 * coupling + np.diag(3.0 * x**2 - 1.0)


def solve(fun, x0: jax.Array, args: tuple):
    options = {"maxiter": MAXITER, "trace": True}
    res = jd.minimize(fun, x0, args=args, method="Newton", options=options)
    return jax.block_until_ready(res)


def indefinite_iterations(res, hessian, args: tuple) -> int:
    """Iterates 0..nit-1 whose Hessian is not positive definite (NumPy's Cholesky fails)."""
    count = 0
    for x in np.asarray(res.trace.x)[: int(res.nit)]:
        try:
            np.linalg.cholesky(hessian(x, *args))
        except np.linalg.LinAlgError:
            count += 1
    return count


def run(name: str, fun, hessian, x0: jax.Array, args: tuple, np_args: tuple) -> list[float]:
    times = []
    for _ in range(2):
        start = time.perf_counter()
        res = solve(fun, x0, args)
        times.append(time.perf_counter() - start)
    nfev = max(int(res.nfev), 1)
    print(
        f"{name:>19}: with compile {times[0]:7.2f} s, compiled {times[1]:7.2f} s, "
        f"nit {int(res.nit):3d}, nfev {int(res.nfev):3d}, status {int(res.status)}, "
        f"|g|inf {float(jnp.max(jnp.abs(res.jac))):.1e}, "
        f"indefinite iterations {indefinite_iterations(res, hessian, np_args):3d}, "
        f"{times[1] / nfev:.3f} s per evaluation",
        flush=True,
    )
    return times


def best_of(f, *args, repeats: int = 3) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def primitives(x: jax.Array, args: tuple) -> None:
    """One Hessian of ``indefinite``, one Cholesky solve and one eigh at x (best of 3)."""
    hessian = jax.jit(jax.jacobian(jax.grad(indefinite)))
    hess = hessian(x, *args)
    cho = jax.jit(lambda h, b: jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), b))
    eigh = jax.jit(lambda h: jnp.linalg.eigh(h, symmetrize_input=False))
    print(
        f"{'primitives':>19}: Hessian {best_of(hessian, x, *args):.3f} s, "
        f"Cholesky solve {best_of(cho, hess, x):.3f} s, eigh {best_of(eigh, hess):.3f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--starts", default="wells,saddle", help="comma-separated: wells, saddle")
    parser.add_argument(
        "--gmw",
        action="store_true",
        help="where Cholesky fails, the looped GMW factorization (the fallback before issue "
        "18; 73 s a factorization at n = 3000)",
    )
    parser.add_argument("--primitives", action="store_true")
    opts = parser.parse_args()
    n = opts.n
    if opts.gmw:
        mc._solve_shifted = gmw_fallback
    rng = np.random.default_rng(opts.seed)
    g = rng.standard_normal((n, n))
    coupling = g @ g.T / n
    c = rng.uniform(-2.0, 2.0, n)
    signs = rng.choice([-1.0, 1.0], n)
    uniform = rng.uniform(0.0, 1.0, n)
    args = (jnp.asarray(coupling), jnp.asarray(c))
    print(
        f"n = {n}, fallback {'GMW' if opts.gmw else 'shifted Cholesky'}, "
        f"jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}",
        flush=True,
    )
    t_convex = run("convex", convex, convex_hessian, jnp.zeros(n), args, (coupling, c))
    for start in opts.starts.split(","):
        low, high = STARTS[start]
        x0 = jnp.asarray(signs * (low + (high - low) * uniform))
        t_indef = run(
            f"indefinite ({start})", indefinite, indefinite_hessian, x0, args, (coupling, c)
        )
        print(
            f"{'ratio to convex':>19}: with compile {t_indef[0] / t_convex[0]:.2f}, "
            f"compiled {t_indef[1] / t_convex[1]:.2f}",
            flush=True,
        )
    if opts.primitives:
        primitives(jnp.asarray(signs * STARTS["wells"][0]), args)


if __name__ == "__main__":
    main()
