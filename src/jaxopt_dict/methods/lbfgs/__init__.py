"""L-BFGS and L-BFGS-B, as scipy's ``setulb`` runs them, folded into the driver's one flat
loop: same iterates, ``nit`` and ``nfev`` as scipy (``tests/test_lbfgsb.py``).

The family, one file per piece:

- ``search.py``: what both forms share: the state around a search along ``d = z - x``,
  started as scipy's ``lnsrlb`` does, scipy's rules for keeping a pair, restarting from
  steepest descent and giving up, and the flat box;
- ``more_thuente.py``: the strong-Wolfe line search (MINPACK-2's ``dcsrch``) as a state
  machine;
- ``two_loop.py``: unbounded problems of at most ``TWO_LOOP_MAX_N`` variables, ``H g`` by
  the two-loop recursion over the pairs;
- ``compact_stepper.py``: the rest (bounds, or more variables): the generalized Cauchy point
  (``cauchy.py``) and the subspace step over the compact limited-memory matrices
  (``compact.py``).

This module holds the two registered methods and picks the form for each solve.
"""

from __future__ import annotations

import jax

from jaxopt_dict._method import Method, Stepper
from jaxopt_dict._options import SCIPY_FTOL, Option, line_search_options
from jaxopt_dict.methods.lbfgs.compact_stepper import compact_form_stepper
from jaxopt_dict.methods.lbfgs.two_loop import TWO_LOOP_MAX_N, two_loop_stepper

__all__ = ["LBFGS", "LBFGSB", "TWO_LOOP_MAX_N"]


def _dispatch(maxcor: int, maxls: int, bounded: bool) -> Stepper:
    """The stepper for one solve, chosen when it is traced (x's size and whether bounds
    were given are static): L-BFGS-B proper with bounds; without, for small problems
    (``n <= TWO_LOOP_MAX_N``), the two-loop L-BFGS of ``two_loop.py``, which carries a few
    small arrays instead of the (2m)^2 compact matrices (1,000 vmapped 2-D Rosenbrocks
    run 5.6x faster than in the compact form, one alone 1.9x, same nfev) and compiles to
    a smaller program; for larger ones the compact form (``compact_stepper.py``), whose
    few large products beat the two-loop's 2m dependent passes (1.65x on one 1000-D
    Rosenbrock; measurements in ``two_loop.py``). All take scipy's steps."""
    compact = compact_form_stepper(maxcor, maxls, bounded)
    two_loop = two_loop_stepper(maxcor, maxls)

    def pick(ev, box):
        small = sum(leaf.size for leaf in jax.tree.leaves(ev.x)) <= TWO_LOOP_MAX_N
        return two_loop if (box is None or not bounded) and small else compact

    return Stepper(
        lambda ev, box: pick(ev, box).init(ev, box),
        lambda state, ev, box, first=False: pick(ev, box).step(state, ev, box, first),
        uses_ftol=True,
        step_starts=True,
        rejects_nonfinite=True,
    )


def _options() -> tuple[Option, ...]:
    return (Option("maxcor", 10, int, static=True, low=1),) + line_search_options(ftol=SCIPY_FTOL)


LBFGSB = Method(
    "L-BFGS-B",
    lambda opts: _dispatch(opts["maxcor"], opts["maxls"], bounded=True),
    _options(),
    supports_bounds=True,
    default_maxiter=15000,
)

LBFGS = Method(
    "L-BFGS",
    lambda opts: _dispatch(opts["maxcor"], opts["maxls"], bounded=False),
    _options(),
    default_maxiter=15000,
)
