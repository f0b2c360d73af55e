"""Shared pieces of the benchmarks: workloads, one adapter per solver, timing, compile counts.

Every solver is wrapped to the same shape, ``solve(x0, *args) -> Out(x, nit, nfev, flag)``
(pure JAX for the JAX solvers, so it can be ``jit``-ed and ``vmap``-ed the same way for
all), and judged by the same rule: a run succeeds when the gradient inf-norm at the point
it returns, recomputed here in float64, is at most ``OK_FACTOR * gtol``. The solver's own
success flag is reported too but not trusted: stopping rules differ between libraries.

Stopping rules, made as equal as the libraries allow (``gtol`` the same number for all):

- jaxopt_dict L-BFGS / L-BFGS-B: ``gtol`` on the (projected) gradient inf-norm; ``ftol=0``
  (no relative-reduction stop), so only the gradient stops it (or maxiter).
- jaxopt LBFGS / LBFGSB: ``tol=gtol`` on the gradient 2-norm (slightly stricter).
- optax L-BFGS: our ``lax.while_loop`` stops when the gradient inf-norm <= gtol.
- optimistix BFGS / LBFGS: no gradient test exists (a Cauchy test on steps in x and f);
  ``rtol = atol = OPTX_TOL`` picked so that it reaches the same success rate.
- jax.scipy BFGS: ``gtol`` on the gradient inf-norm (its ``tol``).
- scipy L-BFGS-B (directly and through dict-minimize): ``gtol`` on the projected gradient
  inf-norm, ``ftol=0``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

OK_FACTOR = 10.0  # success: ||grad f(x)||_inf <= OK_FACTOR * gtol, recomputed in float64
OPTX_TOL = 1e-7  # optimistix's Cauchy rtol = atol (it has no gradient-norm test)
LOGREG_L2 = 1e-2  # ridge term of the logistic regressions (keeps them strongly convex)


# --------------------------------------------------------------------------- workloads


def rosenbrock(x, *args):
    """Chained Rosenbrock, minimum 0 at all-ones."""
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def logistic_loss(w, a, y):
    """Mean logistic loss of the labels ``y`` (+-1) plus a ridge term."""
    margins = y * (a @ w)
    return jnp.mean(jax.nn.softplus(-margins)) + 0.5 * LOGREG_L2 * jnp.dot(w, w)


@dataclasses.dataclass
class Workload:
    """One problem (``x0`` of shape (n,)) or a batch (``x0`` of shape (B, n), every leaf of
    ``args`` with a leading B)."""

    name: str
    fun: Callable[..., Any]
    x0: np.ndarray
    args: tuple

    def astype(self, dtype) -> Workload:
        cast = lambda v: np.asarray(v, dtype)
        return Workload(self.name, self.fun, cast(self.x0), jax.tree.map(cast, self.args))

    @property
    def size(self) -> int:
        return int(self.x0.shape[0])


def rosenbrock_single(n: int) -> Workload:
    return Workload(f"Rosenbrock n={n}", rosenbrock, np.tile([-1.2, 1.0], n // 2 + 1)[:n], ())


def logreg_data(rng, batch: tuple, samples: int, features: int):
    a = rng.standard_normal(batch + (samples, features))
    w_true = rng.standard_normal(batch + (features,))
    logits = np.einsum("...sf,...f->...s", a, w_true)
    y = np.where(rng.random(batch + (samples,)) < 1.0 / (1.0 + np.exp(-logits)), 1.0, -1.0)
    return a, y


def logreg_single(samples: int = 1000, features: int = 100, seed: int = 0) -> Workload:
    a, y = logreg_data(np.random.default_rng(seed), (), samples, features)
    return Workload(f"logreg {samples}x{features}", logistic_loss, np.zeros(features), (a, y))


def rosenbrock_batch(batch: int, seed: int = 0) -> Workload:
    x0 = np.random.default_rng(seed).uniform(-2.0, 2.0, (batch, 2))
    return Workload("Rosenbrock 2-D", rosenbrock, x0, ())


def logreg_batch(batch: int, seed: int = 0, samples: int = 200, features: int = 10) -> Workload:
    rng = np.random.default_rng(seed)
    a, y = logreg_data(rng, (batch,), samples, features)
    x0 = 0.1 * rng.standard_normal((batch, features))
    return Workload(f"logreg {samples}x{features}", logistic_loss, x0, (a, y))


def fresh(fun):
    """A new function object with the same behaviour, so no trace cache is shared between
    measurements (JAX caches traces by function identity)."""
    return lambda x, *args: fun(x, *args)


def grad_inf_norm(fun, x, args) -> np.ndarray:
    """``||grad f(x)||_inf`` for a batch (x of shape (B, n)) or one problem, in float64
    when ``jax_enable_x64`` is on (run.py), else in float32 (gpu_throughput.py)."""
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    batched = np.ndim(x) == 2
    x, args = jax.tree.map(lambda v: jnp.asarray(np.asarray(v, dtype)), (x, args))
    one = lambda x, *a: jnp.max(jnp.abs(jax.grad(fun)(x, *a)))
    f = jax.vmap(one) if batched else one
    return np.asarray(jax.jit(f)(x, *args))


# --------------------------------------------------------------------------- solvers


class Out(NamedTuple):
    x: Any
    nit: Any
    nfev: Any  # -1 where the library does not count them
    flag: Any  # the solver's own success flag


@dataclasses.dataclass(frozen=True)
class Solver:
    """``make(fun, gtol, maxiter) -> solve(x0, *args) -> Out``; ``host`` solvers run on the
    host (scipy) and cannot be jitted or vmapped; ``batched`` ones take the whole batch."""

    name: str
    make: Callable[..., Callable[..., Out]]
    ours: bool = False
    host: bool = False
    batched: bool = False
    lanes: int | None = None
    f32: bool = True  # runs in float32 (scipy works in float64 only)


def _jd_options(gtol, maxiter):
    return {"gtol": gtol, "ftol": 0.0, "maxiter": maxiter}


def jd_solver(method: str) -> Solver:
    import jaxopt_dict as jd

    def make(fun, gtol, maxiter):
        def solve(x0, *args):
            r = jd.minimize(fun, x0, args=args, method=method, options=_jd_options(gtol, maxiter))
            return Out(r.x, r.nit, r.nfev, r.success)

        return solve

    return Solver(f"jaxopt_dict {method}", make, ours=True)


def jd_batch_solver(method: str, lanes: int) -> Solver:
    import jaxopt_dict as jd

    def make(fun, gtol, maxiter):
        def solve(x0, *args):
            r = jd.minimize_batch(
                fun, x0, args=args, method=method, options=_jd_options(gtol, maxiter), lanes=lanes
            )
            return Out(r.x, r.nit, r.nfev, r.success)

        return solve

    return Solver(
        f"jaxopt_dict {method} (batch, {lanes} lanes)", make, ours=True, batched=True, lanes=lanes
    )


def jaxopt_solver(name: str) -> Solver:
    def make(fun, gtol, maxiter):
        import jaxopt

        if name == "LBFGS":
            solver = jaxopt.LBFGS(fun=fun, tol=gtol, maxiter=maxiter)

            def solve(x0, *args):
                r = solver.run(x0, *args)
                return Out(r.params, r.state.iter_num, r.state.num_fun_eval, r.state.error <= gtol)

        else:
            solver = jaxopt.LBFGSB(fun=fun, tol=gtol, maxiter=maxiter)

            def solve(x0, *args):
                inf = jnp.full_like(x0, jnp.inf)
                r = solver.run(x0, (-inf, inf), *args)
                return Out(r.params, r.state.iter_num, r.state.num_fun_eval, r.state.error <= gtol)

        return solve

    return Solver(f"jaxopt {name}", make)


def optax_solver() -> Solver:
    """``optax.lbfgs()`` (zoom line search) in the ``lax.while_loop`` of optax's docs, with
    ``value_and_grad_from_state`` and a gradient inf-norm stop."""

    def make(fun, gtol, maxiter):
        import optax

        opt = optax.lbfgs()

        def solve(x0, *args):
            f = lambda x: fun(x, *args)
            value_and_grad = optax.value_and_grad_from_state(f)

            def step(carry):
                x, state, nfev = carry
                value, grad = value_and_grad(x, state=state)
                updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
                nfev = nfev + optax.tree.get(state, "num_linesearch_steps").astype(jnp.int32)
                return optax.apply_updates(x, updates), state, nfev

            def cond(carry):
                _, state, _ = carry
                count = optax.tree.get(state, "count")
                err = optax.tree.norm(optax.tree.get(state, "grad"), ord=jnp.inf)
                return (count == 0) | ((count < maxiter) & (err > gtol))

            x, state, nfev = jax.lax.while_loop(
                cond, step, (x0, opt.init(x0), jnp.asarray(1, jnp.int32))
            )
            err = optax.tree.norm(optax.tree.get(state, "grad"), ord=jnp.inf)
            return Out(x, optax.tree.get(state, "count"), nfev, err <= gtol)

        return solve

    return Solver("optax lbfgs", make)


def optimistix_solver(name: str) -> Solver:
    def make(fun, gtol, maxiter):
        import optimistix as optx

        cls = {"BFGS": optx.BFGS, "LBFGS": optx.LBFGS}[name]
        solver = cls(rtol=OPTX_TOL, atol=OPTX_TOL)
        fn = lambda y, args: fun(y, *args)

        def solve(x0, *args):
            r = optx.minimise(fn, solver, x0, args=args, max_steps=maxiter, throw=False)
            # Only arrays leave: optimistix's LBFGS state holds a jaxpr that vmap rejects.
            steps = r.stats["num_steps"]
            return Out(r.value, steps, steps + 1, r.result == optx.RESULTS.successful)

        return solve

    return Solver(f"optimistix {name}", make)


def jax_scipy_solver() -> Solver:
    def make(fun, gtol, maxiter):
        from jax.scipy.optimize import minimize

        def solve(x0, *args):
            r = minimize(fun, x0, args=args, method="BFGS", tol=gtol, options={"maxiter": maxiter})
            return Out(r.x, r.nit, r.nfev, r.success)

        return solve

    return Solver("jax.scipy BFGS", make)


def scipy_solver() -> Solver:
    """scipy's L-BFGS-B on a jitted ``value_and_grad``: one host round trip per evaluation."""

    def make(fun, gtol, maxiter):
        import scipy.optimize

        value_and_grad = jax.jit(jax.value_and_grad(fun))

        def solve(x0, *args):
            def f(x):
                v, g = value_and_grad(x, *args)
                return float(v), np.asarray(g, np.float64)

            r = scipy.optimize.minimize(
                f,
                np.asarray(x0, np.float64),
                jac=True,
                method="L-BFGS-B",
                options={"gtol": gtol, "ftol": 0.0, "maxiter": maxiter},
            )
            return Out(r.x, r.nit, r.nfev, r.success)

        return solve

    return Solver("scipy L-BFGS-B", make, host=True, f32=False)


