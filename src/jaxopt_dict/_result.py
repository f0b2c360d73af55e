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
        """The sentence ``res.message`` gives for this status (a stall's own for FTOL and
        XTOL without progress comes from ``status_message``)."""
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

    The arrays are JAX arrays (numpy arrays in a callback's intermediate result).
    ``print(res)`` shows an aligned table, as scipy's ``OptimizeResult`` does.

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
      cost, grad, optimality, active_mask: ``least_squares``'s fields (scipy's): the
        cost ``0.5 * sum(loss(r**2))``, its gradient (x's structure), the first-order
        optimality measure, and where x sits on a bound (-1 / 0 / +1, x's structure).
        There ``fun`` is the residuals (fun's structure) and ``jac`` the Jacobian;
        ``None`` for ``minimize``.
    """

    x: PyTree
    fun: jax.Array | np.ndarray
    jac: PyTree
    nit: jax.Array | np.ndarray
    nfev: jax.Array | np.ndarray
    njev: jax.Array | np.ndarray
    status: jax.Array | np.ndarray
    success: jax.Array | np.ndarray
    trace: Trace | None = None
    aux: Any = None
    cost: Any = None
    grad: Any = None
    optimality: Any = None
    active_mask: Any = None

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

    def __repr__(self) -> str:
        """An aligned table as scipy prints its ``OptimizeResult``: ``message`` first, keys
        right-aligned, arrays summarized (``trace`` and ``aux`` only when present)."""
        return _format_result(self)

    __str__ = __repr__


# scipy's order for the keys it has; other fields follow in their own order.
_ORDER = (
    "message", "success", "status", "fun", "x", "cost", "nit", "jac", "grad", "optimality",
    "active_mask", "nfev", "njev",
)  # fmt: skip


def _format_result(res: OptimizeResult) -> str:
    items: list[tuple[str, Any]] = []
    try:
        message = res.message
    except Exception:  # noqa: BLE001  (a traced status under jit: no text to show)
        message = None
    if message is not None:
        items.append(("message", _Text(_format_message(message, res.status))))
    fields = dict(zip(res._fields, res))
    for name in sorted(fields, key=lambda k: _ORDER.index(k) if k in _ORDER else len(_ORDER)):
        value = fields[name]
        if value is None:  # trace and aux when not asked for
            continue
        if name == "status":
            value = _Text(_format_status(value))
        elif name == "success":
            value = _Text(_format_success(value))
        items.append((name, value))
    return _table(items, pad=1)


class _Text(str):
    """Already formatted: printed as is."""


def _concrete(value: Any) -> np.ndarray | None:
    try:
        return np.asarray(value)
    except Exception:  # noqa: BLE001  (a tracer: printed by its own repr)
        return None


def _format_message(message: str | np.ndarray, status: Any) -> str:
    if isinstance(message, str):
        return message
    # A batch: how many problems stopped with each text, most frequent first.
    texts, counts = np.unique(np.asarray(message).ravel().astype(str), return_counts=True)
    total = int(np.size(status))
    order = np.argsort(-counts, kind="stable")
    return "\n".join(f"{counts[i]} of {total}: {texts[i]}" for i in order)


def _format_status(status: Any) -> str:
    array = _concrete(status)
    if array is None:
        return str(status)
    if array.ndim == 0:
        code = int(array)
        name = Status(code).name if code in Status._value2member_map_ else "RUNNING"
        return f"{code} ({name})"
    return _format_array(array, 0)


def _format_success(success: Any) -> str:
    array = _concrete(success)
    if array is None:
        return str(success)
    if array.ndim == 0:
        return str(bool(array))
    return f"{int(array.sum())} of {array.size}: " + _format_array(array, 0)


def _float_10(x: Any) -> str:
    """scipy's float format in result tables: ten characters, 4 significant digits."""
    if np.isposinf(x):
        return "       inf"
    if np.isneginf(x):
        return "      -inf"
    if np.isnan(x):
        return "       nan"
    return np.format_float_scientific(x, precision=3, pad_left=2, unique=False)


def _format_array(array: np.ndarray, indent: int) -> str:
    if array.ndim == 0:
        return str(array[()])  # a scalar in full precision, as scipy prints fun
    # scipy's print options for result tables (at most 12 elements in full, else 2 at
    # each edge), within 76 columns from where the value starts.
    with np.printoptions(
        linewidth=max(76 - indent, 20),
        edgeitems=2,
        threshold=12,
        formatter={"float_kind": _float_10},
    ):
        return str(array)


def _format_value(value: Any, indent: int) -> str:
    if isinstance(value, _Text):
        return value
    leaves = jax.tree_util.tree_flatten_with_path(value)[0]
    if len(leaves) == 1 and not leaves[0][0]:  # one array, not in a container
        return _format_leaf(value, indent)
    if not leaves:
        return repr(value)
    items = [(_path_label(path), leaf) for path, leaf in leaves]
    return _table(items, pad=0, indent=indent)


def _format_leaf(leaf: Any, indent: int) -> str:
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int, bool)):
        array = _concrete(leaf)
        if array is not None and array.dtype != object:
            return _format_array(array, indent)
    return repr(leaf)


def _path_label(path: tuple) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):  # DictKey, SequenceKey / FlattenedIndexKey, attr
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _table(items: list[tuple[str, Any]], pad: int, indent: int = 0) -> str:
    """``key: value`` lines, keys right-aligned; a value's later lines start under its
    first one (scipy's ``_dict_formatter``)."""
    width = max(len(k) for k, _ in items) + pad
    lines = []
    for key, value in items:
        text = _format_value(value, indent + width + 2)
        lines.append(key.rjust(width) + ": " + text.replace("\n", "\n" + " " * (width + 2)))
    return "\n".join(lines)
