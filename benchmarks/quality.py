"""L-BFGS-B quality against scipy on the MGH / bounded zoo (``tests/problems_lbfgs.py``).

Prints, per problem, nit, nfev and the final f for jaxopt_dict and for
``scipy.optimize.minimize(method="L-BFGS-B")`` (same x0, defaults, exact gradients), the
status of each, and the median nfev ratio ours/scipy on the unbounded and on the bounded
set. Also checks that no evaluation falls outside the box (the bounded objectives count
their evaluations outside it on the host, ``problems_lbfgs.OUTSIDE_THE_BOX``).

Usage: python benchmarks/quality.py [--method L-BFGS-B|L-BFGS]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np

import jaxopt_dict as jd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from problems_lbfgs import ALL, OUTSIDE_THE_BOX, dispatcher


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="L-BFGS-B")
    args = parser.parse_args()
    header = (
        f"{'problem':24s} {'n':>4s} | {'nit':>5s} {'nfev':>5s} {'f':>13s} {'status':>7s} | "
        f"{'nit':>5s} {'nfev':>5s} {'f':>13s} {'ok':>3s} | {'nfev ratio':>10s}"
    )
    print(f"{'':30s} {'jaxopt_dict ' + args.method:^36s}   {'scipy L-BFGS-B':^31s}")
    print(header)
    print("-" * len(header))
    ratios = {False: [], True: []}
    failures = []
    start = time.perf_counter()
    for p in ALL:
        bounded = p.bounds is not None
        if bounded and args.method != "L-BFGS-B":
            continue
        fun, fargs = dispatcher(p)
        res = jd.minimize(fun, p.x0, args=fargs, method=args.method, bounds=p.bounds)
        ref = p.scipy_solve()
        status = jd.Status(int(res.status))
        ratio = int(res.nfev) / ref.nfev
        ratios[bounded].append(ratio)
        if not bool(res.success):
            failures.append(f"{p.name} ({status.name}; scipy success={ref.success})")
        print(
            f"{p.name:24s} {p.n:4d} | {int(res.nit):5d} {int(res.nfev):5d} "
            f"{float(res.fun):13.6e} {status.name[:7]:>7s} | {ref.nit:5d} {ref.nfev:5d} "
            f"{ref.fun:13.6e} {'yes' if ref.success else 'no':>3s} | {ratio:10.3f}"
        )
    print("-" * len(header))
    for bounded, name in ((False, "unbounded"), (True, "bounded")):
        if ratios[bounded]:
            r = np.asarray(ratios[bounded])
            print(
                f"median nfev ratio ours/scipy, {name:9s} ({len(r):2d} problems): "
                f"{np.median(r):.3f}   (min {r.min():.3f}, max {r.max():.3f})"
            )
    print(f"not successful: {', '.join(failures) if failures else 'none'}")
    jax.effects_barrier()
    outside = ", ".join(f"{name} ({count})" for name, count in OUTSIDE_THE_BOX.items())
    print(f"bounded solves that evaluated outside the box: {outside or 'none'}")
    print(f"total time (including compilation): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
