"""How big each compiled solve is, ours beside the peers', so that a regression shows.

    python benchmarks/program_size.py [--quick] [--out benchmarks/results/PROGRAM_SIZE.md]

For each solver (every jaxopt_dict method, then optax's L-BFGS in the ``lax.while_loop`` of
its docs, optimistix LBFGS / BFGS, jaxopt LBFGS and ``jax.scipy.optimize.minimize(BFGS)``,
each wrapped as in ``common.py``, same ``gtol``), on 10-D and 1000-D Rosenbrock and a
1000 x 100 logistic regression (float64), it measures the jitted solve:

- **jaxpr eqns**: equations of ``jax.jit(solve).trace(...).jaxpr``, counted recursively:
  every equation, plus those of every sub-jaxpr in its parameters (``while`` body and
  cond, ``cond`` branches, ``scan``, ``pjit``, ``custom_jvp_call`` / ``custom_vjp_call``).
- **fusions**: ``fusion`` *instructions* in the optimized HLO
  (``jax.jit(solve).lower(...).compile().as_text()``), counted in the computations that
  run (ENTRY, ``while`` bodies / conds, ``conditional`` branches, ``call`` targets), not
  in fused computations. Each is one kernel XLA:CPU emits (and compiles with LLVM).
- **kernels per trip** of the main loop (the top-level ``while`` with the most work):
  the instructions of its body and condition computations that launch work. Every
  instruction counts except the free ones (``parameter``, ``constant``,
  ``get-tuple-element``, ``tuple``, ``bitcast``, ``after-all``, ``add-dependency``,
  ``opt-barrier``) and control flow (``while``, ``conditional``, ``call``: a ``call`` is
  counted inline). So fusions, ``copy``, ``custom-call``, unfused ``dot`` /
  ``convolution`` / ``concatenate`` / ``dynamic-update-slice``... each count one. The kernels
  of ``conditional`` branches (all branches summed; only one runs) and of loops nested
  in the body (kernels per *inner* trip) are counted apart: ``+b`` and ``+i`` in the table.
  A nested loop that XLA:CPU compiled whole (its pass for loops that access under 1 kB
  wraps it in a ``call`` tagged ``xla_cpu_small_call``: the trip runs it as one kernel)
  counts one kernel of the trip, and nothing per inner trip; a main loop compiled whole
  (jaxlib 0.12 does so for small solves) shows as ``1 (whole loop)``.
- **compile s**: trace + lower + XLA compile, wall time, median of 3 fresh compiles: each
  after ``jax.clear_caches()``, of a new function object with its own name (the module
  name is part of JAX's persistent-cache key, so no cache can serve it).
- **steady ms**: median of 5 calls of the compiled solve after a warm-up call, the rows of
  one workload timed round-robin (``common.time_round_robin``); nit / nfev for context.

The lever: our programs compiled again with
``compile(compiler_options={"xla_cpu_use_fusion_emitters": False})`` (XLA:CPU's older
elemental IR emitter instead of the fusion emitters): compile and steady-time ratios
against the default. Where kernels of a trip come from: each of our main-loop kernels is
attributed to the innermost source file in its HLO metadata (the stack frame recorded on
the instruction), the benchmark's objective and PG's physics map reported as ``fun``.

Peers that are not installed are skipped with a note (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.util
import os
import re
import statistics
import time
from typing import NamedTuple

import jax

jax.config.update("jax_enable_x64", True)

import common as C
import jax.numpy as jnp
import numpy as np
import report as R

import jaxopt_dict as jd

HERE = os.path.dirname(os.path.abspath(__file__))
GTOL = 1e-5
MAXITER = 10000  # as run.py's single solves
BOX = (-2.0, 0.8)  # lbfgsb_speed.py's box for L-BFGS-B with bounds
LEARNING_RATES = {"momentum": 1e-4, "Adam": 2e-2}  # python -m jaxopt_dict's, for Rosenbrock
LEVER = {"xla_cpu_use_fusion_emitters": False}
WORKLOADS = {
    "rosen10": lambda: C.rosenbrock_single(10),
    "rosen1000": lambda: C.rosenbrock_single(1000),
    "logreg": lambda: C.logreg_single(1000, 100),
}
PEERS = {  # solver -> the module it needs
    "optax lbfgs": ("optax", C.optax_solver),
    "optimistix LBFGS": ("optimistix", lambda: C.optimistix_solver("LBFGS")),
    "optimistix BFGS": ("optimistix", lambda: C.optimistix_solver("BFGS")),
    "jaxopt LBFGS": ("jaxopt", lambda: C.jaxopt_solver("LBFGS")),
    "jax.scipy BFGS": ("jax", C.jax_scipy_solver),
}
REFERENCE = "optax lbfgs"

# --------------------------------------------------------------------------- solvers


def our_options(method: str) -> dict:
    """gtol / maxiter for all; ``ftol=0`` where the method has it (as ``common.py``)."""
    names = {s.name for s in jd.option_specs(jd.methods.resolve_method(method))}
    opts = {k: v for k, v in C._jd_options(GTOL, MAXITER).items() if k in names}
    if method in LEARNING_RATES:
        opts["learning_rate"] = LEARNING_RATES[method]
    return opts


def our_solver(label: str, method: str, bounds=None) -> C.Solver:
    def make(fun, gtol, maxiter):
        opts = our_options(method)

        def solve(x0, *args):
            r = jd.minimize(fun, x0, args=args, method=method, bounds=bounds, options=opts)
            return C.Out(r.x, r.nit, r.nfev, r.success)

        return solve

    return C.Solver(f"jaxopt_dict {label}", make, ours=True)


def pg_solver(label: str, exact_inverse: bool) -> C.Solver:
    """PG through the simulator y = 2x: ``fun`` is L(y) = f(y / 2), so L(physics(x)) = f(x)
    (the same problem) and PG takes Newton steps without a line search."""

    def make(fun, gtol, maxiter):
        opts = {**our_options("PG"), "physics": lambda x: 2.0 * x}
        if exact_inverse:
            opts["physics_inv"] = lambda y: 0.5 * y

        def solve(x0, *args):
            loss = lambda y, *a: fun(0.5 * y, *a)
            r = jd.minimize(loss, x0, args=args, method="PG", options=opts)
            return C.Out(r.x, r.nit, r.nfev, r.success)

        return solve

    return C.Solver(f"jaxopt_dict {label}", make, ours=True)


def our_solvers() -> list[C.Solver]:
    rows = [our_solver(m, m) for m in ("GD", "momentum", "Adam", "Newton", "L-BFGS", "L-BFGS-B")]
    rows.append(our_solver("L-BFGS-B box", "L-BFGS-B", bounds=BOX))
    rows.append(pg_solver("PG y=2x", exact_inverse=True))
    rows.append(pg_solver("PG y=2x, numerical inverse", exact_inverse=False))
    return rows


def peer_solvers() -> tuple[list[C.Solver], list[str]]:
    """The installed peers, and a note for each missing one."""
    found, missing = [], []
    for name, (module, make) in PEERS.items():
        if importlib.util.find_spec(module) is None:
            missing.append(f"{name}: {module} not installed, skipped")
        else:
            found.append(make())
    return found, missing


# --------------------------------------------------------------------------- jaxpr


def sub_jaxprs(eqn):
    """The jaxprs in an equation's parameters (while/cond/scan/pjit/custom_* bodies)."""
    for param in eqn.params.values():
        for sub in param if isinstance(param, (list, tuple)) else [param]:
            inner = getattr(sub, "jaxpr", sub)
            if hasattr(inner, "eqns"):
                yield inner


