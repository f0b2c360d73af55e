"""Vmapped throughput in float32 at B = 100,000 on an accelerator (GPU); CPU with --quick.

    python benchmarks/gpu_throughput.py            # B = 100,000 (meant for a GPU)
    python benchmarks/gpu_throughput.py --quick    # B = 1,000, runs anywhere in a few minutes
    python benchmarks/gpu_throughput.py --batch 20000 --lanes 5000 20000

Workloads as in run.py (logistic regression 200 samples x 10 features per problem, and
2-D Rosenbrock from random starts), float32 end to end: x64 stays off, as on a GPU in
practice, so the success check (gradient inf-norm <= 10 x gtol, gtol = 1e-4) is computed
in float32 too. jaxopt_dict runs as ``jax.vmap(minimize)`` and as ``minimize_batch`` with
a few lane counts; the peers are vmapped (scipy-based peers are left out: they cannot use
the device). Writes benchmarks/results/GPU_RESULTS[_quick].md and a PNG of the bars.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import common as C
import jax
import report as R

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
GTOL = 1e-4
MAXITER = 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="B = 1,000, one lane count (CPU smoke run)"
    )
    parser.add_argument("--batch", type=int, default=None, help="problems per batch")
    parser.add_argument("--lanes", type=int, nargs="*", default=None, help="minimize_batch lanes")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--workloads", nargs="*", default=["logreg", "rosen"])
    args = parser.parse_args(argv)
    batch = args.batch or (1_000 if args.quick else 100_000)
    if args.lanes:
        lanes = args.lanes
    elif args.quick:
        lanes = [batch // 4]
    else:
        lanes = sorted({max(1, batch // 10), max(1, batch // 4), batch})
    repeats = args.repeats or (2 if args.quick else 3)
    suffix = "_quick" if args.quick else ""
    os.makedirs(RESULTS, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    C.log(f"devices: {jax.devices()}; B = {batch:,}; lanes {lanes}")

    methods = C.our_methods()
    versions = C.versions()  # now: the source digest must match the code imported
    solvers = [C.jd_solver(m) for m in methods]
    solvers += [C.jd_batch_solver(m, n) for m in methods for n in lanes]
    solvers += [p for p in C.peer_solvers() if not p.host]
    rows = []
    for kind in args.workloads:
        make = {"logreg": C.logreg_batch, "rosen": C.rosenbrock_batch}[kind]
        rows += C.bench_throughput(solvers, make(batch), "float32", GTOL, MAXITER, repeats, 0)

    ratios = R.ratio_table(rows)
    dev = jax.devices()[0]
    meta = {
        "title": f"# Vmapped throughput, float32, B = {batch:,} ({dev.platform}: {dev.device_kind})",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python benchmarks/gpu_throughput.py"
        + (" --quick" if args.quick else "")
        + (f" --batch {args.batch}" if args.batch else ""),
        "machine": C.machine(),
        "versions": versions,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t_start,
    }
    settings = (
        f"Settings: float32 throughout (x64 off), gtol = {GTOL:g} for every solver (stopping "
        f"rules in `benchmarks/common.py`), maxiter {MAXITER}. **ok** = share of problems "
        f"whose float32 gradient inf-norm at the returned x is <= {C.OK_FACTOR:g} x gtol. "
        "Times are medians of round-robin repeats after compilation, with "
        "`jax.block_until_ready`."
    )
    lines = R.header_lines(meta, settings)
    fixed = [f"jaxopt_dict {methods[-1]} (vmap)"]
    fixed += [f"jaxopt_dict {methods[-1]} (batch, {n} lanes)" for n in lanes]
    lines += R.targets_lines(ratios, rows, fixed)
    lines += R.throughput_lines(rows, ratios, {"float32": "Throughput, float32"})
    lines += R.error_lines(rows)
    paths = []
    try:
        paths = R.plot_throughput(rows, RESULTS, f"_gpu{suffix}")
    except Exception:  # noqa: BLE001 (a plot must not lose the tables)
        import traceback

        traceback.print_exc()
    lines.append("\nPlots: " + ", ".join(f"`{os.path.basename(p)}`" for p in paths) + "\n")
    md = os.path.join(RESULTS, f"GPU_RESULTS{suffix}.md")
    with open(md, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    C.save_and_report(os.path.join(RESULTS, f"gpu_results{suffix}.json"), md, meta, rows, ratios)


if __name__ == "__main__":
    main()
