"""``jd.least_squares`` against scipy, optimistix and jaxopt, float64, side by side in one run.

    python benchmarks/least_squares.py [--quick] [--sections zvc] [--batches 1000 10000]
                                       [--repeats 5] [--zoo-ours trf lm [gauss-newton]]

Sections:

- **(z) the zoo** (``tests/problems_lsq.py``: MGH, NIST StRD, and boxed variants): for every
  problem scipy's ``least_squares`` (``trf``; ``lm`` where m >= n and unbounded), exact
  Jacobian by ``jax.jacfwd`` (jitted, on the host), against ours with the same method:
  evaluations (``nfev``) per problem, the median ratio ours/scipy per method, and whether
  both end at the same sum of squares (``2 * cost``, relative 1e-6). On the unbounded
  problems also optimistix's ``LevenbergMarquardt`` / ``GaussNewton`` (``rtol = atol =
  1e-8``) through ``optx.least_squares``, and jaxopt's ``LevenbergMarquardt`` /
  ``GaussNewton``: the steps they report and whether they reach scipy's sum of squares.
  Every solver keeps its defaults but for the tolerances (scipy's and ours: ftol = xtol =
  gtol = 1e-8, their default; jaxopt LM: Madsen-Nielsen stop with xtol = gtol = 1e-8 and a
  Cholesky solve, which reached more minima than its default CG solve in a trial; jaxopt
  GN: tol = 1e-8 on the gradient 2-norm).
- **(v) vmapped throughput**: B fits of ``y = a * exp(-k * t) + c`` to 30 noisy points each
  (random true parameters, fixed seed), all from the same x0, for
  ``jax.jit(jax.vmap(jd.least_squares))`` with each method, ``jd.least_squares_batch``
  (default lanes), optimistix LM / GN and jaxopt LM under ``jit(vmap)``. Fits per second =
  B / median wall time (``block_until_ready``), rows timed round-robin
  (``common.time_round_robin``); a fit "reaches" the reference when its sum of squares is
  within 1e-6 (relative) of the lowest any solver found for it (scipy's trf included, on
  the first ``HOST_FITS`` fits).
- **(c) compile time** of one solve of the curve fit: trace + lower and XLA compile of
  ``jax.jit(solve).lower(t, y).compile()``, medians over fresh objective functions.

Writes ``benchmarks/results/LEAST_SQUARES.md`` and ``least_squares.json``
(``*_quick.*`` with ``--quick``). Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

# scipy calls LAPACK on tiny matrices; OpenBLAS threads fighting XLA's slow it down (run.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax

jax.config.update("jax_enable_x64", True)

import common as C
import jax.numpy as jnp
import numpy as np
import report as R

import jaxopt_dict as jd

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import problems_lsq as P  # the zoo lives with the tests

TOL = 1e-8  # ftol = xtol = gtol (scipy's default), and the peers' tolerances
REACH_RTOL = 1e-6  # "reaches" a reference sum of squares: within this, relative
ZERO_SS = 1e-14  # ... plus this much, absolute (zero-residual problems)
ZOO_MAX_STEPS = 1000  # optimistix max_steps, jaxopt maxiter on the zoo
FIT_MAX_STEPS = 256  # the same in the vmapped curve fits
N_POINTS = 30
NOISE = 0.02
HOST_FITS = 200  # scipy's trf solves this many fits of each batch, one by one
SLOW_CALL_S = 60.0  # a B = 10,000 call predicted slower than this runs at B = 3,000
FALLBACK_B = 3000

FULL = {"batches": [1000, 10000], "repeats": 5, "compile_repeats": 3, "problems": None}
QUICK = {"batches": [256], "repeats": 2, "compile_repeats": 1, "problems": 6}


def reaches(ss, ref) -> np.ndarray:
    ss, ref = np.asarray(ss, np.float64), np.asarray(ref, np.float64)
    return np.isfinite(ss) & (ss <= ref + REACH_RTOL * np.abs(ref) + ZERO_SS)


def rel_diff(a: float, b: float) -> float | None:
    """|a - b| / max(|a|, |b|); None when both are below ZERO_SS (both ~0)."""
    top = max(abs(a), abs(b))
    if not (math.isfinite(a) and math.isfinite(b)):
        return float("inf")
    return None if top < ZERO_SS else abs(a - b) / top


def agree(a: float, b: float) -> bool:
    return (
        math.isfinite(a)
        and math.isfinite(b)
        and abs(a - b) <= REACH_RTOL * max(abs(a), abs(b)) + ZERO_SS
    )


# --------------------------------------------------------------------------- (z) the zoo


class Zoo:
    """Per residual function, one jitted r and J (scipy) and one jitted peer solve each,
    shared by the problems that use it (NIST's two starts), so each compiles once."""

    def __init__(self):
        self.funs: dict = {}
        self.cache: dict = {}

    def fun(self, p):
        name = p.residuals.__name__
        key = name if name.startswith("nist_") else p.residuals
        return self.funs.setdefault(key, p.residuals)

    def cached(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


def sum_sq(fun, x) -> float:
    r = np.asarray(fun(jnp.asarray(x)), np.float64)
    return float(r @ r)


def scipy_zoo(zoo, p, method: str) -> dict:
    import scipy.optimize

    fun = zoo.fun(p)
    f, jac = zoo.cached(("scipy", fun), lambda: (jax.jit(fun), jax.jit(jax.jacfwd(fun))))
    lo, hi = p.bounds if p.bounds is not None else (-np.inf, np.inf)
    r = scipy.optimize.least_squares(
        lambda x: np.asarray(f(x)),
        p.x0,
        jac=lambda x: np.asarray(jac(x)),
        method=method,
        bounds=(lo, hi),
        ftol=TOL,
        xtol=TOL,
        gtol=TOL,
    )
    return {
        "nfev": int(r.nfev),
        "njev": int(r.njev) if r.njev is not None else None,
        "ss": 2.0 * float(r.cost),
        "status": int(r.status),
        "success": bool(r.success),
    }


def ours_zoo(zoo, p, method: str) -> dict:
    r = jd.least_squares(
        zoo.fun(p), jnp.asarray(p.x0), method=method, bounds=p.bounds, ftol=TOL, xtol=TOL, gtol=TOL
    )
    r = jax.block_until_ready(r)
    return {
        "nfev": int(r.nfev),
        "nit": int(r.nit),
        "ss": 2.0 * float(r.cost),
        "ss_recomputed": sum_sq(zoo.fun(p), r.x),
        "status": jd.Status(int(r.status)).name,
        "success": bool(r.success),
    }


def optx_run(fun_of_x, name: str, max_steps: int):
    """``solve(x0, *args) -> (x, num_steps, successful)`` with optimistix's ``name``."""
    import optimistix as optx

    solver = {"LM": optx.LevenbergMarquardt, "GN": optx.GaussNewton}[name](rtol=TOL, atol=TOL)
    fn = lambda x, args: fun_of_x(x, *args)

    def solve(x0, *args):
        sol = optx.least_squares(fn, solver, x0, args=args, max_steps=max_steps, throw=False)
        # Only arrays leave: the state holds a jaxpr that jit/vmap reject as an output.
        return sol.value, sol.stats["num_steps"], sol.result == optx.RESULTS.successful

    return solve


def jaxopt_run(fun_of_x, name: str, max_steps: int):
    """``solve(x0, *args) -> (x, iter_num, stopped before maxiter)`` with jaxopt's ``name``."""
    import jaxopt

    if name == "LM":
        solver = jaxopt.LevenbergMarquardt(
            fun_of_x,
            maxiter=max_steps,
            stop_criterion="madsen-nielsen",
            xtol=TOL,
            gtol=TOL,
            solver="cholesky",
            materialize_jac=True,
        )
    else:
        solver = jaxopt.GaussNewton(fun_of_x, maxiter=max_steps, tol=TOL)

    def solve(x0, *args):
        r = solver.run(x0, *args)
        return r.params, r.state.iter_num, r.state.iter_num < max_steps

    return solve


PEERS = {
    "optimistix LM": lambda f, s: optx_run(f, "LM", s),
    "optimistix GN": lambda f, s: optx_run(f, "GN", s),
    "jaxopt LM": lambda f, s: jaxopt_run(f, "LM", s),
    "jaxopt GN": lambda f, s: jaxopt_run(f, "GN", s),
}


def peer_zoo(zoo, p, peer: str) -> dict:
    fun = zoo.fun(p)
    solve = zoo.cached((peer, fun), lambda: jax.jit(PEERS[peer](fun, ZOO_MAX_STEPS)))
    x, steps, flag = jax.block_until_ready(solve(jnp.asarray(p.x0)))
    return {"steps": int(steps), "ss": sum_sq(fun, x), "own_ok": bool(flag)}


def timed_call(totals: dict, key: str, fn, *args) -> dict:
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    except Exception as exc:  # noqa: BLE001 (a failure is a result)
        out = {"error": C.first_line(exc)}
    totals[key] = totals.get(key, 0.0) + time.perf_counter() - t0
    return out


def bench_zoo(problems, our_methods, peers) -> tuple[list[dict], dict]:
    zoo, rows, totals = Zoo(), [], {}
    for p in problems:
        bounded = p.bounds is not None
        row = {"problem": p.name, "m": p.m, "n": p.n, "bounded": bounded, "f_min": p.f_min}
        row["f_known"] = [p.f_min, *p.f_other] if p.f_min is not None else list(p.f_other)
        methods = ["trf"] + ([] if bounded or p.m < p.n else ["lm"])
        for method in methods:
            row[f"scipy {method}"] = timed_call(
                totals, f"scipy {method}", scipy_zoo, zoo, p, method
            )
        for method in our_methods:
            if method == "trf" or not bounded:
                row[f"ours {method}"] = timed_call(
                    totals, f"ours {method}", ours_zoo, zoo, p, method
                )
        if not bounded:
            for peer in peers:
                row[peer] = timed_call(totals, peer, peer_zoo, zoo, p, peer)
        scipy_ss = [row[f"scipy {m}"].get("ss", np.inf) for m in methods]
        row["scipy_best_ss"] = float(np.nanmin(scipy_ss))
        for method in methods:
            s, o = row[f"scipy {method}"], row.get(f"ours {method}")
            if o is not None and "error" not in o and "error" not in s:
                o["nfev_ratio"] = o["nfev"] / s["nfev"]
                o["rel_diff"] = rel_diff(o["ss"], s["ss"])
                o["agree"] = agree(o["ss"], s["ss"])
        for key in [f"ours {m}" for m in our_methods] + list(peers):
            if key in row and "error" not in row[key]:
                row[key]["reaches_scipy"] = bool(reaches(row[key]["ss"], row["scipy_best_ss"]))
        rows.append(row)
        C.log(
            "zoo",
            f"{p.name:28s}",
            "  ".join(
                f"{k} {v.get('nfev', v.get('steps', 'ERR'))}"
                for k, v in row.items()
                if isinstance(v, dict)
            ),
        )
    return rows, totals


def zoo_summary(rows: list[dict], our_methods) -> list[dict]:
    out = []
    groups = [("trf", "all", None), ("trf", "unbounded", False), ("trf", "bounded", True)]
    groups += [(m, "unbounded", False) for m in our_methods if m != "trf"]
    for method, label, bounded in groups:
        sel = [
            r
            for r in rows
            if (bounded is None or r["bounded"] == bounded)
            and f"ours {method}" in r
            and "error" not in r[f"ours {method}"]
        ]
        if not sel:
            continue
        ours = [r[f"ours {method}"] for r in sel]
        has_scipy = [o for o in ours if "nfev_ratio" in o]
        ratios = np.asarray([o["nfev_ratio"] for o in has_scipy])
        known = [
            (o, r["f_known"]) for o, r in zip(ours, sel) if r["f_known"] and r["f_min"] is not None
        ]
        out.append(
            {
                "method": method,
                "set": label,
                "problems": len(sel),
                "vs_scipy": len(has_scipy),
                "median_ratio": float(np.median(ratios)) if len(ratios) else None,
                "min_ratio": float(ratios.min()) if len(ratios) else None,
                "max_ratio": float(ratios.max()) if len(ratios) else None,
                "fewer": int(np.sum(ratios < 1)),
                "same": int(np.sum(ratios == 1)),
                "more": int(np.sum(ratios > 1)),
                "agree": sum(o["agree"] for o in has_scipy),
                "success": sum(o["success"] for o in ours),
                "reach_f_min": sum(
                    bool(reaches(o["ss"], r["f_min"]))
                    for o, r in zip(ours, sel)
                    if r["f_min"] is not None
                ),
                "with_f_min": len(known),
                "ours_nfev_total": int(sum(o["nfev"] for o in ours)),
                "scipy_nfev_total": int(
                    sum(
                        r[f"scipy {method}"]["nfev"]
                        for r in sel
                        if "nfev" in r.get(f"scipy {method}", {})
                    )
                ),
            }
        )
    return out


# --------------------------------------------------------------------------- (v) curve fits


def decay(p, t, y):
    """Residuals of y = a * exp(-k * t) + c at p = (a, k, c)."""
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


X0 = np.array([1.0, 1.0, 0.0])


def curve_data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 5.0, N_POINTS)
    a = rng.uniform(0.5, 2.0, batch)
    k = rng.uniform(0.2, 2.0, batch)
    c = rng.uniform(-0.5, 0.5, batch)
    y = a[:, None] * np.exp(-k[:, None] * t) + c[:, None]
    return t, y + NOISE * rng.standard_normal(y.shape)


def fresh_decay():
    return lambda p, t, y: decay(p, t, y)


def curve_configs(
    methods_vmap=("trf", "lm", "gauss-newton"), methods_batch=("trf", "lm", "gauss-newton")
):
    """``(name, ours, make)``: ``make(fun)`` gives ``solve(t, Y) -> (x, evals, flag)`` for the
    whole batch (Y of shape (B, 30)), to be jitted."""
    x0 = jnp.asarray(X0)
    configs = []
    for m in methods_vmap:

        def make(fun, m=m):
            def one(t, y):
                r = jd.least_squares(fun, x0, args=(t, y), method=m)
                return r.x, r.nfev, r.success

            return jax.vmap(one, in_axes=(None, 0))

        configs.append((f"jaxopt_dict {m} (vmap)", True, make))
    for m in methods_batch:

        def make(fun, m=m):
            def solve(t, ys):
                x0s = jnp.broadcast_to(x0, (ys.shape[0], x0.size))
                r = jd.least_squares_batch(fun, x0s, args=(t, ys), args_axes=(None, 0), method=m)
                return r.x, r.nfev, r.success

            return solve

        configs.append((f"jaxopt_dict {m} (least_squares_batch)", True, make))
    for peer in ("optimistix LM", "optimistix GN", "jaxopt LM"):

        def make(fun, peer=peer):
            one = PEERS[peer](fun, FIT_MAX_STEPS)
            return jax.vmap(lambda t, y: one(x0, t, y), in_axes=(None, 0))

        configs.append((f"{peer} (vmap)", False, make))
    return configs


def batch_ss(t, ys, xs) -> np.ndarray:
    r = jax.jit(jax.vmap(decay, in_axes=(0, None, 0)))(jnp.asarray(xs), t, jnp.asarray(ys))
    return np.asarray(jnp.sum(r**2, axis=-1), np.float64)


def scipy_fits(t, ys, k: int) -> tuple[np.ndarray, float]:
    import scipy.optimize

    f = jax.jit(decay)
    jac = jax.jit(jax.jacfwd(decay))
    f(jnp.asarray(X0), t, ys[0]), jac(jnp.asarray(X0), t, ys[0])  # compile outside the timing
    out, t0 = [], time.perf_counter()
    for y in ys[:k]:
        r = scipy.optimize.least_squares(
            lambda p, y=y: np.asarray(f(p, t, y)),
            X0,
            jac=lambda p, y=y: np.asarray(jac(p, t, y)),
            method="trf",
            ftol=TOL,
            xtol=TOL,
            gtol=TOL,
        )
        out.append(2.0 * r.cost)
    return np.asarray(out), k / (time.perf_counter() - t0)


def bench_curve(batch: int, configs, repeats: int, host_fits: int, label_b=None) -> list[dict]:
    t, ys = curve_data(batch)
    t_j, ys_j = jnp.asarray(t), jnp.asarray(ys)
    pending = []
    for name, ours, make in configs:
        row = {"section": "throughput", "solver": name, "ours": ours, "B": batch}
        m = None
        try:
            m = C.Measurement(make(fresh_decay()), (t_j, ys_j))
            row["compile_s"] = m.compile_s
        except Exception as exc:  # noqa: BLE001 (reported)
            row["error"] = C.first_line(exc)
        C.log("compiled", f"B={batch}", name, "error" if m is None else f"{m.compile_s:.1f}s")
        pending.append((row, m))
    C.time_round_robin([m for _, m in pending], repeats)
    k = min(host_fits, batch)
    scipy_ss, scipy_rate = scipy_fits(t, ys, k)
    rows = []
    for row, m in pending:
        if m is not None:
            x, evals, flag = m.out
            row.update(times=m.times, median_s=float(np.median(m.times)))
            row["throughput"] = batch / row["median_s"]
            row["ss"] = batch_ss(t_j, ys_j, x)
            row["evals_mean"] = float(np.mean(evals))
            row["evals_max"] = int(np.max(evals))
            row["own_ok"] = float(np.mean(flag))
            row["x"], row["evals"] = np.asarray(x), np.asarray(evals)
        rows.append(row)
    # least_squares_batch against jax.vmap(least_squares) with the same method: same fits?
    by_name = {r["solver"]: r for r in rows if "x" in r}
    for r in rows:
        vmapped = by_name.get(r["solver"].replace("(least_squares_batch)", "(vmap)"))
        if "least_squares_batch" in r["solver"] and "x" in r and vmapped is not None:
            r["max_abs_dx_vs_vmap"] = float(np.max(np.abs(r["x"] - vmapped["x"])))
            r["same_nfev_as_vmap"] = bool(np.array_equal(r["evals"], vmapped["evals"]))
    for r in rows:
        r.pop("x", None), r.pop("evals", None)
    best_ss = np.min([r["ss"] for r in rows if "ss" in r], axis=0)
    best_ss[:k] = np.minimum(best_ss[:k], scipy_ss)
    for r in rows:
        if "ss" in r:
            ss = r.pop("ss")
            r["ok"] = float(np.mean(reaches(ss, best_ss)))
            r["ok_scipy"] = float(np.mean(reaches(ss[:k], scipy_ss)))
            r["nonfinite"] = int(np.sum(~np.isfinite(ss)))
        C.log(
            "throughput",
            f"B={batch}",
            r["solver"],
            r.get("error")
            or f"{r['throughput']:,.0f}/s reach {r['ok']:.1%} evals {r['evals_mean']:.1f}",
        )
    scipy_row = {
        "section": "throughput",
        "solver": f"scipy trf (host, first {k})",
        "ours": False,
        "B": batch,
        "host": True,
        "throughput": scipy_rate,
        "ok": float(np.mean(reaches(scipy_ss, best_ss[:k]))),
        "ok_scipy": 1.0,
    }
    rows.append(scipy_row)
    best_peer = R.best([r for r in rows if not r.get("host")], ours=False)
    for r in rows:
        if "throughput" in r and best_peer is not None:
            r["vs_best_peer"] = r["throughput"] / best_peer["throughput"]
            r["best_peer"] = best_peer["solver"]
    return rows


def bench_throughput(batches, repeats: int, host_fits: int) -> list[dict]:
    configs, rows, per_fit = curve_configs(), [], {}
    for batch in batches:
        now, later = [], []
        for cfg in configs:
            # A config whose predicted call exceeds SLOW_CALL_S runs at FALLBACK_B instead.
            predicted = per_fit.get(cfg[0], 0.0) * batch
            (later if predicted > SLOW_CALL_S and batch > FALLBACK_B else now).append(cfg)
        rows += bench_curve(batch, now, repeats, host_fits)
        if later:
            C.log("B", batch, "too slow for", [c[0] for c in later], "-> B", FALLBACK_B)
            extra = bench_curve(FALLBACK_B, later, repeats, host_fits)
            for r in extra:
                r["fallback_from"] = batch
            rows += extra
        for r in rows:
            if "median_s" in r:
                per_fit[r["solver"]] = r["median_s"] / r["B"]
    return rows


# --------------------------------------------------------------------------- (c) compile


def bench_compile(repeats: int) -> list[dict]:
    t, ys = curve_data(1)
    args = (jnp.asarray(t), jnp.asarray(ys[0]))
    x0 = jnp.asarray(X0)
    singles = [
        (
            f"jaxopt_dict {m}",
            lambda f, m=m: lambda t, y: jd.least_squares(f, x0, args=(t, y), method=m),
        )
        for m in ("trf", "lm", "gauss-newton")
    ]
    singles += [
        (peer, lambda f, peer=peer: lambda t, y: PEERS[peer](f, FIT_MAX_STEPS)(x0, t, y))
        for peer in ("optimistix LM", "optimistix GN", "jaxopt LM")
    ]
    rows = [
        {"section": "compile", "solver": name, "lower": [], "compile": []} for name, _ in singles
    ]
    for _ in range(repeats):  # round-robin, a fresh objective each time
        for row, (_, make) in zip(rows, singles):
            try:
                t0 = time.perf_counter()
                with C.count_compiles() as counter:
                    lowered = jax.jit(make(fresh_decay())).lower(*args)
                    t1 = time.perf_counter()
                    lowered.compile()
                row["lower"].append(t1 - t0)
                row["compile"].append(time.perf_counter() - t1)
                row["xla_compiles"] = counter.count
            except Exception as exc:  # noqa: BLE001 (reported)
                row["error"] = C.first_line(exc)
    for row in rows:
        if row["lower"]:
            row["lower_s"] = float(np.median(row["lower"]))
            row["compile_s"] = float(np.median(row["compile"]))
            row["total_s"] = float(np.median(np.add(row["lower"], row["compile"])))
        C.log("compile", row["solver"], row.get("error") or f"{row['total_s']:.2f}s")
    return rows


# --------------------------------------------------------------------------- tables


def fmt_ss(v) -> str:
    return "-" if v is None else f"{v:.6g}"


def fmt_rel(o: dict) -> str:
    if "rel_diff" not in o:
        return "-"
    rel = o["rel_diff"]
    text = "~0" if rel is None else ("inf" if math.isinf(rel) else f"{rel:.0e}")
    return text if o["agree"] else f"**{text}**"


def zoo_cell(o: dict | None, count: str = "nfev") -> str:
    if o is None:
        return "-"
    if "error" in o:
        return "error"
    mark = "" if o.get("reaches_scipy", True) else " ✗"
    return f"{o[count]}{mark}"


def zoo_lines(rows, summary, totals, our_methods, peers) -> list[str]:
    L = ["## (z) The zoo: evaluations against scipy\n"]
    L.append(
        "nfev: for scipy its own count of residual evaluations (its Jacobian evaluations, "
        "`njev`, are in the JSON: trf evaluates J only at accepted steps); for ours, "
        "evaluations of the residuals and the Jacobian together (one per trip). ratio = "
        "ours / scipy. *agree*: 2·cost of ours and scipy's same method within 1e-6 "
        "(relative; + 1e-14 absolute, so zero-residual problems agree at ~0). "
        "*reach f_min*: ours within 1e-6 of the zoo's reference sum of squares, where "
        "it has one.\n"
    )
    L.append(
        "| method | problems | median nfev ratio (min, max) | ours fewer / same / more | "
        "agree with scipy | ours success | reach f_min | nfev total ours / scipy |"
    )
    L.append("|---|---|---:|---|---:|---:|---:|---:|")
    for s in summary:
        ratio = (
            "-"
            if s["median_ratio"] is None
            else f"{s['median_ratio']:.3f} ({s['min_ratio']:.2f}, {s['max_ratio']:.2f})"
        )
        L.append(
            f"| {s['method']} | {s['set']} ({s['problems']}) | {ratio} | "
            f"{s['fewer']} / {s['same']} / {s['more']} | {s['agree']}/{s['vs_scipy']} | "
            f"{s['success']}/{s['problems']} | {s['reach_f_min']}/{s['with_f_min']} | "
            f"{s['ours_nfev_total']} / {s['scipy_nfev_total']} |"
        )
    L.append("")
    L.append(
        "Per problem (relative difference of 2·cost ours vs scipy, **bold** where it "
        "exceeds 1e-6; `~0`: both below 1e-14):\n"
    )
    head = "| problem | m | n | box | trf nfev scipy / ours (ratio) | trf Δ 2·cost |"
    sep = "|---|---:|---:|---|---:|---:|"
    if "lm" in our_methods:
        head += " lm nfev scipy / ours (ratio) | lm Δ 2·cost |"
        sep += "---:|---:|"
    head += " 2·cost (scipy trf) | ours trf status |"
    sep += "---:|---|"
    L += [head, sep]
    for r in rows:
        cells = [r["problem"], str(r["m"]), str(r["n"]), "yes" if r["bounded"] else ""]
        for method in ["trf"] + (["lm"] if "lm" in our_methods else []):
            s, o = r.get(f"scipy {method}"), r.get(f"ours {method}")
            if s is None or o is None:
                cells += ["-", "-"]
            elif "error" in s or "error" in o:
                cells += [f"error: {s.get('error') or o.get('error')}", "-"]
            else:
                cells += [f"{s['nfev']} / {o['nfev']} ({o['nfev_ratio']:.2f})", fmt_rel(o)]
        o = r.get("ours trf", {})
        cells += [fmt_ss(r["scipy trf"].get("ss")), o.get("status", o.get("error", "-"))]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")

    # Peers, unbounded problems.
    unbounded = [r for r in rows if not r["bounded"]]
    keys = [f"ours {m}" for m in our_methods] + list(peers)
    L.append("## (z) The zoo: peers, unbounded problems\n")
    L.append(
        "Evaluations or steps each library reports (ours and scipy: `nfev`; optimistix: "
        "`stats['num_steps']`, each one evaluation of the residuals and their "
        "linearisation; jaxopt: `state.iter_num`), ✗ where the sum of squares it ends at "
        f"is not within 1e-6 of the best of scipy's trf and lm. optimistix and jaxopt: "
        f"at most {ZOO_MAX_STEPS} steps.\n"
    )
    L.append(
        "| problem | m | n | 2·cost (best of scipy) | scipy trf | scipy lm | "
        + " | ".join(keys)
        + " |"
    )
    L.append("|---|---:|---:|---:|---:|---:|" + "---:|" * len(keys))
    for r in unbounded:
        cells = [r["problem"], str(r["m"]), str(r["n"]), fmt_ss(r["scipy_best_ss"])]
        for k in ("scipy trf", "scipy lm"):
            cells.append(zoo_cell(r.get(k)))
        for k in keys:
            cells.append(zoo_cell(r.get(k), "steps" if k in peers else "nfev"))
        L.append("| " + " | ".join(cells) + " |")
    reach_cells, median_cells = [], []
    for k in keys:
        got = [r[k] for r in unbounded if k in r and "error" not in r[k]]
        count = "steps" if k in peers else "nfev"
        reach_cells.append(f"{sum(o['reaches_scipy'] for o in got)}/{len(unbounded)}")
        median_cells.append(f"{np.median([o[count] for o in got]):.0f}" if got else "-")
    L.append("| **reach scipy's 2·cost** | | | | | | " + " | ".join(reach_cells) + " |")
    L.append("| **median steps / nfev** | | | | | | " + " | ".join(median_cells) + " |")
    L.append("")
    L.append(
        "Wall time over the whole zoo (almost all of it compiling: one compile per residual "
        "function and shape, NIST's two starts share one): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in totals.items())
        + ".\n"
    )
    return L


def throughput_lines(rows) -> list[str]:
    L = ["## (v) Vmapped throughput: curve fits y = a·exp(-k·t) + c\n"]
    L.append(
        f"{N_POINTS} points t in [0, 5], a ~ U(0.5, 2), k ~ U(0.2, 2), c ~ U(-0.5, 0.5), "
        f"noise N(0, {NOISE}^2), seed 0; every fit from x0 = (1, 1, 0). Ours: default "
        f"tolerances (1e-8) and max_nfev; optimistix rtol = atol = 1e-8; jaxopt LM as in "
        f"the zoo; peers at most {FIT_MAX_STEPS} steps. *reach best*: share of fits whose "
        "sum of squares is within 1e-6 of the lowest any solver found for that fit "
        f"(scipy's trf included on the first {HOST_FITS}); *reach scipy*: on those first "
        f"{HOST_FITS}, within 1e-6 of scipy's trf. *vs best peer*: fits/s over the fastest "
        "vmapped peer reaching the best cost on >= 99% of the fits (if none does, the "
        "most successful). evals: ours nfev, optimistix num_steps, jaxopt iter_num; mean "
        "(max). *µs / fit / trip* (peers' vmapped rows): median time / (B x max(evals)), "
        "the cost of one trip of the loop per fit, as a vmapped loop runs max(evals) trips "
        "on every fit (ours, vmapped or not, run the queue, which has no exact trip count, "
        "so no figure). Rows are timed "
        "round-robin after a warm-up call; a call slower than 2 s ends a row's repeats "
        "(`common.Measurement`), so slow rows have 1-2 timings. scipy (one fit at a time on the host) is given for scale only.\n"
    )
    L.append(
        "| B | solver | fits/s | vs best peer | reach best | reach scipy | own flag | "
        "evals mean (max) | µs / fit / trip | median s | compile s | repeats, spread |"
    )
    L.append("|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for r in rows:
        name = f"**{r['solver']}**" if r["ours"] else r["solver"]
        b = f"{r['B']:,}" + (f" (not {r['fallback_from']:,})" if "fallback_from" in r else "")
        if "error" in r:
            L.append(f"| {b} | {name} | ERROR {r['error']} | | | | | | | | | |")
            continue
        own = f"{r['own_ok']:.1%}" if "own_ok" in r else "-"
        evals = f"{r['evals_mean']:.1f} ({r['evals_max']})" if "evals_mean" in r else "-"
        med = f"{r['median_s']:.3f}" if "median_s" in r else "-"
        trip = "-"
        if "evals_max" in r and not r["solver"].startswith("jaxopt_dict"):
            trip = f"{1e6 * r['median_s'] / (r['B'] * r['evals_max']):.2f}"
        comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        L.append(
            f"| {b} | {name} | {r['throughput']:,.0f} | {r.get('vs_best_peer', 0):.2f}x | "
            f"{r['ok']:.1%} | {r['ok_scipy']:.1%} | {own} | {evals} | {trip} | {med} | {comp} | "
            f"{R.spread(r) if 'times' in r else '-'} |"
        )
    L.append("")
    checks = [
        f"{r['solver']} at B = {r['B']:,}: max |Δx| {r['max_abs_dx_vs_vmap']:.1e}, "
        f"nfev {'identical' if r['same_nfev_as_vmap'] else '**different**'}"
        for r in rows
        if "max_abs_dx_vs_vmap" in r
    ]
    if checks:
        L.append(
            "`least_squares_batch` against `jax.vmap(least_squares)` with the same method "
            "(a vmap of more fits than the lanes runs the same queue; "
            "`tests/test_vmap_routing.py` checks fits against their lone solves): "
            + "; ".join(checks)
            + ".\n"
        )
    return L


def compile_lines(rows, repeats: int) -> list[str]:
    L = ["## (c) Compile time of one curve-fit solve\n"]
    L.append(
        "`jax.jit(lambda t, y: solve(f, x0, t, y)).lower(t, y).compile()` on a fresh `f` "
        f"each time, medians of {repeats} (round-robin); *lower* = trace + lower to "
        "StableHLO, *compile* = XLA.\n"
    )
    L.append("| solver | trace + lower s | XLA compile s | total s | vs optimistix LM |")
    L.append("|---|---:|---:|---:|---:|")
    base = next((r for r in rows if r["solver"] == "optimistix LM" and "total_s" in r), None)
    for r in rows:
        if "error" in r:
            L.append(f"| {r['solver']} | ERROR {r['error']} | | | |")
            continue
        rel = f"{r['total_s'] / base['total_s']:.2f}x" if base else "-"
        L.append(
            f"| {r['solver']} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | "
            f"{r['total_s']:.2f} | {rel} |"
        )
    L.append("")
    return L


def write(meta, zoo, throughput, compile_rows, suffix: str) -> str:
    settings = (
        "float64. scipy's `least_squares` and ours with ftol = xtol = gtol = 1e-8 (scipy's "
        "default), default x_scale (1 for trf, 'jac' for lm, as scipy >= 1.16) and "
        "max_nfev; exact Jacobians (`jax.jacfwd`, jitted, for scipy). Peers' settings in "
        "each section. OPENBLAS_NUM_THREADS=1. Ratios are measured in the same run."
    )
    L = R.header_lines(meta, settings)
    if zoo is not None:
        L += zoo_lines(zoo["rows"], zoo["summary"], zoo["totals"], meta["zoo_ours"], meta["peers"])
    if throughput is not None:
        L += throughput_lines(throughput)
    if compile_rows is not None:
        L += compile_lines(compile_rows, meta["compile_repeats"])
    md = os.path.join(RESULTS, f"LEAST_SQUARES{suffix}.md")
    with open(md, "w") as fh:
        fh.write("\n".join(L).rstrip() + "\n")
    data = {"meta": meta, "zoo": zoo, "throughput": throughput, "compile": compile_rows}
    with open(os.path.join(RESULTS, f"least_squares{suffix}.json"), "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    return md


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few problems, B = 256")
    parser.add_argument("--sections", default="zvc", help="z: zoo, v: vmapped, c: compile")
    parser.add_argument("--batches", type=int, nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--zoo-ours", nargs="*", default=["trf", "lm"])
    parser.add_argument("--zoo-peers", nargs="*", default=list(PEERS))
    parser.add_argument(
        "--rewrite", action="store_true", help="only redraw the Markdown from the saved JSON"
    )
    args = parser.parse_args(argv)
    if args.rewrite:
        suffix = "_quick" if args.quick else ""
        with open(os.path.join(RESULTS, f"least_squares{suffix}.json")) as fh:
            saved = json.load(fh)
        for r in saved["throughput"] or []:
            r.pop("us_per_fit_trip", None)  # written by an earlier version; now derived
        md = write(saved["meta"], saved["zoo"], saved["throughput"], saved["compile"], suffix)
        C.log("rewrote", md, "from the saved JSON")
        return
    cfg = dict(QUICK if args.quick else FULL)
    if args.batches:
        cfg["batches"] = args.batches
    if args.repeats:
        cfg["repeats"] = args.repeats
    suffix = "_quick" if args.quick else ""
    t_start, load_start = time.perf_counter(), os.getloadavg()
    zoo = throughput = compile_rows = None
    if "z" in args.sections:
        problems = P.MGH_PROBLEMS + P.NIST_PROBLEMS + P.BOUNDED_PROBLEMS
        if cfg["problems"]:
            problems = problems[: cfg["problems"]] + P.BOUNDED_PROBLEMS[:1]
        rows, totals = bench_zoo(problems, args.zoo_ours, args.zoo_peers)
        zoo = {"rows": rows, "summary": zoo_summary(rows, args.zoo_ours), "totals": totals}
        for s in zoo["summary"]:
            C.log("zoo summary", s)
    if "v" in args.sections:
        throughput = bench_throughput(cfg["batches"], cfg["repeats"], HOST_FITS)
    if "c" in args.sections:
        compile_rows = bench_compile(cfg["compile_repeats"])
    saved_path = os.path.join(RESULTS, f"least_squares{suffix}.json")
    if args.sections != "zvc" and os.path.exists(saved_path):
        # A partial run keeps the sections it did not run from the saved results.
        with open(saved_path) as fh:
            saved = json.load(fh)
        zoo = saved["zoo"] if zoo is None else zoo
        throughput = saved["throughput"] if throughput is None else throughput
        compile_rows = saved["compile"] if compile_rows is None else compile_rows
    command = " ".join(["python benchmarks/least_squares.py", *(argv or sys.argv[1:])])
    meta = {
        "title": "# least_squares: jaxopt_dict against scipy, optimistix and jaxopt (CPU)",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "machine": C.machine(),
        "versions": C.versions(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t_start,
        "zoo_ours": args.zoo_ours,
        "peers": args.zoo_peers,
        "compile_repeats": cfg["compile_repeats"],
        "batches": cfg["batches"],
        "repeats": cfg["repeats"],
    }
    md = write(meta, zoo, throughput, compile_rows, suffix)
    C.log(f"wrote {md} in {meta['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
