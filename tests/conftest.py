"""Shared fixtures, and float64 for the whole suite (``pytest_configure``).

The suite's accuracy checks are float64 (scipy's references, finite differences), so x64
is switched on here, once, before any test module is imported: no module flips it at
import, and a module runs the same alone as in the whole suite. Float32 tests pass
explicit float32 arrays; a test of the float32-by-default session a user starts in turns
x64 off for itself (``jax.enable_x64(False)``, as ``test_strict_promotion`` and
``test_docs_site`` do)."""

from __future__ import annotations

import gc

import jax
import jax.monitoring
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a test extra; test_properties skips without it.
    pass
else:
    # Deterministic in CI: derandomized, no example database, no deadline (first examples
    # include compilation).
    settings.register_profile(
        "jaxopt_dict",
        max_examples=12,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile("jaxopt_dict")


def pytest_configure(config: pytest.Config) -> None:
    """float64 on before collection imports the test modules (their module-level arrays
    are float64 too)."""
    del config
    jax.config.update("jax_enable_x64", True)


_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileLog:
    """Names of the XLA programs compiled while the fixture is active."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event == _BACKEND_COMPILE:
            self.names.append(str(kwargs.get("fun_name", "?")))

    def clear(self) -> None:
        self.names.clear()


@pytest.fixture
def compile_log():
    """Record backend compilations (``jax.monitoring`` events) during a test."""
    log = CompileLog()
    jax.monitoring.register_event_duration_secs_listener(log)
    try:
        yield log
    finally:
        jax.monitoring.unregister_event_duration_listener(log)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's caches of compiled programs after each module. Every XLA:CPU executable
    keeps memory mappings, and the whole suite in one process compiles enough of them to
    pass Linux's vm.max_map_count (65,530): XLA then aborts the process mid-compile."""
    yield
    jax.clear_caches()
    gc.collect()
