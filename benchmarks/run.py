"""jaxopt_dict against its peers, side by side in one run: ``python benchmarks/run.py [--quick]``.

Sections (see benchmarks/README.md):
  (a) single solves: compile time and steady-state time, separately (medians of repeats);
  (b) vmapped throughput (problems per second) on batches of logistic regressions and of
      2-D Rosenbrocks from random starts; for jaxopt_dict both ``jax.vmap(minimize)`` and
      ``minimize_batch`` with a few lane counts;
  (c) the same in float32;
  (d) recompilation: does a second call with new data / a new x0 (same shapes) compile?

Writes benchmarks/results/RESULTS.md (``RESULTS_quick.md`` with ``--quick``), results.json
and PNG plots next to it. Every solver gets the same gradient tolerance and is judged by
the same success rule (benchmarks/common.py), so a fast-but-wrong solver cannot win.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback

# scipy's L-BFGS-B calls OpenBLAS on tiny matrices; with OpenBLAS's own threads fighting
# XLA's for the cores, each call to scipy's setulb took ~5 ms instead of ~50 us here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax

jax.config.update("jax_enable_x64", True)

import common as C
import report as R

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

GTOL = {"float64": 1e-5, "float32": 1e-4}
MAXITER_SINGLE = 10000
MAXITER_BATCH = 1000

FULL = {
    "single": ["rosen2", "rosen100", "rosen1000", "logreg1000x100"],
    "single_repeats": 7,
    "batches": [1000, 10000],
    "lanes": {1000: [64, 256], 10000: [256, 1024, 4096]},
    "repeats": 7,
    "host_problems": 100,  # scipy / dict-minimize solve this many problems one by one
    "f32_batches": [10000],
    "f32_workloads": ["logreg", "rosen"],
    "methods": None,  # every registered quasi-Newton method of ours
    # Throughput sections only: Newton, whose exact Hessian is cheap for these small n
    # (the 1000-D single solves would pay 1000 Hessian-vector products per trip).
    "batch_methods": ["Newton"],
    "peers": None,  # every peer
}
QUICK = {
    "single": ["rosen100"],
    "single_repeats": 2,
    "batches": [256],
    "lanes": {256: [64]},
    "repeats": 2,
    "host_problems": 8,
    "f32_batches": [256],
    "f32_workloads": ["logreg"],
    "methods": ["L-BFGS-B"],
    "batch_methods": ["Newton"],
    # One solver per library (the full run has them all).
    "peers": [
        "jaxopt LBFGS",
        "optax lbfgs",
        "optimistix BFGS",
        "jax.scipy BFGS",
        "scipy L-BFGS-B",
        "dict-minimize L-BFGS-B",
    ],
}


def warm_up() -> None:
    """Start XLA's thread pools and JAX's caches before anything is timed (the first
    program of a process was seen to run several times slower than later ones)."""
    import jaxopt_dict as jd

    w = C.rosenbrock_single(4)
    solve = jax.jit(lambda x: jd.minimize(w.fun, x, method="GD").x)
    for _ in range(3):
        C.block(solve(w.x0))


def single_workload(key: str) -> C.Workload:
    if key.startswith("rosen"):
        return C.rosenbrock_single(int(key[len("rosen") :]))
    return C.logreg_single(1000, 100)


# --------------------------------------------------------------------------- (a)


def bench_single(solvers, keys, repeats) -> list[dict]:
    rows = []
    gtol = GTOL["float64"]
    for key in keys:
        w = single_workload(key)
        pending = []
        for s in solvers:
            if s.batched:
                continue
            row = {
                "section": "single",
                "workload": w.name,
                "n": w.size,
                "dtype": "float64",
                "solver": s.name,
                "ours": s.ours,
            }
            m = None
            try:
                solve = s.make(C.fresh(w.fun), gtol, MAXITER_SINGLE)
                m = C.Measurement(solve, (w.x0,) + w.args, host=s.host)
            except Exception as exc:  # noqa: BLE001 (a peer failing is a result, not a crash)
                row["error"] = C.first_line(exc)

            def check(x, w=w):
                return C.grad_inf_norm(w.fun, x, w.args) <= C.OK_FACTOR * gtol

            pending.append((row, m, check))
        rows += C.finish_rows(pending, repeats, "single")
    return rows


# --------------------------------------------------------------------------- (d)


def bench_recompile(methods, peers) -> list[dict]:
    """Call each library's own front door (no jit of ours around it) twice: the second
    call has new data and a new x0 of the same shapes; count XLA compilations."""
    import jaxopt_dict as jd

    problems = [C.logreg_batch(1, seed=seed) for seed in (11, 12)]
    calls = [(p.x0[0], tuple(a[0] for a in p.args)) for p in problems]
    fun = C.fresh(C.logistic_loss)
    gtol = GTOL["float64"]
    entries = []

    for m in methods:
        opts = {"gtol": gtol, "ftol": 0.0}
        entries.append(
            (
                f"jaxopt_dict.minimize {m}",
                lambda x0, args, m=m, o=opts: (
                    jd.minimize(fun, x0, args=args, method=m, options=o).x
                ),
            )
        )
        batch_calls = [
            (p.x0.repeat(64, 0), tuple(a.repeat(64, 0) for a in p.args)) for p in problems
        ]
        entries.append(
            (
                f"jaxopt_dict.minimize_batch {m} (B=64)",
                lambda x0, args, m=m, o=opts: (
                    jd.minimize_batch(fun, x0, args=args, method=m, options=o, lanes=16).x
                ),
                batch_calls,
            )
        )

    def jaxopt_entry():
        import jaxopt

        solver = jaxopt.LBFGS(fun=fun, tol=gtol, maxiter=MAXITER_BATCH)
        return lambda x0, args: solver.run(x0, *args).params

    def optx_entry():
        import optimistix as optx

        solver = optx.BFGS(rtol=C.OPTX_TOL, atol=C.OPTX_TOL)
        fn = lambda y, args: fun(y, *args)
        return lambda x0, args: optx.minimise(fn, solver, x0, args=args, throw=False).value

    def jsp_entry():
        from jax.scipy.optimize import minimize

        return lambda x0, args: minimize(fun, x0, args=args, method="BFGS", tol=gtol).x

    def optax_entry():
        solve = jax.jit(C.optax_solver().make(fun, gtol, MAXITER_BATCH))
        return lambda x0, args: solve(x0, *args).x

    for name, make, peer in [
        ("jaxopt LBFGS.run", jaxopt_entry, "jaxopt LBFGS"),
        ("optimistix.minimise BFGS", optx_entry, "optimistix BFGS"),
        ("jax.scipy.optimize.minimize BFGS", jsp_entry, "jax.scipy BFGS"),
        ("optax lbfgs in a user jit(while_loop)", optax_entry, "optax lbfgs"),
    ]:
        if peer not in peers:
            continue
        try:
            entries.append((name, make()))
        except Exception as exc:  # noqa: BLE001 (reported in the results)
            entries.append((name, exc))

    rows = []
    for entry in entries:
        name, call = entry[0], entry[1]
        use = entry[2] if len(entry) > 2 else calls
        row = {"section": "recompile", "solver": name}
        if isinstance(call, BaseException):
            row["error"] = C.first_line(call)
            rows.append(row)
            continue
        try:
            for label, (x0, args) in zip(("first", "second"), use):
                with C.count_compiles() as counter:
                    t0 = time.perf_counter()
                    C.block(call(x0, args))
                    row[f"{label}_s"] = time.perf_counter() - t0
                row[f"{label}_compiles"] = counter.count
            if name.startswith("jaxopt_dict.minimize "):
                # A new numeric option (gtol) travels as an array: no recompile either.
                x0, args = use[1]
                method = name.split()[-1]
                with C.count_compiles() as counter:
                    t0 = time.perf_counter()
                    C.block(
                        jd.minimize(
                            fun, x0, args=args, method=method, options={"gtol": 1e-6, "ftol": 0.0}
                        ).x
                    )
                    row["new_gtol_s"] = time.perf_counter() - t0
                row["new_gtol_compiles"] = counter.count
        except Exception as exc:  # noqa: BLE001 (reported in the results)
            row["error"] = C.first_line(exc)
        rows.append(row)
        C.log("recompile", name, row)
    return rows


def write_markdown(path, meta, rows, ratios):
    settings = (
        "Settings: float64 gtol = 1e-5, float32 gtol = 1e-4, the same for every solver "
        f"(see the stopping rules in `benchmarks/common.py`); maxiter {MAXITER_SINGLE} for "
        f"single solves, {MAXITER_BATCH} in batches. **ok** = share of problems whose "
        f"gradient inf-norm at the returned x, recomputed in float64, is <= "
        f"{C.OK_FACTOR:g} x gtol. Times are medians of repeats after compilation, "
        "`jax.block_until_ready` included; compile = trace + lower + XLA compile of the "
        "whole solve (for scipy-based rows: the first call minus a steady one). "
        "nit / nfev are means (nfev '-' where the library does not count them). "
        "scipy and dict-minimize solve one problem at a time on the host, so their "
        "throughput is measured on a subset of the batch (`problems timed`); "
        "OPENBLAS_NUM_THREADS=1 for them (OpenBLAS threads fighting XLA's made scipy's "
        "setulb ~100x slower on this machine)."
    )
    L = R.header_lines(meta, settings)
    L += R.targets_lines(ratios, rows, meta["fixed"])
    L.append(
        "\nFor reference, measured elsewhere on CPU at B = 10,000 (float64): jax.scipy BFGS "
        "5,811 logistic regressions/s, optimistix BFGS 44,183 2-D Rosenbrocks/s. Absolute "
        "numbers depend on the machine; the ratios above were measured in this run.\n"
    )
    rec = [r for r in rows if r["section"] == "recompile"]
    ours_rec = [r for r in rec if r["solver"].startswith("jaxopt_dict") and "error" not in r]
    if ours_rec:
        clean = all(
            r.get("second_compiles", 1) == 0 and r.get("new_gtol_compiles", 0) == 0
            for r in ours_rec
        )
        L.append(
            f"\nNo recompilation when data or x0 change (jaxopt_dict front doors): "
            f"{'**met**' if clean else '**not met**'} (section d).\n"
        )

    L += R.throughput_lines(
        rows,
        ratios,
        {
            "float64": "(b) vmapped throughput, float64",
            "float32": "(c) vmapped throughput, float32",
        },
    )
    sel = [r for r in rows if r["section"] == "single"]
    if sel:
        L.append("\n## (a) single solves, float64\n")
        L.append(
            "| workload | solver | compile s | steady ms | ok | nit / nfev | repeats, spread |"
        )
        L.append("|---|---|---:|---:|---:|---|---|")
        for r in sel:
            name = f"**{r['solver']}**" if r["ours"] else r["solver"]
            if "error" in r:
                L.append(f"| {r['workload']} | {name} | {r['error']} | | | | |")
                continue
            L.append(
                f"| {r['workload']} | {name} | {r['compile_s']:.2f} | "
                f"{r['median_s'] * 1e3:.2f} | {'yes' if r['ok'] else 'no'} | "
                f"{r['nit_mean']:.0f} / "
                f"{'-' if r['nfev_mean'] is None else int(r['nfev_mean'])} | {R.spread(r)} |"
            )

    if rec:
        L.append("\n## (d) recompilation: a second call with new data and a new x0\n")
        L.append(
            "Each library's own front door called at top level (no jit of ours around "
            "it), on a 200x10 logistic regression; XLA compilations counted with a "
            "`jax.monitoring` listener on backend compiles.\n"
        )
        L.append(
            "| front door | 1st call: compiles, s | 2nd call (new data, x0): compiles, s |"
            " new gtol: compiles, s |"
        )
        L.append("|---|---|---|---|")
        for r in rec:
            if "error" in r:
                L.append(f"| {r['solver']} | {r['error']} | | |")
                continue
            gt = (
                f"{r['new_gtol_compiles']}, {r['new_gtol_s']:.3f}"
                if "new_gtol_compiles" in r
                else ""
            )
            L.append(
                f"| {r['solver']} | {r['first_compiles']}, {r['first_s']:.2f} | "
                f"{r['second_compiles']}, {r['second_s']:.3f} | {gt} |"
            )

    L += R.error_lines(rows)
    L.append("\nPlots: " + ", ".join(f"`{p}`" for p in meta.get("plots", [])) + "\n")
    with open(path, "w") as fh:
        fh.write("\n".join(L) + "\n")


def plot_single(rows, suffix) -> list[str]:
    """Rosenbrock single solves: steady time and compile time against n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [
        r
        for r in rows
        if r["section"] == "single" and "error" not in r and r["workload"].startswith("Rosenbrock")
    ]
    if not sel:
        return []
    host = {s.name for s in C.peer_solvers() if s.host}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    for solver in dict.fromkeys(r["solver"] for r in sel):
        pts = sorted(
            (r["n"], r["median_s"], r["compile_s"], r["ok"]) for r in sel if r["solver"] == solver
        )
        ours = solver.startswith("jaxopt_dict")
        style = {"lw": 2.6 if ours else 1.2, "marker": "o", "ls": "-" if ours else "--"}
        n = [p[0] for p in pts]
        (line,) = axes[0].plot(n, [p[1] * 1e3 for p in pts], label=solver, **style)
        if solver not in host:  # their "compile" is jitting fun only
            axes[1].plot(n, [p[2] for p in pts], color=line.get_color(), **style)
        for p in pts:
            if not p[3]:
                axes[0].plot(p[0], p[1] * 1e3, "x", color="k", ms=10, mew=2)
    axes[0].set(
        ylabel="steady-state time per solve (ms)",
        title="solve time vs size (black x: not solved)",
    )
    axes[1].set(ylabel="compile time (s)", title="compile time of the jitted solve vs size")
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="n (Rosenbrock dimension)")
        ax.grid(alpha=0.3, which="both")
    fig.legend(loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = os.path.join(RESULTS, f"single_solve_time{suffix}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# --------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small B, few repeats (~2 min)")
    parser.add_argument("--sections", default="abcd", help="which of a, b, c, d to run")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redraw the PNGs and RESULTS[_quick].md from results[_quick].json",
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help="also run benchmarks/quality.py (nit/nfev vs scipy) if present",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    suffix = "_quick" if args.quick else ""
    if args.replot:
        with open(os.path.join(RESULTS, f"results{suffix}.json")) as fh:
            saved = json.load(fh)
        meta, rows = saved["meta"], saved["rows"]
        paths = R.plot_throughput(rows, RESULTS, suffix) + plot_single(rows, suffix)
        meta["plots"] = [os.path.basename(p) for p in paths]
        write_markdown(
            os.path.join(RESULTS, f"RESULTS{suffix}.md"), meta, rows, R.ratio_table(rows)
        )
        C.log("redrew", ", ".join(meta["plots"]), f"and RESULTS{suffix}.md")
        return
    os.makedirs(RESULTS, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    methods = C.our_methods()
    versions = C.versions()  # now: the source digest must match the code imported
    if cfg["methods"] is not None:
        methods = [m for m in methods if m in cfg["methods"]] or methods
    if methods == ["Newton"]:
        C.log("L-BFGS / L-BFGS-B not registered yet: Newton stands in for jaxopt_dict")
    ours = [C.jd_solver(m) for m in methods]
    throughput_methods = methods + [m for m in cfg["batch_methods"] if m not in methods]
    vmap_ours = [C.jd_solver(m) for m in throughput_methods]
    batch_ours = {
        b: [C.jd_batch_solver(m, lanes) for m in throughput_methods for lanes in cfg["lanes"][b]]
        for b in cfg["lanes"]
    }
    peers = [p for p in C.peer_solvers() if cfg["peers"] is None or p.name in cfg["peers"]]
    rows: list[dict] = []
    warm_up()

    if "a" in args.sections:
        rows += bench_single(ours + peers, cfg["single"], cfg["single_repeats"])
    for section, dtype, batches in (
        ("b", "float64", cfg["batches"]),
        ("c", "float32", cfg["f32_batches"]),
    ):
        if section not in args.sections:
            continue
        kinds = cfg["f32_workloads"] if dtype == "float32" else ["logreg", "rosen"]
        for batch in batches:
            for kind in kinds:
                make = {"logreg": C.logreg_batch, "rosen": C.rosenbrock_batch}[kind]
                solvers = vmap_ours + batch_ours.get(batch, []) + peers
                rows += C.bench_throughput(
                    solvers,
                    make(batch),
                    dtype,
                    GTOL[dtype],
                    MAXITER_BATCH,
                    cfg["repeats"],
                    cfg["host_problems"],
                )
    if "d" in args.sections:
        rows += bench_recompile(methods, [p.name for p in peers])

    ratios = R.ratio_table(rows)
    meta = {
        "title": "# Benchmark results: jaxopt_dict vs peers (CPU)",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python benchmarks/run.py"
        + (" --quick" if args.quick else "")
        + ("" if args.sections == "abcd" else f" --sections {args.sections}"),
        "machine": C.machine(),
        "versions": versions,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t_start,
        "methods": methods,
        "fixed": [
            f"jaxopt_dict {methods[-1]} (vmap)",
            f"jaxopt_dict {methods[-1]} (batch, 256 lanes)",
        ]
        + [f"jaxopt_dict {m} (batch, 256 lanes)" for m in throughput_methods[len(methods) :]],
    }
    try:
        paths = R.plot_throughput(rows, RESULTS, suffix) + plot_single(rows, suffix)
        meta["plots"] = [os.path.basename(p) for p in paths]
    except Exception:  # noqa: BLE001 (a plot must not lose the tables)
        traceback.print_exc()
        meta["plots"] = []
    md = os.path.join(RESULTS, f"RESULTS{suffix}.md")
    write_markdown(md, meta, rows, ratios)
    C.save_and_report(os.path.join(RESULTS, f"results{suffix}.json"), md, meta, rows, ratios)

    quality = os.path.join(HERE, "quality.py")
    if args.quality and os.path.exists(quality):
        C.log("running benchmarks/quality.py")
        subprocess.run([sys.executable, quality], check=False)


if __name__ == "__main__":
    main()
