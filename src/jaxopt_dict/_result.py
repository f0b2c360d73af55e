"""The result of a solve: scipy's field names, a pytree, and a status enum."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax
import numpy as np

PyTree = Any


class Status(enum.IntEnum):
    """Why a solve stopped. ``res.status`` holds one of these as an int32 array."""

    CONVERGED = 0
    MAX_ITER = 1
    LINESEARCH_FAILED = 2
    NONFINITE = 3
    FTOL = 4
    XTOL = 5
    CALLBACK_STOP = 6

    @property
    def success(self) -> bool:
        """Whether the status can mean success: CONVERGED always; FTOL and XTOL only if
        the solve made progress (``res.fun < f(x0)``, which ``res.success`` tells)."""
        return self in (Status.CONVERGED, Status.FTOL, Status.XTOL)

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.CONVERGED: "Converged: the (projected) gradient inf-norm is <= gtol.",
    Status.MAX_ITER: "Stopped: maxiter or maxfun was reached before convergence.",
    Status.LINESEARCH_FAILED: "Failed: the line search found no acceptable step.",
    Status.NONFINITE: (
        "Failed: f or its gradient became NaN or inf; x is the last finite iterate."
    ),
    Status.FTOL: "Converged: the relative reduction of f is <= ftol.",
    Status.XTOL: "Converged: the step's inf-norm is <= xtol.",
    Status.CALLBACK_STOP: "Stopped: the callback raised StopIteration.",
}

# FTOL or XTOL without progress: f never went below f(x0), the iterate stalled.
_STALLED = {
    Status.FTOL: "Failed: f stopped decreasing (ftol) before it went below f(x0): a stall.",
    Status.XTOL: (
        "Failed: the iterate stopped moving (xtol) before f went below f(x0): a stall "
        "(e.g. every update lost to rounding)."
    ),
}

# Internal status of a solve that is still going; seen only by per-iteration callbacks.
RUNNING = -1


def status_message(status: int, success: bool = True) -> str:
    if int(status) == RUNNING:
        return "Iterating."
    status = Status(int(status))
    if not success and status in _STALLED:
        return _STALLED[status]
    return status.message


class Trace(NamedTuple):
    """Iterates 0..maxiter of a solve run with ``options={"trace": True}``.

    ``fun`` has shape ``(maxiter + 1,)``; ``x`` is x0's pytree with a leading axis of
    length ``maxiter + 1`` on every leaf. Entries past ``nit`` repeat the final value.
    """

    fun: jax.Array
    x: PyTree


class OptimizeResult(NamedTuple):
    """What ``minimize`` returns; a NamedTuple of arrays, so it passes ``jit``/``vmap``.

    Attributes:
      x: the solution, with x0's structure, shapes and dtypes; always the last iterate
        whose f and gradient were finite.
      fun: f at ``x``.
      jac: the gradient at ``x``.
      nit: iterations taken (accepted steps).
      nfev: evaluations of ``fun`` (each gives value and gradient together).
      njev: evaluations of the gradient (equal to ``nfev``: they are fused).
      status: an int32 ``Status`` code.
      success: ``status`` is CONVERGED, or FTOL or XTOL after progress (``fun`` below
        f(x0)): a solve that stalled is never a success.
      trace: a ``Trace`` when ``options["trace"]`` is true, else ``None``.
      aux: with ``has_aux=True``, what ``fun`` returned beside its value, at ``x``;
        else ``None``.
    """

    x: PyTree
    fun: jax.Array
    jac: PyTree
    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    status: jax.Array
    success: jax.Array
    trace: Trace | None = None
    aux: Any = None

    @property
    def message(self) -> str | np.ndarray:
        """Host-side text for ``status`` (an array of texts for a batched result)."""
        status = np.asarray(self.status)
        success = np.asarray(self.success)
        if status.ndim == 0:
            return status_message(int(status), bool(success))
        return np.vectorize(status_message, otypes=[object])(status, success)

    def __getitem__(self, key):  # scipy's OptimizeResult is a dict: res["x"] works there.
        if isinstance(key, str):
            return getattr(self, key)
        return tuple.__getitem__(self, key)