def dict_minimize_solver() -> Solver:
    """The same scipy L-BFGS-B through dict-minimize's JAX front end (x as an OrderedDict)."""

    def make(fun, gtol, maxiter):
        from dict_minimize.jax_api import minimize

        value_and_grad = jax.jit(jax.value_and_grad(lambda d, *a: fun(d["x"], *a)))
        counter = {"nit": 0, "nfev": 0}

        def f(d, *args):
            counter["nfev"] += 1
            return value_and_grad(d, *args)

        def callback(_):
            counter["nit"] += 1

        def solve(x0, *args):
            counter.update(nit=0, nfev=0)
            x = minimize(
                f,
                collections.OrderedDict(x=jnp.asarray(x0, jnp.float64)),
                args=args,
                method="L-BFGS-B",
                callback=callback,
                options={"gtol": gtol, "ftol": 0.0, "maxiter": maxiter},
            )
            return Out(np.asarray(x["x"]), counter["nit"], counter["nfev"], True)

        return solve

    return Solver("dict-minimize L-BFGS-B", make, host=True, f32=False)


def peer_solvers() -> list[Solver]:
    return [
        jaxopt_solver("LBFGS"),
        jaxopt_solver("LBFGSB"),
        optax_solver(),
        optimistix_solver("BFGS"),
        optimistix_solver("LBFGS"),
        jax_scipy_solver(),
        scipy_solver(),
        dict_minimize_solver(),
    ]