def count_eqns(jaxpr) -> int:
    return sum(1 + sum(count_eqns(sub) for sub in sub_jaxprs(e)) for e in jaxpr.eqns)


# --------------------------------------------------------------------------- HLO

FREE = {
    "parameter",
    "constant",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "after-all",
    "add-dependency",
    "opt-barrier",
}
CONTROL = {"while", "conditional", "call"}
HEADER = re.compile(r"^(?:ENTRY )?%(\S+) \(.*\{$")
INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%\S+ = .*? ([a-z][a-z0-9-]*)\((.*)$")
CALLED = re.compile(
    r"(calls|condition|body|to_apply|true_computation|false_computation)=%([\w.\-]+)"
)
BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
ONE_KERNEL = 'xla_cpu_small_call="true"'  # a loop XLA:CPU hoisted into one kernel
FRAME = re.compile(r"stack_frame_id=(\d+)")


class Instr(NamedTuple):
    """One HLO instruction: its opcode, the computations it calls by role, its frame, and
    whether it is a ``call`` XLA:CPU compiles as one kernel (``xla_cpu_small_call``)."""

    opcode: str
    called: dict
    frame: int | None
    one_kernel: bool = False


def parse_hlo(text: str) -> tuple[dict, str]:
    """``({computation: [Instr]}, entry name)`` from ``compiled.as_text()``."""
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        head = HEADER.match(line)
        if head:
            current = comps.setdefault(head.group(1), [])
            entry = head.group(1) if line.startswith("ENTRY") else entry
        elif line == "}":
            current = None
        elif current is not None and (m := INSTRUCTION.match(line)):
            rest = m.group(2)
            called = collections.defaultdict(list)
            for role, name in CALLED.findall(rest):
                called[role].append(name)
            for group in BRANCHES.findall(rest):
                called["branch"] += [b.strip().lstrip("%") for b in group.split(",")]
            for role in ("true_computation", "false_computation"):
                called["branch"] += called.pop(role, [])
            frame = FRAME.search(rest)
            one_kernel = m.group(1) == "call" and ONE_KERNEL in rest
            current.append(
                Instr(m.group(1), dict(called), frame and int(frame.group(1)), one_kernel)
            )
    return comps, entry


class Program:
    """Kernel counts of one optimized HLO module (the rules in the module docstring)."""

    def __init__(self, text: str):
        self.comps, self.entry = parse_hlo(text)

    def direct(self, comp: str, whole: bool = True) -> list[Instr]:
        """The kernels of a computation run once, ``call`` targets inlined; a call XLA
        compiles whole is one kernel if ``whole``, else inlined too (to count fusions)."""
        out = []
        for ins in self.comps[comp]:
            if ins.one_kernel and whole:
                out.append(ins)
            elif ins.opcode == "call":
                out += [k for c in ins.called.get("to_apply", []) for k in self.direct(c, whole)]
            elif ins.opcode not in FREE and ins.opcode not in CONTROL:
                out.append(ins)
        return out

    def control(self, comp: str, opcode: str, whole: bool = True) -> list[Instr]:
        """The ``while`` or ``conditional`` instructions of a computation (calls inlined;
        not those inside a call XLA compiles whole, if ``whole``)."""
        out = [i for i in self.comps[comp] if i.opcode == opcode]
        for ins in self.comps[comp]:
            if ins.opcode == "call" and not (ins.one_kernel and whole):
                targets = ins.called.get("to_apply", [])
                out += [k for c in targets for k in self.control(c, opcode, whole)]
        return out

    def children(self, comp: str, whole: bool = True) -> list[str]:
        loops = self.control(comp, "while", whole)
        conds = self.control(comp, "conditional", whole)
        return [c for w in loops for c in w.called["condition"] + w.called["body"]] + [
            b for c in conds for b in c.called["branch"]
        ]

    def total(self, comp: str, opcode: str | None = None) -> int:
        """Kernels (or instructions of ``opcode``, those in calls XLA compiles whole
        included) in ``comp`` and all it runs, once each."""
        whole = opcode is None
        mine = [i for i in self.direct(comp, whole) if whole or i.opcode == opcode]
        return len(mine) + sum(self.total(c, opcode) for c in self.children(comp, whole))

    def loop_counts(self, loop: Instr) -> dict:
        parts = loop.called["body"] + loop.called["condition"]
        inner = [w for p in parts for w in self.control(p, "while")]
        conds = [c for p in parts for c in self.control(p, "conditional")]
        return {
            "trip": sum(len(self.direct(p)) for p in parts),
            "branches": sum(self.total(b) for c in conds for b in c.called["branch"]),
            "inner": sum(
                self.total(c) for w in inner for c in w.called["body"] + w.called["condition"]
            ),
            "inner_loops": len(inner),
        }

    def main_loop(self) -> Instr | None:
        loops = self.control(self.entry, "while")
        return max(loops, key=lambda w: self.total(w.called["body"][0]), default=None)

    def summary(self) -> dict:
        loop = self.main_loop()
        out = {
            "fusions": self.total(self.entry, "fusion"),
            "fused_computations": len(
                {c for comp in self.comps.values() for i in comp for c in i.called.get("calls", [])}
            ),
            "kernels_total": self.total(self.entry),
            "while_loops": len([1 for c in self.comps.values() for i in c if i.opcode == "while"]),
        }
        out.update(self.loop_counts(loop) if loop else {"trip": 0, "branches": 0, "inner": 0})
        # The main loop itself compiled whole (jaxlib 0.12 does so for our small solves):
        # the solve is one kernel, with no per-trip dispatch to count.
        out["whole_loop"] = loop is None and bool(self.control(self.entry, "while", False))
        return out


def stack_files(text: str) -> dict[int, str]:
    """Stack frame id -> file name of the frame, from the module's frame tables."""
    tables, current = {}, None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
        elif current is not None and line and line[0].isdigit():
            key, _, value = line.partition(" ")
            current[int(key)] = value
        elif not line.strip() and tables.get("StackFrames"):
            break
    files = {k: v.strip('"') for k, v in tables.get("FileNames", {}).items()}
    loc_file = {
        k: files.get(int(re.search(r"file_name_id=(\d+)", v).group(1)), "?")
        for k, v in tables.get("FileLocations", {}).items()
    }
    return {
        k: loc_file.get(int(re.search(r"file_location_id=(\d+)", v).group(1)), "?")
        for k, v in tables.get("StackFrames", {}).items()
    }


def kernel_sources(text: str, program: Program) -> dict[str, int]:
    """Our main loop's kernels (trip, branches and inner loops) by innermost source file."""
    loop = program.main_loop()
    if loop is None:
        return {}
    files = stack_files(text)
    counts = collections.Counter()

    def visit(comp):
        for ins in program.direct(comp):
            path = files.get(ins.frame)
            if path is None:
                counts["(no metadata: XLA's own)"] += 1
            else:
                ours = os.path.dirname(os.path.abspath(path)) == HERE  # fun, PG's physics
                counts["fun" if ours else os.path.basename(path)] += 1
        for child in program.children(comp):
            visit(child)

    for comp in loop.called["body"] + loop.called["condition"]:
        visit(comp)
    return dict(counts.most_common())


# --------------------------------------------------------------------------- measuring


def program_fn(solver: C.Solver, w: C.Workload, tag: str):
    """A new function (fresh objective, own name) that solves ``w`` with ``solver``."""
    solve = solver.make(C.fresh(w.fun), GTOL, MAXITER)

    def fn(x0, *args):
        return solve(x0, *args)

    slug = re.sub(r"\W+", "_", solver.name).strip("_")
    fn.__name__ = fn.__qualname__ = f"{slug}_{tag}"
    return fn


def compile_once(fn, inputs, options=None):
    """(compiled, jaxpr, seconds): trace + lower + compile after clearing JAX's caches."""
    jax.clear_caches()
    t0 = time.perf_counter()
    traced = jax.jit(fn).trace(*inputs)
    compiled = traced.lower().compile(compiler_options=options)
    return compiled, traced.jaxpr, time.perf_counter() - t0


class Timed(C.Measurement):
    """``common.Measurement`` of a program compiled here (its compile timed apart)."""

    def __init__(self, compiled, args):
        self.args, self.host, self.call, self.compile_s = args, False, compiled, 0.0
        self.times, self.done = [], False
        self.run_once()  # warm-up: page faults, thread pools
        first = self.times.pop()
        self.times = [first] if first > C.SLOW_S else []
        self.done = first > C.VERY_SLOW_S


def compiles(solver, w, inputs, n: int, options=None, tag="c"):
    """``n`` fresh compiles: (the last compiled program, its jaxpr, the wall times)."""
    seconds = []
    for i in range(n):
        compiled, jaxpr, s = compile_once(program_fn(solver, w, f"{tag}{i}"), inputs, options)
        seconds.append(s)
    return compiled, jaxpr, seconds


def too_slow(solver: C.Solver, w: C.Workload) -> bool:
    """Our Hessian methods at n = 1000: a trip factors the n x n Hessian, and Newton's
    solve of 1000-D Rosenbrock ran over 10 minutes. Their programs are still measured."""
    return solver.ours and solver.name.split()[1] in ("Newton", "PG") and w.size > 300


def measure_row(solver, w, inputs, n_compiles: int, lever: bool) -> tuple[dict, list]:
    """A row's sizes and compile times, and the programs to time (default, lever)."""
    row = {"workload": w.name, "n": w.size, "solver": solver.name, "ours": solver.ours}
    solve = not too_slow(solver, w)
    compiled, jaxpr, seconds = compiles(solver, w, inputs, n_compiles)
    text = compiled.as_text()
    program = Program(text)
    row.update(program.summary(), jaxpr_eqns=count_eqns(jaxpr.jaxpr), compile_times=seconds)
    row["compile_s"] = statistics.median(seconds)
    timed = [Timed(compiled, inputs)] if solve else []
    if solver.ours:
        row["kernel_sources"] = kernel_sources(text, program)
    if lever:
        lev, _, lev_seconds = compiles(solver, w, inputs, n_compiles, LEVER, "lever")
        row["lever"] = {"compile_times": lev_seconds, "compile_s": statistics.median(lev_seconds)}
        row["lever"].update(Program(lev.as_text()).summary())
        timed += [Timed(lev, inputs)] if solve else []
    return row, timed


def grad_check(row, w, x) -> float:
    """The gradient inf-norm at x (float64); projected onto the box for boxed rows."""
    g = np.asarray(jax.grad(w.fun)(jnp.asarray(x), *w.args))
    if "box" in row["solver"]:
        g = np.asarray(x) - np.clip(np.asarray(x) - g, *BOX)
    return float(np.max(np.abs(g)))


def finish_row(row, timed, w) -> None:
    out = timed[0].out
    row.update(
        steady_s=timed[0].timing().median,
        times=timed[0].times,
        nit=int(out.nit),
        nfev=int(out.nfev),
        own_ok=bool(out.flag),
        grad_inf=grad_check(row, w, out.x),
    )
    row["ok"] = row["grad_inf"] <= C.OK_FACTOR * GTOL
    if len(timed) > 1:
        row["lever"].update(steady_s=timed[1].timing().median, times=timed[1].times)


def bench_workload(key, solvers, repeats, n_compiles, lever_ok) -> list[dict]:
    w = WORKLOADS[key]()
    inputs = (w.x0,) + w.args
    pending = []
    for s in solvers:
        try:
            row, timed = measure_row(s, w, inputs, n_compiles, s.ours and lever_ok)
        except Exception as exc:  # noqa: BLE001 (a solver failing is a result, not a crash)
            pending.append(({"workload": w.name, "solver": s.name, "ours": s.ours,
                             "error": C.first_line(exc)}, []))  # fmt: skip
            C.log(w.name, s.name, "ERROR", pending[-1][0]["error"])
            continue
        pending.append((row, timed))
        C.log(w.name, s.name, f"eqns {row['jaxpr_eqns']} fusions {row['fusions']} "
              f"trip {row['trip']}+b{row['branches']}+i{row['inner']} "
              f"compile {row['compile_s']:.2f}s")  # fmt: skip
    C.time_round_robin([t for _, ts in pending for t in ts], repeats)
    for row, timed in pending:
        if timed:
            finish_row(row, timed, w)
    return [row for row, _ in pending]


def lever_accepted() -> str | None:
    """None if XLA takes the lever's option, else why not."""
    try:
        jax.jit(lambda x: x * 2.0).lower(np.ones(3)).compile(compiler_options=LEVER)
    except Exception as exc:  # noqa: BLE001 (reported)
        return C.first_line(exc)
    return None


def warm_up() -> None:
    """Start XLA's thread pools and caches before anything is timed (run.py's reason)."""
    w = C.rosenbrock_single(4)
    solve = jax.jit(lambda x: jd.minimize(C.fresh(w.fun), x, method="L-BFGS-B").x)
    for _ in range(3):
        C.block(solve(w.x0))


# --------------------------------------------------------------------------- report


def ratio(row, ref, key, sub=None) -> str:
    get = (lambda r: r.get(sub, {}).get(key)) if sub else (lambda r: r.get(key))
    if ref is None or "error" in row or not get(ref) or get(row) is None:
        return "-"
    return f"{get(row) / get(ref):.2f}"


def trip_cell(r) -> str:
    if r.get("whole_loop"):
        return "1 (whole loop)"
    extra = (f" +b{r['branches']}" if r["branches"] else "") + (
        f" +i{r['inner']}" if r["inner"] else ""
    )
    return f"{r['trip']}{extra}"


MAIN_HEADER = (
    "| workload | solver | jaxpr eqns | fusions | kernels / trip | kernels (program) "
    "| compile s | steady ms | us / eval | nit / nfev | ok | eqns / optax | fusions / optax "
    "| compile / optax | steady / optax |"
)


def main_cells(r, ref) -> list[str]:
    solved = "steady_s" in r
    return [
        f"{r['jaxpr_eqns']:,}",
        str(r["fusions"]),
        trip_cell(r),
        str(r["kernels_total"]),
        f"{r['compile_s']:.2f}",
        f"{r['steady_s'] * 1e3:.2f}" if solved else "not timed",
        f"{r['steady_s'] / r['nfev'] * 1e6:.1f}" if solved and r["nfev"] > 0 else "-",
        f"{r['nit']} / {r['nfev']}" if solved else "-",
        ("yes" if r["ok"] else "no") if solved else "-",
    ] + [ratio(r, ref, key) for key in ("jaxpr_eqns", "fusions", "compile_s", "steady_s")]


def main_table(rows) -> list[str]:
    L = [MAIN_HEADER, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        group = [r for r in rows if r["workload"] == workload]
        ref = next((r for r in group if r["solver"] == REFERENCE and "error" not in r), None)
        for r in group:
            name = f"**{r['solver']}**" if r["ours"] else r["solver"]
            cells = [f"ERROR {r['error']}"] + [""] * 12 if "error" in r else main_cells(r, ref)
            L.append("| " + " | ".join([workload, name] + cells) + " |")
    return L


def lever_cells(r) -> list[str]:
    lev, solved = r["lever"], "steady_s" in r
    return [
        f"{r['fusions']} / {lev['fusions']}",
        f"{r['compile_s']:.2f} / {lev['compile_s']:.2f}",
        f"{lev['compile_s'] / r['compile_s']:.2f}",
        f"{r['steady_s'] * 1e3:.2f} / {lev['steady_s'] * 1e3:.2f}" if solved else "not timed",
        f"{lev['steady_s'] / r['steady_s']:.2f}" if solved else "-",
    ]


def lever_table(rows) -> list[str]:
    rows = [r for r in rows if "lever" in r]
    L = [
        (
            "| workload | solver | fusions (default / lever) | compile s (default / lever) "
            "| compile ratio | steady ms (default / lever) | steady ratio |"
        ),
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    L += ["| " + " | ".join([r["workload"], r["solver"]] + lever_cells(r)) + " |" for r in rows]
    compile_ratios = [r["lever"]["compile_s"] / r["compile_s"] for r in rows]
    steady_ratios = [r["lever"]["steady_s"] / r["steady_s"] for r in rows if "steady_s" in r]
    if compile_ratios and steady_ratios:
        L.append(
            f"\nMedian over these rows: compile {statistics.median(compile_ratios):.2f}x, "
            f"steady {statistics.median(steady_ratios):.2f}x (lever / default)."
        )
    return L


def sources_table(rows) -> list[str]:
    L = ["| workload | solver | main-loop kernels by source file (trip + branches + inner) |",
         "|---|---|---|"]  # fmt: skip
    for r in rows:
        if r.get("kernel_sources"):
            cells = ", ".join(f"{k} {v}" for k, v in r["kernel_sources"].items())
            L.append(f"| {r['workload']} | {r['solver']} | {cells} |")
    return L


def write_markdown(path, meta, rows) -> None:
    settings = (
        f"Every solve: float64, gtol = {GTOL} (each library's closest test, as in "
        f"`benchmarks/common.py`), maxiter {MAXITER}; ours with ftol = 0 where the method has "
        f"it, momentum lr {LEARNING_RATES['momentum']}, Adam lr {LEARNING_RATES['Adam']}, "
        f"L-BFGS-B box = [{BOX[0]}, {BOX[1]}] on every coordinate, PG through y = 2x on "
        "L(y) = f(y / 2) (with `physics_inv`, or its nested L-BFGS numerical inverse). "
        f"Compile = median of {meta['compiles']} fresh compiles; steady = median of "
        f"{meta['repeats']} calls. **ok**: gradient inf-norm at the returned x (projected "
        f"for the box) <= {C.OK_FACTOR:g} x gtol. How each number is counted: the docstring "
        "of `benchmarks/program_size.py`. **kernels / trip**: body + condition of the main "
        "loop; `+bN` = N kernels in its `conditional` branches (summed over branches), "
        "`+iN` = N kernels per trip of loops nested in it; **kernels (program)**: every "
        "kernel of the program once (setup, loops, branches). **not timed**: our Hessian "
        "methods at n = 1000, whose trip factors the 1000 x 1000 Hessian (a Newton solve "
        "of 1000-D Rosenbrock ran over 10 minutes here); their programs are measured all "
        "the same. **us / eval**: steady time / nfev, the cost of one evaluation with the "
        "method's work around it (comparable where nit is not: GD and momentum, at these "
        "fixed rates, stop at maxiter). Ratios: this row / optax lbfgs on the same workload."
    )
    L = R.header_lines(meta, settings)
    L += [f"- {note}" for note in meta["notes"]] + [""]
    L += ["## Program size and time, ours beside the peers\n"] + main_table(rows)
    L += ["\n## Lever: `xla_cpu_use_fusion_emitters = False` (our programs)\n"]
    if meta["lever_rejected"]:
        L.append(f"The installed XLA rejects the option: {meta['lever_rejected']}")
    else:
        L += ["Ratios: lever / default (< 1: the lever is faster).\n"] + lever_table(rows)
    L += ["\n## Where our main loop's kernels come from\n"] + sources_table(rows)
    with open(path, "w") as fh:
        fh.write("\n".join(L) + "\n")


# --------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10-D Rosenbrock, 1 repeat")
    parser.add_argument("--out", help="Markdown path (JSON beside it, same stem)")
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    md = args.out or os.path.join(HERE, "results", f"PROGRAM_SIZE{suffix}.md")
    os.makedirs(os.path.dirname(os.path.abspath(md)), exist_ok=True)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    versions = C.versions()  # at the start: the sources imported, the commit checked out
    repeats, n_compiles = (1, 1) if args.quick else (5, 3)
    keys = ["rosen10"] if args.quick else list(WORKLOADS)

    warm_up()
    rejected = lever_accepted()
    peers, notes = peer_solvers()
    src = os.path.dirname(os.path.dirname(os.path.abspath(jd.__file__)))
    if src != os.path.join(os.path.dirname(HERE), "src"):
        notes.append(f"jaxopt_dict imported from {src}, not from this checkout's src/")
    solvers = our_solvers() + peers
    rows = [
        r for key in keys for r in bench_workload(key, solvers, repeats, n_compiles, not rejected)
    ]
    meta = {
        "title": "# Program size of each compiled solve: jaxopt_dict vs peers (CPU)",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python benchmarks/program_size.py" + (" --quick" if args.quick else ""),
        "machine": C.machine(),
        "versions": versions,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t_start,
        "repeats": repeats,
        "compiles": n_compiles,
        "lever": LEVER,
        "lever_rejected": rejected,
        "persistent_cache_dir": jax.config.jax_compilation_cache_dir,
        "notes": notes,
    }
    write_markdown(md, meta, rows)
    stem = os.path.splitext(md)[0]
    json_path = os.path.join(os.path.dirname(stem), os.path.basename(stem).lower() + ".json")
    C.save_and_report(json_path, md, meta, rows, [])


if __name__ == "__main__":
    main()
