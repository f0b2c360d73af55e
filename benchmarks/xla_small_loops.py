"""XLA:CPU's small-while-loop pass, raised: what it does for every library's single solves.

    python benchmarks/xla_small_loops.py [--quick] [--thresholds 1000000,1000000000]
                                          [--out benchmarks/results/XLA_SMALL_LOOPS.md]

XLA:CPU's runtime runs each kernel of a loop body as a thunk of its own, so a trip costs
its kernel count times a fixed overhead (``program_size.py`` counts the kernels). One pass
undoes that: a ``while`` whose cost analysis accesses fewer bytes than
``xla_cpu_small_while_loop_byte_threshold`` (1024 by default in jaxlib 0.10.2; jaxlib
0.12 compiles our unbounded solves' loops whole by itself) is compiled whole, as one
kernel. The threshold is an ``xla_backend_extra_options`` entry: ``jax.jit``'s
``compiler_options`` cannot set it (a map field), only ``XLA_FLAGS`` can, read once when
XLA starts, for every program of the process. So this script runs one child process per
threshold (and one at XLA's default), each compiling and timing the same solves as
``program_size.py`` (float64, gtol 1e-5, its workloads and wrappers; ours: L-BFGS-B, with
and without its box), and reports each row's compile and steady times under each setting,
their ratio to the default, and ours against optax's L-BFGS under the same setting. The
flag applies to every library alike, so the last ratios are the comparison that matters.
Without ``--quick`` it also times a vmapped batch of 1,000 2-D Rosenbrocks (ours with the
default method, which runs its queue at that size; optax's L-BFGS; optimistix's BFGS, the
best peer there in ``run.py``): throughput, as ``run.py`` measures it.

Compile: trace + lower + XLA compile of a fresh function (one per row and setting).
Steady: median of ``--repeats`` calls after a warm-up, the rows of one workload timed
round-robin (``common.time_round_robin``), as in ``program_size.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OPTION = "xla_cpu_small_while_loop_byte_threshold"
WORKLOADS = ("rosen2", "rosen10", "rosen100", "rosen1000", "logreg")
REFERENCE = "optax lbfgs"
BATCH = 1000


def child(keys: list[str], repeats: int, batch: bool) -> None:
    """Measure every row in this process (its XLA_FLAGS fixed) and print them as JSON."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import common as C
    import program_size as P

    from jaxopt_dict._compile import compiler_options

    workloads = {
        **{f"rosen{n}": (lambda n=n: C.rosenbrock_single(n)) for n in (2, 10, 100, 1000)},
        "logreg": lambda: C.logreg_single(1000, 100),
    }
    peers, _ = P.peer_solvers()
    solvers = [
        P.our_solver("L-BFGS-B", "L-BFGS-B"),
        P.our_solver("L-BFGS-B box", "L-BFGS-B", bounds=P.BOX),
    ] + [s for s in peers if s.name in (REFERENCE, "optimistix LBFGS", "optimistix BFGS")]
    rows = []
    for key in keys:
        w = workloads[key]()
        inputs = (w.x0, *w.args)
        pending = []
        for s in solvers:
            row = {"workload": w.name, "solver": s.name}
            try:
                # As each is compiled when called at top level (ours: with our options).
                options = compiler_options() if s.ours else None
                compiled, _, seconds = P.compiles(s, w, inputs, 1, options, tag="s")
                row["compile_s"] = seconds[0]
                pending.append((row, P.Timed(compiled, inputs)))
            except Exception as exc:  # noqa: BLE001  (a row that fails is reported)
                row["error"] = C.first_line(exc)
                pending.append((row, None))
        # The rows of a workload in rounds, each calling every row once (as everywhere in
        # benchmarks/): load on the shared machine hits all of them alike.
        C.time_round_robin([timed for _, timed in pending], repeats)
        for row, timed in pending:
            if timed is not None:
                out = timed.out
                nfev = -1 if out.nfev is None else int(out.nfev)
                row.update(steady_ms=1e3 * statistics.median(timed.times), calls=len(timed.times))
                row.update(nit=int(out.nit), nfev=nfev)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if batch:
        # The batch workload where a trip's kernel count matters most: 1,000 2-D Rosenbrocks,
        # vmapped (ours: the default method, which runs its queue at this size).
        solvers = [C.jd_solver("L-BFGS-B")] + [
            s for s in peers if s.name in (REFERENCE, "optimistix BFGS")
        ]
        work = C.rosenbrock_batch(BATCH)
        for row in C.bench_throughput(solvers, work, "float64", P.GTOL, 1000, repeats, 0):
            keep = ("workload", "solver", "B", "compile_s", "median_s", "throughput", "ok")
            print(json.dumps({k: row[k] for k in keep if k in row} | {"batch": True}), flush=True)


