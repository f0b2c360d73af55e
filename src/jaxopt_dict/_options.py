"""Option specifications: one record per option, validated before anything is traced.

Numeric options travel into the compiled solve as array leaves (so a new learning rate or
tolerance does not recompile); options marked ``static`` are Python values baked into the
program (``maxiter``, ``maxcor``, ``disp``, ...).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.core
import numpy as np

if TYPE_CHECKING:  # _method imports Option from here
    from jaxopt_dict._method import Method

SCIPY_FTOL = 2.220446049250313e-09


class Option(NamedTuple):
    """How one option is named, typed, defaulted and range-checked.

    Attributes:
      name: the key users write in ``options``.
      default: the value used when the key is absent.
      kind: ``float``, ``int`` or ``bool``; ``object`` accepts anything (e.g. callables).
      static: baked into the compiled program (changing it recompiles).
      low, high: the allowed range, inclusive unless ``open_low``/``open_high``.
      allow_none: ``None`` is a meaningful value (e.g. GD's line-search mode).
      choices: for ``kind=str``, the accepted values (checked exactly).
    """

    name: str
    default: Any
    kind: type = float
    static: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    allow_none: bool = False
    choices: tuple[str, ...] = ()
    none_is_default: bool = False  # None means "not set": the default (line searches' ftol)


ALIASES = {"history_size": "maxcor"}
ADJOINTS = ("implicit", "unrolled")


def common_options(maxiter: int = 1000) -> tuple[Option, ...]:
    """The options every method takes: the stopping rules and the progress outputs."""
    return (
        Option("maxiter", maxiter, int, static=True, low=0),
        Option("maxfun", 15000, int, low=1),
        Option("gtol", 1e-5, float, low=0.0),
        Option("xtol", 0.0, float, low=0.0),
        Option("disp", False, bool, static=True),
        # A tqdm progress bar (``_progress``): iterations, or problems for minimize_batch.
        Option("progress", False, bool, static=True),
        Option("trace", False, bool, static=True),
        # How derivatives of the result are taken: "implicit" (at the solution, the
        # default) or "unrolled" (reverse mode through the iterations; ``_loop``).
        Option("adjoint", "implicit", str, static=True, choices=ADJOINTS),
    )


# ``ftol`` not set (GD's and Newton's default, or ``None``): no relative-reduction rule,
# only the one-ulp rounding-noise stop (``_loop.reduction_too_small``). It travels as a
# number like any ftol, so setting one later does not recompile; users cannot pass NaN.
FTOL_UNSET = math.nan


def option_specs(method: Method) -> tuple[Option, ...]:
    """All options ``method`` takes: its own, then the common ones it does not override."""
    own = {spec.name for spec in method.options}
    common = tuple(s for s in common_options(method.default_maxiter) if s.name not in own)
    return method.options + common


def line_search_options(ftol: float | None, maxls: int = 20) -> tuple[Option, ...]:
    """Options of methods that take line searches: scipy's ftol rule and trial budget.

    ``ftol=None`` is the default for GD and Newton: no relative-reduction rule (scipy's
    stops slow or singular descents far from a stationary point), only the one-ulp
    rounding-noise stop; an explicit ``ftol=0`` turns every f-based stop off."""
    return (
        Option(
            "ftol",
            FTOL_UNSET if ftol is None else ftol,
            float,
            low=0.0,
            allow_none=True,
            none_is_default=True,
        ),
        Option("maxls", maxls, int, static=True, low=1),
    )


def _is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


_LARGEST_COUNT = int(np.iinfo(np.int32).max)  # int options beyond it are clipped to it


def _as_jax_float(value: float) -> float:
    """A float option as the jit will read it: beyond float32's range without x64, the
    infinity ``jnp.asarray`` made of it (JAX's argument parser would warn on every call)."""
    x64 = jax.dtypes.canonicalize_dtype(np.float64) == np.float64
    if not x64 and abs(value) > float(np.finfo(np.float32).max):
        return math.copysign(math.inf, value)
    return value


def _check_value(method: str, spec: Option, value: Any) -> Any:
    """Return the canonical value of one option, or raise a clear error."""
    where = f"options[{spec.name!r}] for method {method!r}"
    if value is None:
        if spec.allow_none:
            # "Not set": the default (L-BFGS's ftol is scipy's; GD's is NaN, no rule).
            return spec.default if spec.none_is_default else None
        raise ValueError(f"{where} may not be None.")
    if spec.kind is object:
        return value
    if spec.kind is str:
        if not isinstance(value, str) or value not in spec.choices:
            raise ValueError(
                f"{where} must be one of {', '.join(map(repr, spec.choices))}, got {value!r}."
            )
        return value
    if spec.kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{where} must be a bool, got {value!r}.")
        return bool(value)
    if spec.static and isinstance(value, jax.Array) and not _is_traced(value):
        value = np.asarray(value)  # A concrete JAX scalar is as good as a Python number.
    if _is_traced(value) or isinstance(value, jax.Array) and not spec.static:
        if spec.static:
            raise ValueError(f"{where} is structural and must be a Python {spec.kind.__name__}.")
        if np.ndim(value) != 0:
            raise ValueError(f"{where} must be a scalar, got shape {np.shape(value)}.")
        # A real number, as for Python values: no bool, no complex (traced or not).
        if np.dtype(value.dtype).kind not in "iuf":
            raise ValueError(f"{where} must be a real number, got dtype {value.dtype}.")
        if _is_traced(value):
            return value  # Range checks need a concrete value; traced ones are trusted.
        value_for_check = float(value)
        finite = math.isfinite(value_for_check)
        if spec.kind is int and finite and value_for_check != int(value_for_check):
            raise ValueError(f"{where} must be an integer, got {value_for_check!r}.")
    else:
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating, np.ndarray)
        ):
            raise ValueError(f"{where} must be a {spec.kind.__name__}, got {value!r}.")
        if isinstance(value, np.ndarray) and value.dtype.kind not in "iuf":
            raise ValueError(f"{where} must be a real number, got dtype {value.dtype}.")
        if np.ndim(value) != 0:
            raise ValueError(f"{where} must be a scalar, got shape {np.shape(value)}.")
        if spec.kind is int:
            whole = isinstance(value, (int, np.integer)) or (
                math.isfinite(float(value)) and float(value) == int(value)
            )
            if not whole:
                raise ValueError(f"{where} must be an integer, got {value!r}.")
            value = int(value)
        else:
            value = float(value)
        value_for_check = float(value)
    if not math.isfinite(value_for_check):
        raise ValueError(f"{where} must be finite, got {value!r}.")
    if spec.low is not None and (
        value_for_check < spec.low or (spec.open_low and value_for_check == spec.low)
    ):
        bound = ">" if spec.open_low else ">="
        raise ValueError(f"{where} must be {bound} {spec.low}, got {value!r}.")
    if spec.high is not None and (
        value_for_check > spec.high or (spec.open_high and value_for_check == spec.high)
    ):
        bound = "<" if spec.open_high else "<="
        raise ValueError(f"{where} must be {bound} {spec.high}, got {value!r}.")
    if isinstance(value, float) and not spec.static:
        return _as_jax_float(value)
    if spec.kind is int and isinstance(value, int):
        # A count the loop compares with its int32 counters (nit, nfev): a larger value
        # is no limit at all, as int32's largest is (2**31 stopped the solve at x0 with
        # MAX_ITER, the comparison wrapping around).
        return min(value, _LARGEST_COUNT)
    return value


