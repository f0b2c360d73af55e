"""SPEC section 3: a vmapped batch sharded along its batch axis over a jax.sharding mesh.

XLA's forced host device count must be set before JAX initializes, so the solve runs in a
subprocess (tests/sharded_solve.py) with 8 CPU devices.
"""

import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("sharded_solve.py")


@pytest.mark.parametrize("method", ["Newton", "L-BFGS-B", "trf"])
def test_sharded_batch_solves_on_eight_cpu_devices(method):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env.pop("JAX_PLATFORMS", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), method],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sharded solve ok: 8 devices" in proc.stdout
