"""Compile time and steady-state speed of L-BFGS-B on 1000-dimensional Rosenbrock (CPU).

Measures, in one process:
- compile time of ``jd.minimize(method="L-BFGS-B")`` on a new objective, after JAX itself
  was warmed up by compiling another solve (wall clock and process CPU time);
- steady-state solve time against ``optax.lbfgs()`` run to ``|g|_2 <= tol`` in a
  ``lax.while_loop`` with ``optax.value_and_grad_from_state`` (the recipe in optax's docs),
  both jitted, best of ``--repeat`` runs.

Rosenbrock here is the chained form of ``scipy.optimize.rosen`` from (-1.2, 1, -1.2, ...).
With ``--bounds`` ours solves in the box [-2, 0.8] (the minimizer lies outside it), and is
also timed against the solvers that take a box: scipy's L-BFGS-B (on the host, with the
jitted value and gradient; set ``OPENBLAS_NUM_THREADS=1``) and jaxopt's ``LBFGSB`` (if
installed), same box, same tolerances. optax has no box: its unbounded time is still
printed, for reference.

Usage: python benchmarks/lbfgsb_speed.py [--n 1000] [--repeat 5] [--bounds]
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import optax

import jaxopt_dict as jd


def rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def warmup_fun(x):
    return jnp.sum((x - 0.5) ** 2) + 0.1 * jnp.sum(x**4)


def optax_solve(fun, x0, max_iter: int, tol: float):
    """optax's L-BFGS to ``|g|_2 <= tol`` in a while loop (optax docs recipe)."""
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state

    def cont(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad = optax.tree.get(state, "grad")
        return (count == 0) | ((count < max_iter) & (optax.tree.norm(grad) >= tol))

    params, state = jax.lax.while_loop(cont, step, (x0, opt.init(x0)))
    return params, state


def interleaved(fns, arg, repeat: int):
    """Best wall time of each function, runs interleaved (robust to a loaded machine)."""
    best = [float("inf")] * len(fns)
    outs = [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = jax.block_until_ready(fn(arg))
            best[i] = min(best[i], time.perf_counter() - start)
    return best, outs


def compare_boxed(res, x0, bounds, t_ours: float, repeat: int) -> None:
    """The same box for scipy's L-BFGS-B and jaxopt's LBFGSB (the peers that take one)."""
    import scipy.optimize

    value_and_grad = jax.jit(jax.value_and_grad(rosen))
    host_fun = lambda x: tuple(np.asarray(v) for v in value_and_grad(x))
    lower, upper = bounds
    x0_host = np.clip(np.asarray(x0), lower, upper)
    box = scipy.optimize.Bounds(lower, upper)
    solvers = [
        lambda x: scipy.optimize.minimize(
            host_fun, x0_host, jac=True, method="L-BFGS-B", bounds=box
        )
    ]
    names = ["scipy L-BFGS-B"]
    try:
        import jaxopt

        solver = jaxopt.LBFGSB(fun=rosen, tol=1e-5, maxiter=15000)
        box_arrays = (jnp.full_like(x0, lower), jnp.full_like(x0, upper))
        solvers.append(jax.jit(lambda x: solver.run(x, bounds=box_arrays)))
        names.append("jaxopt LBFGSB")
        jax.block_until_ready(solvers[-1](x0))
    except ImportError:
        pass
    times, outs = interleaved(solvers, x0, repeat)
    print(f"ours in the box: {t_ours * 1e3:8.2f} ms  nit {int(res.nit)}  nfev {int(res.nfev)}")
    for name, t, out in zip(names, times, outs):
        if name.startswith("scipy"):
            nit, nfev, f = out.nit, out.nfev, out.fun
        else:
            nit, nfev, f = (
                int(out.state.iter_num),
                int(out.state.num_fun_eval),
                float(rosen(out.params)),
            )
        print(
            f"{name}: {t * 1e3:8.2f} ms  nit {nit:5d}  nfev {nfev:5d}  f {f:.6e}"
            f"  time ratio ours/{name}: {t_ours / t:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--bounds", action="store_true")
    args = parser.parse_args()
    n = args.n
    x0 = jnp.asarray(np.tile([-1.2, 1.0], n // 2))
    bounds = (-2.0, 0.8) if args.bounds else None

    # Warm JAX and this package's code paths up on another objective first.
    jax.block_until_ready(jd.minimize(warmup_fun, x0, method="L-BFGS-B", bounds=bounds))
    wall, cpu = time.perf_counter(), time.process_time()
    res = jax.block_until_ready(jd.minimize(rosen, x0, method="L-BFGS-B", bounds=bounds))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    ours = jax.jit(lambda x: jd.minimize(rosen, x, method="L-BFGS-B", bounds=bounds))
    jax.block_until_ready(ours(x0))
    tol = 1e-5
    opt_run = jax.jit(lambda x: optax_solve(rosen, x, 15000, tol))
    jax.block_until_ready(opt_run(x0))
    (t_ours, t_opt), (res, (params, state)) = interleaved([ours, opt_run], x0, args.repeat)
    print(
        f"ours : {t_ours * 1e3:8.2f} ms  nit {int(res.nit):5d}  nfev {int(res.nfev):5d}  "
        f"f {float(res.fun):.3e}  |g|_inf {float(optax.tree.norm(res.jac, ord=jnp.inf)):.1e}"
        f"  {res.message}"
    )

    count = int(optax.tree.get(state, "count"))
    grad = optax.tree.get(state, "grad")
    print(
        f"optax: {t_opt * 1e3:8.2f} ms  nit {count:5d}  f {float(rosen(params)):.3e}"
        f"  |g|_2 {float(optax.tree.norm(grad)):.1e}  (lbfgs + zoom, |g|_2 <= {tol})"
    )
    print(f"time ratio ours/optax: {t_ours / t_opt:.3f}")
    if bounds is not None:
        compare_boxed(res, x0, bounds, t_ours, args.repeat)
    print(
        f"L-BFGS-B first call on a new objective (compile + one solve), n={n}: "
        f"wall {wall:.3f} s, cpu {cpu:.3f} s; compile ~ {wall - t_ours:.3f} s wall"
    )


if __name__ == "__main__":
    main()
