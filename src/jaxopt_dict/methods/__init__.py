"""The method registry: one line per method. ``register_method`` adds a user's own."""

from __future__ import annotations

import difflib

import optax

from jaxopt_dict._method import Method
from jaxopt_dict.methods.gd import GD
from jaxopt_dict.methods.lbfgs import LBFGS, LBFGSB
from jaxopt_dict.methods.newton import NEWTON
from jaxopt_dict.methods.optax_rules import ADAM, MOMENTUM, from_gradient_transformation
from jaxopt_dict.methods.pg import PG

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` available by name (case-insensitive) to ``minimize``."""
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a Method, got {type(method).__name__}.")
    _REGISTRY[method.name.lower()] = method
    return method


def method_names() -> list[str]:
    """The registered method names, as users write them."""
    return [m.name for m in _REGISTRY.values()]


def methods_with_bounds() -> list[str]:
    """The registered methods that accept ``bounds``."""
    return [m.name for m in _REGISTRY.values() if m.supports_bounds]


def _normalized(name: str) -> str:
    """A method name without case, '-', '_' or spaces: 'l_bfgs_b' and 'L-BFGS-B' agree."""
    return "".join(c for c in name.lower() if c not in "-_ ")


def closest_method(name: str) -> str | None:
    """The registered method name closest to an unknown ``name``, or ``None`` if none is
    close: an equal normalized form first, then difflib on the normalized and on the raw
    lowercase names."""
    names = method_names()
    by_normalized = {_normalized(n): n for n in names}
    if _normalized(name) in by_normalized:
        return by_normalized[_normalized(name)]
    by_lower = {n.lower(): n for n in names}
    for query, table in ((_normalized(name), by_normalized), (name.lower(), by_lower)):
        close = difflib.get_close_matches(query, list(table), n=1)
        if close:
            return table[close[0]]
    return None


def resolve_method(method: str | Method | optax.GradientTransformation | None) -> Method:
    """A ``Method`` from a name, a ``Method``, or an optax transformation; ``None``
    means the default, L-BFGS-B (``method=None`` means "the default" in scipy too).

    Raises:
      ValueError: an unknown name (the message suggests the closest known one and lists
        them all).
      TypeError: anything else.
    """
    if method is None:
        method = "L-BFGS-B"
    if isinstance(method, Method):
        return method
    if isinstance(method, optax.GradientTransformation):
        return from_gradient_transformation(method)
    if isinstance(method, str):
        found = _REGISTRY.get(method.lower())
        if found is None:
            suggestion = closest_method(method)
            hint = f" Did you mean {suggestion!r}?" if suggestion else ""
            raise ValueError(
                f"Unknown method {method!r}.{hint} Known methods: {', '.join(method_names())}; "
                "or pass an optax.GradientTransformation or a jaxopt_dict.Method."
            )
        return found
    raise TypeError(
        "method must be a name, a jaxopt_dict.Method or an optax.GradientTransformation, "
        f"got {type(method).__name__}."
    )


for _method in (GD, MOMENTUM, ADAM, NEWTON):
    register_method(_method)
register_method(PG)
register_method(LBFGS)
register_method(LBFGSB)
