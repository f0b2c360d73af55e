"""Our solves at the working tree beside the same solves at another git revision, in one
process: the A/B measurement a change to the program's size or speed needs.

    python benchmarks/ab_revision.py [--base REV] [--cases single,box,vmap,vmapbox] [--sizes 2,10,100]
                                     [--repeats 30] [--compiles 3] [--out FILE]

The base revision's ``src/jaxopt_dict`` is exported (``git archive``) into a temporary
folder as a package of another name, ``jaxopt_dict_base``, so both import side by side.
For each case (L-BFGS-B on Rosenbrock from (-1.2, 1, ...): ``single`` unbounded, ``box``
in [-2, 0.8], both at each ``--sizes`` n; ``vmap``: ``jax.vmap(minimize)`` with the
default method over 200 (plain batching), 1,000 and 10,000 (the queue) 2-D Rosenbrocks
from uniform starts in [-2, 2]^2; ``vmapbox``: 200 10-D ones in that box),
it reports, new beside base: kernels per trip of the main loop and fusions
(``program_size.Program``, our compile options), compile time (median of ``--compiles``
fresh compiles, the two alternating), steady time (median, the two timed round-robin),
and nfev (max over a batch).

Why one process: on the shared 2-core machines, the same program timed in two processes
a minute apart differed by up to 2x; round-robin in one process, HEAD against itself gave
steady ratios of 0.84-1.03 in a default run (load average 1.7) and 1.00-1.23 in two runs
with ``--repeats 10``; compile ratios of 0.67-1.64 in the default run (before compiles
alternated) and 0.84-1.00 in the others. Repeat a run, and raise ``--repeats`` and
``--compiles``, before trusting a difference under about 25%. Nothing here asserts a
timing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import program_size as P

import jaxopt_dict as new
from jaxopt_dict import _compile

HERE = pathlib.Path(__file__).resolve().parent
BASE_NAME = "jaxopt_dict_base"


def export_base(revision: str, into: str):
    """``revision``'s package, importable as ``jaxopt_dict_base``."""
    root = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=HERE, check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "archive", revision, "src/jaxopt_dict"], cwd=root, check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    package = pathlib.Path(into) / BASE_NAME
    (pathlib.Path(into) / "src" / "jaxopt_dict").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\bjaxopt_dict\b", BASE_NAME, path.read_text()))
    sys.path.insert(0, into)
    return importlib.import_module(BASE_NAME)


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def cases(kinds: list[str], sizes: list[int]):
    """``(name, make(jd) -> solve, input)`` per case."""
    out = []
    for n in sizes:
        x0 = jnp.tile(jnp.array([-1.2, 1.0]), (n + 1) // 2)[:n]
        box = (jnp.full(n, -2.0), jnp.full(n, 0.8))
        if "single" in kinds:
            out.append((f"single n={n}", lambda jd: lambda x: jd.minimize(
                rosenbrock, x, method="L-BFGS-B", options={"gtol": 1e-5}), x0))  # fmt: skip
        if "box" in kinds:
            out.append((f"box n={n}", lambda jd, box=box: lambda x: jd.minimize(
                rosenbrock, x, method="L-BFGS-B", bounds=box, options={"gtol": 1e-5}), x0))  # fmt: skip
    if "vmap" in kinds:
        for batch in (200, 1000, 10000):  # 200: plain batching; above 256, the queue
            starts = jax.random.uniform(jax.random.PRNGKey(0), (batch, 2), jnp.float64, -2, 2)
            out.append((f"vmap 2-D B={batch}", lambda jd: jax.vmap(lambda x: jd.minimize(
                rosenbrock, x, options={"gtol": 1e-5})), starts))  # fmt: skip
    if "vmapbox" in kinds:
        starts = jax.random.uniform(jax.random.PRNGKey(0), (200, 10), jnp.float64, -2, 0.8)
        out.append(("vmap box 10-D B=200", lambda jd: jax.vmap(lambda x: jd.minimize(
            rosenbrock, x, method="L-BFGS-B", bounds=(-2.0, 0.8), options={"gtol": 1e-5})),
            starts))  # fmt: skip
    return out


def measure(solves: dict, x, compiles: int = 3) -> tuple[dict, dict]:
    """Per label: compile time (median of fresh compiles, the labels alternating, as the
    steady calls do), kernel counts and nfev; and the compiled calls."""
    options = _compile.compiler_options()
    times = {label: [] for label in solves}
    compiled = {}
    for _ in range(compiles):
        for label, solve in solves.items():
            jax.clear_caches()
            start = time.perf_counter()
            compiled[label] = jax.jit(solve).lower(x).compile(compiler_options=options)
            times[label].append(time.perf_counter() - start)
    found = {
        label: {
            "compile": statistics.median(times[label]),
            "summary": P.Program(call.as_text()).summary(),
            "nfev": int(jnp.max(jax.block_until_ready(call(x)).nfev)),
        }
        for label, call in compiled.items()
    }
    return found, compiled


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--cases", default="single,box,vmap")
    parser.add_argument("--sizes", default="2,10,100")
    parser.add_argument("--repeats", type=int, default=30, help="steady calls per solver")
    parser.add_argument("--compiles", type=int, default=3, help="fresh compiles per solver")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        base = export_base(args.base, folder)
        rows = []
        for name, make, x in cases(args.cases.split(","), [int(n) for n in args.sizes.split(",")]):
            found, calls = measure({"new": make(new), "base": make(base)}, x, args.compiles)
            times = {label: [] for label in calls}
            repeats = args.repeats if x.size <= 2000 else max(5, args.repeats // 4)
            for _ in range(repeats):
                for label, call in calls.items():
                    start = time.perf_counter()
                    jax.block_until_ready(call(x))
                    times[label].append(time.perf_counter() - start)
            steady = {label: statistics.median(t) for label, t in times.items()}
            rows.append((name, found, steady))
            print(row_line(name, found, steady), flush=True)
    lines = [
        f"# A/B: working tree against {args.base}",
        "",
        (
            f"- {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, load average {os.getloadavg()[0]:.1f}, "
            f"jax {jax.__version__}; ratios are new / base (< 1: the working tree is smaller "
            "or faster)"
        ),
        "",
        (
            "| case | kernels / trip (new, base) | fusions (new, base) "
            "| compile s (new, base, ratio) | steady ms (new, base, ratio) | nfev (new, base) |"
        ),
        "|---|---|---|---|---|---|",
    ] + [row_line(*row) for row in rows]
    print("\n".join(lines))
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


def trip_cell(summary: dict) -> str:
    extra = f" +b{summary['branches']}" if summary["branches"] else ""
    extra += f" +i{summary['inner']}" if summary["inner"] else ""
    return "whole loop" if summary.get("whole_loop") else f"{summary['trip']}{extra}"


def row_line(name: str, found: dict, steady: dict) -> str:
    new_, base_ = found["new"], found["base"]
    return (
        f"| {name} | {trip_cell(new_['summary'])}, {trip_cell(base_['summary'])} "
        f"| {new_['summary']['fusions']}, {base_['summary']['fusions']} "
        f"| {new_['compile']:.2f}, {base_['compile']:.2f}, "
        f"{new_['compile'] / base_['compile']:.2f} "
        f"| {steady['new'] * 1e3:.3f}, {steady['base'] * 1e3:.3f}, "
        f"{steady['new'] / steady['base']:.2f} | {new_['nfev']}, {base_['nfev']} |"
    )


if __name__ == "__main__":
    main()
