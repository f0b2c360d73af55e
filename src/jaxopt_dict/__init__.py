"""jaxopt_dict: scipy-style minimization over pytrees, one compiled loop per solve."""

from jaxopt_dict import dict_minimize, methods  # noqa: F401  (jd.dict_minimize, jd.methods)
from jaxopt_dict._batch import minimize_batch
from jaxopt_dict._least_squares import least_squares, least_squares_batch
from jaxopt_dict._method import Box, Evaluation, Method, StepOutcome, Stepper
from jaxopt_dict._minimize import minimize, option_specs
from jaxopt_dict._options import Option
from jaxopt_dict._result import OptimizeResult, Status, Trace
from jaxopt_dict._tree import project
from jaxopt_dict.methods import method_names, methods_with_bounds, register_method

__version__ = "0.1.0"

__all__ = [
    "Box",
    "Evaluation",
    "Method",
    "OptimizeResult",
    "Option",
    "Status",
    "StepOutcome",
    "Stepper",
    "Trace",
    "least_squares",
    "least_squares_batch",
    "method_names",
    "methods_with_bounds",
    "minimize",
    "minimize_batch",
    "option_specs",
    "project",
    "register_method",
]