def resolve_options(
    method: str, specs: tuple[Option, ...], options: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Fill defaults, resolve aliases, and validate ``options`` against ``specs``.

    Raises:
      TypeError: ``options`` is not a mapping, or has a key the method does not take.
      ValueError: a value of the wrong type or out of range.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}.")
    by_name = {spec.name: spec for spec in specs}
    resolved: dict[str, Any] = {}
    for key, value in options.items():
        name = ALIASES.get(key, key)
        if name not in by_name:
            valid = sorted(by_name)
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"Unknown option {key!r} for method {method!r}.{hint} "
                f"Valid options: {', '.join(valid)}."
            )
        if name in resolved:
            raise TypeError(f"Option {name!r} given twice (through an alias) for {method!r}.")
        resolved[name] = _check_value(method, by_name[name], value)
    for spec in specs:
        resolved.setdefault(spec.name, spec.default)
    return resolved


def split_static(
    specs: tuple[Option, ...], values: Mapping[str, Any]
) -> tuple[tuple[tuple[str, Any], ...], dict[str, Any]]:
    """Split resolved options into static (hashable, Python) and dynamic parts.

    ``None`` values are static: whether an option is set changes the program. Dynamic
    values are the compiled solve's arguments as they are: a Python number enters the jit
    as the weakly typed scalar ``jnp.asarray`` would make of it, without an eager
    conversion per option and call (four of them were about 0.1 ms of every top-level
    ``minimize``).
    """
    static, dynamic = [], {}
    for spec in specs:
        value = values[spec.name]
        if spec.static or value is None or spec.kind is object:
            static.append((spec.name, value))
        else:
            dynamic[spec.name] = value
    return tuple(static), dynamic
