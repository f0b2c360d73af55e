"""The least-squares methods of ``least_squares``: one line per method."""

from __future__ import annotations

from jaxopt_dict._method import Method
from jaxopt_dict._options import Option
from jaxopt_dict.lsq_methods import gauss_newton, lm, trf

# long_tail: a few curve fits per thousand run to max_nfev, as scipy's (the queue's lanes).
LSQ_METHODS: dict[str, Method] = {
    "trf": Method("trf", trf.make, supports_bounds=True, long_tail=True),
    "lm": Method("lm", lm.make, long_tail=True),
    "gauss-newton": Method(
        "gauss-newton",
        gauss_newton.make,
        options=(Option("maxls", 20, int, static=True, low=1),),
        long_tail=True,
    ),
}


def _normalized(name: str) -> str:
    return "".join(c for c in name.lower() if c not in "-_ ")


def resolve_lsq_method(method: str) -> Method:
    """The method record for ``method`` (case, '-', '_' and spaces ignored).

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}.")
    by_normalized = {_normalized(name): record for name, record in LSQ_METHODS.items()}
    record = by_normalized.get(_normalized(method))
    if record is None:
        raise ValueError(
            f"Unknown least-squares method {method!r}. Known methods: "
            f"{', '.join(map(repr, LSQ_METHODS))}."
        )
    return record
