"""How this package's own solve programs are compiled: ``jax.jit`` plus XLA:CPU options
that shorten compilation.

On XLA:CPU, ``xla_cpu_use_fusion_emitters=False`` compiled our solves in 0.38-0.96x the
default time (median 0.62x over GD, momentum, Adam, Newton, L-BFGS(-B), PG on three
workloads; ``benchmarks/program_size.py``), with solve times within noise (median 0.96x)
and the same iterations. jaxlib 0.12 no longer has the option (it rejects unknown ones),
so it is probed once, with a trivial program, on first use; elsewhere (GPU, TPU, newer
jaxlib) nothing changes. The options apply where our program is the one compiled: a solve
called inside a user's ``jax.jit`` is part of the user's program and compiled with its
options.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

_FAST_CPU_COMPILE = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def compiler_options() -> dict[str, Any] | None:
    """The XLA options for our programs on this backend, or ``None`` (XLA's defaults)."""
    if jax.default_backend() != "cpu":
        return None
    try:
        probe = jax.jit(lambda v: v + 1, compiler_options=_FAST_CPU_COMPILE)
        probe.lower(np.float32(0)).compile()
    except Exception:  # noqa: BLE001  (an option this jaxlib does not have)
        return None
    return dict(_FAST_CPU_COMPILE)


def _at_top_level() -> bool:
    """No trace is active: a jitted call now is compiled as a program of its own (JAX
    refuses compiler options on a jit nested in another's trace, vmap and grad included).
    JAX's own test; if it is ever gone, the options are simply not used."""
    try:
        from jax._src import core

        return bool(core.trace_state_clean())
    except Exception:  # noqa: BLE001
        return False


def jit(fun: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fun, **jit_kwargs)``, called at top level with ``compiler_options()``
    (built on the first such call, not at import: probing the options initializes JAX's
    backend), and as a plain ``jax.jit`` inside a user's jit, vmap or grad."""
    plain = jax.jit(fun, **jit_kwargs)
    top_level: list[Any] = []

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not _at_top_level():
            return plain(*args, **kwargs)
        if not top_level:
            options = compiler_options()
            top_level.append(plain if options is None else jax.jit(
                fun, compiler_options=options, **jit_kwargs))  # fmt: skip
        return top_level[0](*args, **kwargs)

    return call
