"""Where a batched solve's time goes: the evaluations of ``fun`` against everything else.

    python benchmarks/batch_split.py [--workload logreg|rosen] [--batch 1000]
                                     [--lanes 256] [--methods L-BFGS Newton] [--repeats 9]

A trip of ``minimize_batch`` evaluates ``fun`` (value and gradient, and the Hessian for
Newton) on every lane, then runs the method's step, the stopping rules and the queue. This
script times, side by side in one run (alternating, medians over repeats):

- the solve: ``jax.jit(minimize_batch)`` on the whole batch;
- ``fun`` alone: the same evaluation, vmapped over ``lanes`` problems, in a ``while_loop``
  of ``ceil(sum(nfev) / lanes)`` trips, the fewest any batched solve with that many lanes
  can take to make the solve's evaluations.

Their quotient is what the solver costs on top of its evaluations: the method's step, the
driver, the queue's fetches and lanes left idle at the end. At 1.0 a solve would cost
exactly its evaluations, and its margin over a peer would be the ratio of evaluation
counts (``nfev``, which ``run.py`` prints) and of the cost of one evaluation.
"""

from __future__ import annotations

import argparse
import math
import time

import jax

jax.config.update("jax_enable_x64", True)

import common as C
import jax.numpy as jnp
import numpy as np

import jaxopt_dict as jd
from jaxopt_dict._problem import Objective
from jaxopt_dict.methods import resolve_method


def fun_alone(fun, hessian: bool, x0, args, trips: int):
    """A compiled ``while_loop`` of ``trips`` vmapped evaluations on the rows of ``x0``,
    each made exactly as the solver makes it (``Objective.evaluate``: value and gradient,
    and for Newton the Hessian as ``jax.jacobian`` of the gradient). Each trip moves x a
    little along the gradient, so nothing is hoisted out of the loop, and sums every
    output, so nothing is compiled away."""
    objective = Objective(fun)
    evaluate = jax.vmap(lambda x, a: objective.evaluate(x, a, hessian))

    def run(x0, *lane_args):
        def body(carry):
            i, x, total = carry
            ev = evaluate(x, lane_args)
            outputs = [ev.f, ev.g] + ([ev.hess] if hessian else [])
            return i + 1, x - 1e-6 * ev.g, total + sum(jnp.sum(o) for o in outputs)

        zero = jnp.zeros((), x0.dtype)
        return jax.lax.while_loop(lambda c: c[0] < trips, body, (0, x0, zero))[2]

    return jax.jit(run).lower(x0, *args).compile()


def timed(compiled, inputs) -> float:
    t0 = time.perf_counter()
    C.block(compiled(*inputs))
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["rosen", "logreg"], default="logreg")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--lanes", type=int, default=256)
    parser.add_argument("--methods", nargs="*", default=["L-BFGS", "Newton"])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    make = {"rosen": C.rosenbrock_batch, "logreg": C.logreg_batch}[args.workload]
    w = make(args.batch)
    x0 = jnp.asarray(w.x0)
    data = tuple(jnp.asarray(a) for a in w.args)
    lanes = min(args.lanes, args.batch)
    print(
        f"{w.name}, B = {args.batch:,}, {lanes} lanes, float64, gtol 1e-5, "
        f"{jax.devices()[0].device_kind}; medians of {args.repeats} alternated repeats\n"
    )
    print(
        "| method | problems/s | nfev mean | trips (fewest) | solve ms | fun alone ms "
        "| solve / fun alone |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    options = {"gtol": 1e-5, "ftol": 0.0, "maxiter": 1000}
    for method in args.methods:
        hessian = resolve_method(method).needs_hessian

        def solve(x0, *a, method=method):
            return jd.minimize_batch(w.fun, x0, args=a, method=method, options=options, lanes=lanes)

        solver = jax.jit(solve).lower(x0, *data).compile()
        nfev = np.asarray(solver(x0, *data).nfev)
        trips = math.ceil(nfev.sum() / lanes)
        lane_inputs = (x0[:lanes],) + tuple(a[:lanes] for a in data)
        alone = fun_alone(w.fun, hessian, lane_inputs[0], lane_inputs[1:], trips)
        solve_times, fun_times = [], []
        for _ in range(args.repeats):
            solve_times.append(timed(solver, (x0,) + data))
            fun_times.append(timed(alone, lane_inputs))
        t_solve, t_fun = float(np.median(solve_times)), float(np.median(fun_times))
        print(
            f"| {method} | {args.batch / t_solve:,.0f} | {nfev.mean():.2f} | {trips} "
            f"| {t_solve * 1e3:.1f} | {t_fun * 1e3:.1f} | {t_solve / t_fun:.2f} |"
        )


if __name__ == "__main__":
    main()
