"""Where a vmapped solve spends its time: cost per trip of the loop, and the loop's carry.

    python benchmarks/profile_trip.py [--batch 1000] [--workload rosen|logreg]

Under ``jax.vmap`` a solve runs ``max(nfev)`` trips of one ``while_loop`` for the whole
batch, so ``time / (max nfev * B)`` is the cost of one trip per problem. Printed per
solver: throughput, the bytes per problem carried by the largest ``while_loop`` (rewritten,
or selected between, on every trip), and ns per problem per trip; then jaxopt_dict's
L-BFGS / L-BFGS-B for several ``maxcor`` values, which shows how much of a trip is the
limited-memory bookkeeping rather than ``fun`` itself (O(maxcor * n) per problem for the
two-loop recursion that unbounded problems of at most 256 variables take, O(maxcor^2 + maxcor
* n) for the compact form of larger or bounded ones).
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import common as C
import numpy as np


def largest_while_carry(closed_jaxpr) -> tuple[int, int]:
    """(bytes of the largest while-loop carry, number of while loops) in a program."""
    largest, count = 0, 0

    def walk(jaxpr):
        nonlocal largest, count
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "while":
                count += 1
                outs = eqn.params["body_jaxpr"].jaxpr.outvars
                size = sum(int(np.prod(v.aval.shape)) * v.aval.dtype.itemsize for v in outs)
                largest = max(largest, size)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(closed_jaxpr.jaxpr)
    return largest, count


def measure(fn, args, repeats=5):
    compiled = jax.jit(fn).lower(*args).compile()
    out = C.block(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = C.block(compiled(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--workload", choices=["rosen", "logreg"], default="rosen")
    parser.add_argument("--maxcor", type=int, nargs="*", default=[1, 3, 10, 20])
    args = parser.parse_args(argv)
    batch = args.batch
    make = {"rosen": C.rosenbrock_batch, "logreg": C.logreg_batch}[args.workload]
    w = make(batch)
    inputs = (w.x0,) + w.args
    print(f"{w.name}, B = {batch:,}, float64, gtol 1e-5, {jax.devices()[0].device_kind}")
    print(f"{'solver':34s} {'problems/s':>11s} {'carry B/problem':>16s} {'loops':>5s} "
          f"{'max nfev':>8s} {'ns/problem/trip':>16s}")  # fmt: skip
    solvers = [C.jd_solver(m) for m in C.our_methods()]
    solvers += [p for p in C.peer_solvers() if not p.host and p.name != "jax.scipy BFGS"]
    for s in solvers:
        fn = jax.vmap(s.make(C.fresh(w.fun), 1e-5, 1000))
        carry, loops = largest_while_carry(jax.make_jaxpr(fn)(*inputs))
        t, out = measure(fn, inputs)
        trips = int(np.max(np.asarray(out.nfev)))
        print(f"{s.name:34s} {batch / t:11,.0f} {carry / batch:16,.0f} {loops:5d} {trips:8d} "
              f"{t / trips / batch * 1e9:16.1f}")  # fmt: skip

    import jaxopt_dict as jd

    print("\njaxopt_dict: cost per trip against maxcor (the memory grows with it)")
    for method in C.our_methods():
        for m in args.maxcor:
            opts = {"gtol": 1e-5, "ftol": 0.0, "maxiter": 1000, "maxcor": m}

            def solve(x0, *a, method=method, opts=opts):
                return jd.minimize(w.fun, x0, args=a, method=method, options=opts)

            fn = jax.vmap(solve)
            carry, _ = largest_while_carry(jax.make_jaxpr(fn)(*inputs))
            t, out = measure(fn, inputs)
            trips = int(np.max(np.asarray(out.nfev)))
            print(f"  {method:9s} maxcor={m:3d} {batch / t:11,.0f}/s  carry "
                  f"{carry / batch:7,.0f} B/problem  {trips:4d} trips  "
                  f"{t / trips / batch * 1e9:8.1f} ns/problem/trip")  # fmt: skip


if __name__ == "__main__":
    main()