def run_setting(threshold: int | None, keys: list[str], repeats: int, batch: bool) -> list[dict]:
    """The rows measured in a child process with the threshold set (None: XLA's default)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if OPTION not in f]
    if threshold is not None:
        flags.append(f"--xla_backend_extra_options={OPTION}={threshold}")
    env["XLA_FLAGS"] = " ".join(flags)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--repeats", str(repeats)]
    cmd += ["--workloads", ",".join(keys)] + (["--batch"] if batch else [])
    proc = subprocess.run(cmd, env=env, cwd=HERE, capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        raise RuntimeError(f"child for threshold {threshold} failed:\n{proc.stderr[-2000:]}")
    return rows


def table(settings: list[str], by_setting: dict[str, list[dict]]) -> list[str]:
    head = ["workload", "solver"]
    head += [f"compile s ({s})" for s in settings] + [f"steady ms ({s})" for s in settings]
    head += [f"steady {s} / default" for s in settings[1:]]
    head += [f"steady / optax ({s})" for s in settings] + ["nit / nfev (per setting)"]
    L = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 3) + "---|"]
    index = {s: {(r["workload"], r["solver"]): r for r in by_setting[s]} for s in settings}
    for r0 in (r for r in by_setting[settings[0]] if not r.get("batch")):
        key = (r0["workload"], r0["solver"])
        rows = [index[s].get(key, {"error": "missing"}) for s in settings]
        refs = [index[s].get((r0["workload"], REFERENCE), {}) for s in settings]
        name = r0["solver"]
        cells = [r0["workload"], f"**{name}**" if name.startswith("jaxopt_dict") else name]
        cells += [f"{r['compile_s']:.2f}" if "compile_s" in r else "-" for r in rows]
        cells += [f"{r['steady_ms']:.3f}" if "steady_ms" in r else "-" for r in rows]
        base = rows[0].get("steady_ms")
        cells += [
            f"{r['steady_ms'] / base:.2f}" if base and "steady_ms" in r else "-" for r in rows[1:]
        ]
        cells += [
            f"{r['steady_ms'] / ref['steady_ms']:.2f}"
            if "steady_ms" in r and "steady_ms" in ref
            else "-"
            for r, ref in zip(rows, refs)
        ]
        counts = [f"{r['nit']}/{r['nfev']}" if "nit" in r else r.get("error", "-") for r in rows]
        cells.append(", ".join(counts))
        L.append("| " + " | ".join(cells) + " |")
    return L


def batch_table(settings: list[str], by_setting: dict[str, list[dict]]) -> list[str]:
    """Throughput, compile time and share solved of the vmapped batch under each setting,
    and each solver's throughput against its own at XLA's default."""
    head = ["solver"] + [f"problems/s ({s})" for s in settings]
    head += [f"compile s ({s})" for s in settings] + [f"ok ({s})" for s in settings]
    head += [f"{s} / default" for s in settings[1:]]
    L = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    rows = {s: {r["solver"]: r for r in by_setting[s] if r.get("batch")} for s in settings}
    for name, r0 in rows[settings[0]].items():
        got = [rows[s].get(name, {}) for s in settings]
        cells = [f"**{name}**" if name.startswith("jaxopt_dict") else name]
        cells += [f"{r['throughput']:,.0f}" if "throughput" in r else "-" for r in got]
        cells += [f"{r['compile_s']:.2f}" if "compile_s" in r else "-" for r in got]
        cells += [f"{r['ok']:.1%}" if "ok" in r else "-" for r in got]
        base = r0.get("throughput")
        cells += [
            f"{r['throughput'] / base:.2f}" if base and "throughput" in r else "-" for r in got[1:]
        ]
        L.append("| " + " | ".join(cells) + " |")
    return L


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-D and 10-D Rosenbrock only")
    parser.add_argument("--thresholds", default="1000000,1000000000", help="bytes, comma-separated")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", help="Markdown path (JSON beside it, same stem)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--batch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    keys = ["rosen2", "rosen10"] if args.quick else args.workloads.split(",")
    if args.child:
        child(keys, args.repeats, args.batch)
        return

    import common as C
    import report as R

    suffix = "_quick" if args.quick else ""
    md = args.out or os.path.join(HERE, "results", f"XLA_SMALL_LOOPS{suffix}.md")
    os.makedirs(os.path.dirname(os.path.abspath(md)), exist_ok=True)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    thresholds = [int(t) for t in args.thresholds.split(",") if t]
    settings = ["default"] + [f"{t:.0e}".replace("e+0", "e") for t in thresholds]
    by_setting = {}
    for name, threshold in zip(settings, [None, *thresholds]):
        C.log(f"setting {name}")
        by_setting[name] = run_setting(threshold, keys, args.repeats, not args.quick)
    meta = {
        "title": "# XLA:CPU's small-while-loop threshold: single solves, ours and the peers",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/xla_small_loops.py", *(argv or sys.argv[1:])]),
        "machine": C.machine(),
        "versions": C.versions(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t_start,
        "thresholds": thresholds,
    }
    settings_text = (
        "Each setting ran in its own process: `default` with XLA's own threshold (1024 "
        f"bytes), the others with `XLA_FLAGS=--xla_backend_extra_options={OPTION}=N`. "
        "Every solve float64, gtol = 1e-5, `program_size.py`'s workloads and wrappers (ours "
        "compiled with our compile option, as `jd.minimize` compiles its own programs); "
        "compile = one fresh compile; steady = median of the calls after a warm-up, the rows "
        "of a workload timed round-robin. What the flag is and why: the docstring of "
        "`benchmarks/xla_small_loops.py`."
    )
    L = R.header_lines(meta, settings_text)
    L += ["## Single solves\n"] + table(settings, by_setting)
    if any(r.get("batch") for r in by_setting["default"]):
        L += [f"\n## A vmapped batch: {BATCH:,} 2-D Rosenbrocks (float64, `jax.vmap`)\n"]
        L += batch_table(settings, by_setting)
    with open(md, "w") as fh:
        fh.write("\n".join(L) + "\n")
    stem = os.path.splitext(md)[0]
    json_path = os.path.join(os.path.dirname(stem), os.path.basename(stem).lower() + ".json")
    C.save_and_report(json_path, md, meta, by_setting, [])


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
