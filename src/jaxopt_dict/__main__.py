"""``python -m jaxopt_dict``: solve a few real problems and print a result table.

Rows: the Physics-based Deep Learning chapter's example (GD, Newton, and PG when it is
registered) as the chapter runs it (10 fixed steps from [3, 3], float32); a Rosenbrock
function split over a dict of differently shaped arrays, with every registered method
that needs no extra options; and a vmapped batch of 1,000 bounded least-squares problems.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_dict as jd


def _physics(x):
    return jnp.stack([x[0], x[1] ** 2])


def _loss_y(y):
    return jnp.sum(y**2)


def _loss_x(x):
    return _loss_y(_physics(x))


def _rosenbrock(p):
    """Extended Rosenbrock over the concatenation of a (4,) and a (2, 3) leaf (n = 10)."""
    z = jnp.concatenate([p["head"], p["tail"].ravel()])
    return jnp.sum(100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2)


def _least_squares(x, a, b):
    return 0.5 * jnp.sum((a @ x["w"] - b) ** 2)


def _timed(solve):
    """Run ``solve`` twice: wall time of the first call (with compilation) and second."""
    start = time.perf_counter()
    res = jax.block_until_ready(solve())
    first = time.perf_counter() - start
    start = time.perf_counter()
    res = jax.block_until_ready(solve())
    return res, first, time.perf_counter() - start


FIXED_STEPS = 10  # the chapter's schedule: 10 plain update steps, no stopping test
PBDL = "PBDL y=[x0,x1^2], f32"


def _row(problem, method, res, first, second, batch=False, fixed_steps=None):
    status = np.asarray(res.status)
    if batch:
        ok = int(np.sum(np.asarray(res.success)))
        status_text = f"{ok}/{status.size} success"
        nit = f"{int(np.max(res.nit))} max"
        nfev = f"{int(np.max(res.nfev))} max"
        f = f"{float(np.max(res.fun)):.3e} max"
    else:
        status_text = jd.Status(int(status)).name
        if fixed_steps and status_text == "MAX_ITER" and int(res.nit) == fixed_steps:
            # gtol=0 and maxiter=10: stopping at maxiter is the point, not a failure.
            status_text = f"fixed {fixed_steps} steps (as the chapter)"
        nit, nfev, f = str(int(res.nit)), str(int(res.nfev)), f"{float(res.fun):.6e}"
    return (problem, method, nit, nfev, f, status_text, f"{first:.2f}", f"{second * 1e3:.1f}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxopt_dict",
        description=(
            "Solve a few real problems and print a result table: the Physics-based Deep "
            "Learning chapter's example y = [x0, x1^2] with GD, Newton and PG as the chapter "
            "runs it (float32), a Rosenbrock function split over a dict of differently "
            "shaped arrays with every method but PG (float64), and a vmapped batch of 1,000 "
            "bounded least-squares problems. Takes about 20 s on 2 CPU cores, most of it "
            "compilation."
        ),
        epilog=(
            "Columns: nit, nfev, f and status of each solve; '1st call s' is the first call's "
            "wall time (with compilation), '2nd call ms' the second's. The PBDL rows take "
            f"the chapter's {FIXED_STEPS} fixed steps (gtol=0, maxiter={FIXED_STEPS}), so "
            "they end at maxiter by design (status MAX_ITER)."
        ),
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    _parse_args(argv)
    # float64 for the accuracy rows; the PBDL rows are float32 explicitly, as in the chapter.
    jax.config.update("jax_enable_x64", True)
    rows = []
    x0 = jnp.asarray([3.0, 3.0], jnp.float32)
    fixed = {"GD": 0.01, "Newton": 1.0 / 3.0}
    for method, lr in fixed.items():
        opts: dict[str, Any] = {"learning_rate": lr, "gtol": 0.0, "maxiter": FIXED_STEPS}
        res, t1, t2 = _timed(
            functools.partial(jd.minimize, _loss_x, x0, method=method, options=opts)
        )
        label = f"{method} lr={lr:.3g}"
        rows.append(_row(PBDL, label, res, t1, t2, fixed_steps=FIXED_STEPS))
    if "pg" in [m.lower() for m in jd.method_names()]:
        opts = {
            "learning_rate": 0.3,
            "gtol": 0.0,
            "maxiter": FIXED_STEPS,
            "physics": _physics,
            "physics_inv": lambda y: jnp.stack([y[0], jnp.sqrt(y[1])]),
        }
        res, t1, t2 = _timed(lambda: jd.minimize(_loss_y, x0, method="PG", options=opts))
        rows.append(_row(PBDL, "PG lr=0.3", res, t1, t2, fixed_steps=FIXED_STEPS))

    p0 = {"head": jnp.full((4,), -1.2), "tail": jnp.ones((2, 3))}
    learning_rates = {"momentum": 1e-4, "Adam": 2e-2}
    for method in jd.method_names():
        spec_names = {s.name for s in jd.option_specs(jd.methods.resolve_method(method))}
        if "physics" in spec_names:
            continue  # PG needs a simulator; it has its own row above.
        opts: dict[str, Any] = {
            "maxiter": 20000 if method in learning_rates or method == "GD" else 15000
        }
        if method in learning_rates:
            opts["learning_rate"] = learning_rates[method]
        res, t1, t2 = _timed(
            functools.partial(jd.minimize, _rosenbrock, p0, method=method, options=opts)
        )
        rows.append(_row("Rosenbrock n=10 as a dict, f64", method, res, t1, t2))

    batch, m, n = 1000, 20, 5
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (batch, m, n))
    b = jax.random.normal(key_b, (batch, m))
    w0 = {"w": jnp.zeros(n)}
    method = "L-BFGS-B" if "l-bfgs-b" in [x.lower() for x in jd.method_names()] else "GD"
    solve = jax.jit(
        jax.vmap(
            lambda a, b: jd.minimize(
                _least_squares,
                w0,
                args=(a, b),
                method=method,
                bounds=(-0.2, 0.2),
            )
        )
    )
    res, t1, t2 = _timed(lambda: solve(a, b))
    rows.append(_row(f"vmap: {batch} bounded lstsq 20x5, f64", method, res, t1, t2, batch=True))

    header = ("problem", "method", "nit", "nfev", "f", "status", "1st call s", "2nd call ms")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("{:<" + str(w) + "}" for w in widths)
    print(f"jaxopt_dict {jd.__version__} on {jax.default_backend()} (jax {jax.__version__})")
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))


if __name__ == "__main__":
    main(sys.argv[1:])