def our_methods() -> list[str]:
    """jaxopt_dict's quasi-Newton methods, as registered now (Newton stands in while they
    are being written, so the harness can be exercised)."""
    import jaxopt_dict as jd

    names = jd.method_names()
    ours = [m for m in ("L-BFGS", "L-BFGS-B") if m in names]
    return ours or ["Newton"]


# --------------------------------------------------------------------------- measuring


class CompileCounter:
    """Counts XLA compilations (backend compiles) while active, via ``jax.monitoring``."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self._listening = False

    def _listener(self, event, duration, **kwargs):
        if self._listening and event == self.EVENT:
            self.count += 1
            self.seconds += duration

    def __enter__(self):
        self.count, self.seconds = 0, 0.0
        self._listening = True
        return self

    def __exit__(self, *exc):
        self._listening = False


_COUNTER = CompileCounter()
jax.monitoring.register_event_duration_secs_listener(_COUNTER._listener)


@contextlib.contextmanager
def count_compiles():
    with _COUNTER as c:
        yield c


def block(tree):
    return jax.block_until_ready(tree)


@dataclasses.dataclass
class Timing:
    compile_s: float  # trace + lower + XLA compile (jit solvers); the first call (host ones)
    times: list  # steady-state wall times of the repeats
    out: Out

    @property
    def median(self) -> float:
        return float(np.median(self.times))


SLOW_S = 2.0  # a call slower than this: its warm-up run counts as a timed repeat
VERY_SLOW_S = 10.0  # slower than this: that one run is all we time


class Measurement:
    """One row's program: compiled (timed) up front, then called in rounds.

    Rows of a comparison are timed round-robin (``time_round_robin``), so background load
    on a shared machine hits every solver alike instead of whichever ran during a burst.
    """

    def __init__(self, fn, args: tuple, host: bool = False):
        self.args, self.host = args, host
        t0 = time.perf_counter()
        if host:
            self.call = fn
            fn(*args)  # includes jitting the objective
        else:
            self.call = jax.jit(fn).lower(*args).compile()
        self.compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.out = block(self.call(*args))  # warm-up: page faults, thread pools
        first = time.perf_counter() - t0
        if host:
            self.compile_s = max(self.compile_s - first, 0.0)
        self.times = [first] if first > SLOW_S else []
        self.done = first > VERY_SLOW_S

    def run_once(self):
        t0 = time.perf_counter()
        self.out = block(self.call(*self.args))
        self.times.append(time.perf_counter() - t0)
        if self.times[-1] > SLOW_S:
            self.done = True

    def timing(self) -> Timing:
        return Timing(self.compile_s, self.times, self.out)


def time_round_robin(measurements: list, repeats: int) -> None:
    """``repeats`` rounds, each calling every (not yet finished) measurement once."""
    for _ in range(repeats):
        for m in measurements:
            if m is not None and not m.done and len(m.times) < repeats:
                m.run_once()


# --------------------------------------------------------------------------- running rows


def log(*parts):
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def summarize(out: Out, ok: np.ndarray) -> dict:
    nit = np.atleast_1d(np.asarray(out.nit))
    nfev = np.atleast_1d(np.asarray(out.nfev))
    flag = np.atleast_1d(np.asarray(out.flag))
    return {
        "ok": float(np.mean(ok)),
        "own_ok": float(np.mean(flag)),
        "nit_mean": float(np.mean(nit)),
        "nit_max": int(np.max(nit)),
        "nfev_mean": float(np.mean(nfev)) if np.all(nfev >= 0) else None,
        "nfev_max": int(np.max(nfev)) if np.all(nfev >= 0) else None,
        "out_dtype": str(np.asarray(out.x).dtype),
    }


def fmt_row(row: dict) -> str:
    if "error" in row:
        return "ERROR " + row["error"]
    parts = []
    if "throughput" in row:
        parts.append(f"{row['throughput']:,.0f}/s")
    parts.append(f"compile {row['compile_s']:.2f}s steady {row['median_s'] * 1e3:.1f}ms")
    parts.append(f"ok {row['ok']:.1%} nit {row['nit_mean']:.1f}/{row['nit_max']}")
    return "  ".join(parts)


def finish_rows(pending, repeats, label):
    """Time the compiled rows round-robin, then fill in their numbers."""
    time_round_robin([m for _, m, _ in pending], repeats)
    rows = []
    for row, m, check in pending:
        if m is not None:
            try:
                timing = m.timing()
                row.update(compile_s=timing.compile_s, median_s=timing.median, times=timing.times)
                if "problems_timed" in row:
                    row["throughput"] = row["problems_timed"] / timing.median
                row.update(summarize(timing.out, check(timing.out.x)))
            except Exception as exc:  # noqa: BLE001 (reported in the results)
                row["error"] = first_line(exc)
        rows.append(row)
        log(
            label,
            row.get("workload", ""),
            row.get("dtype", ""),
            f"B={row['B']}" if "B" in row else "",
            row["solver"],
            fmt_row(row),
        )
    return rows


def _host_batch(solve, k):
    """Solve the first k problems of a batch one by one (scipy-based solvers)."""

    def run_all(x0, *args):
        outs = [solve(x0[i], *(a[i] for a in args)) for i in range(k)]
        return Out(*(np.stack([np.asarray(getattr(o, f)) for o in outs]) for f in Out._fields))

    return run_all


def bench_throughput(
    solvers, workload, dtype: str, gtol: float, maxiter: int, repeats: int, host_problems: int
) -> list[dict]:
    """Throughput rows of one batch for every solver: compiled first, then timed round-robin."""
    w = workload.astype(np.float32 if dtype == "float32" else np.float64)
    batch = w.x0.shape[0]
    pending = []
    for s in solvers:
        if (dtype == "float32" and not s.f32) or (s.lanes is not None and s.lanes > batch):
            continue
        row = {
            "section": "throughput",
            "workload": w.name,
            "n": w.x0.shape[1],
            "B": batch,
            "dtype": dtype,
            "solver": f"{s.name} (vmap)" if s.ours and not s.batched else s.name,
            "ours": s.ours,
            "lanes": s.lanes,
        }
        m = None
        k = min(host_problems, batch) if s.host else batch
        args = tuple(a[:k] for a in w.args)
        row["problems_timed"] = k
        try:
            solve = s.make(fresh(w.fun), gtol, maxiter)
            if s.host:
                m = Measurement(_host_batch(solve, k), (w.x0[:k],) + args, host=True)
            else:
                m = Measurement(solve if s.batched else jax.vmap(solve), (w.x0,) + args)
        except Exception as exc:  # noqa: BLE001 (a peer failing is a result, not a crash)
            row["error"] = first_line(exc)

        def check(x, args=args):
            return grad_inf_norm(w.fun, x, args) <= OK_FACTOR * gtol

        pending.append((row, m, check))
        log(
            "compiled",
            w.name,
            dtype,
            f"B={batch}",
            s.name,
            "error" if m is None else f"{m.compile_s:.1f}s",
        )
    return finish_rows(pending, repeats, "throughput")


def save_and_report(json_path: str, md_path: str, meta: dict, rows: list, ratios: list) -> None:
    """Write the run's rows as JSON beside its Markdown, then log the headline ratios."""
    import json

    with open(json_path, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1, default=str)
    for t in ratios:
        dtype = f" {t['dtype']}" if "dtype" in t else ""
        log(
            f"ratio {t['workload']}{dtype} B={t['B']}: {t['ratio']:.2f}x "
            f"({t['ours']['solver']} vs {t['peer']['solver']})"
        )
    log(f"wrote {md_path} in {meta['wall_s'] / 60:.1f} min")


# --------------------------------------------------------------------------- the machine


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    info = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    if "model name" in info:
        cpu = (
            f"{info['model name']} (cpu family {info.get('cpu family')}, model {info.get('model')})"
        )
    devices = jax.devices()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": f"{devices[0].platform} x{len(devices)} ({devices[0].device_kind})",
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def source_digest() -> str:
    """A short hash of jaxopt_dict's sources as imported (the tree changes under us)."""
    import hashlib

    import jaxopt_dict

    root = os.path.dirname(jaxopt_dict.__file__)
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as fh:
                digest.update(name.encode() + fh.read())
    return "src sha256 " + digest.hexdigest()[:10]


def versions() -> dict:
    names = [
        "jaxopt_dict",
        "jax",
        "jaxlib",
        "optax",
        "chex",
        "numpy",
        "scipy",
        "jaxopt",
        "optimistix",
        "equinox",
        "lineax",
        "jaxtyping",
        "dict_minimize",
        "matplotlib",
    ]
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    with contextlib.suppress(Exception):
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        if commit:
            out["jaxopt_dict"] += f" (git {commit} + working tree {source_digest()})"
    return out
