"""Multi-process use through ``jax.distributed`` (README, "Sharding"): two processes.

Two Python processes on 127.0.0.1 (a free port) each run tests/distributed_worker.py:
``jax.distributed.initialize`` with two processes, two forced CPU devices per process, a
global mesh over all four devices, and a batch of 16 problems sharded along its batch axis
(each process builds only its own rows with ``jax.make_array_from_process_local_data``).
Each process checks the shards it holds against ``minimize`` on each of its problems
alone (x, fun, nit, nfev, status, success) for L-BFGS-B with bounds and Newton, both for
``jit(vmap(minimize))`` on the global arrays (whose loop condition is an all-reduce across
the processes, over gloo) and for ``minimize_batch`` inside ``shard_map``.

Bounded in time: both processes are killed when one fails or the time runs out, and the
failure shows both processes' output.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.distributed

WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")
NUM_PROCESSES = 2
TIMEOUT_S = 240  # about 30-60 s on an idle 2-core machine; compilation dominates
OK = "distributed solve ok"
PORT_TAKEN = "address already in use"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()


def _run_processes(tmp_path: pathlib.Path):
    """Start the processes, wait for all of them (or the first failure, or the deadline),
    and return (return codes, stdouts, stderrs, timed out)."""
    port = _free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    procs, files = [], []
    try:
        for i in range(NUM_PROCESSES):
            out = open(tmp_path / f"process{i}.out", "w+")  # noqa: SIM115 (closed below)
            err = open(tmp_path / f"process{i}.err", "w+")  # noqa: SIM115
            files.append((out, err))
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), str(port), str(i)],
                    stdout=out,
                    stderr=err,
                    env=env,
                    text=True,
                )
            )
        deadline = time.monotonic() + TIMEOUT_S
        timed_out = False
        while any(proc.poll() is None for proc in procs):
            # A process that failed leaves the other waiting on it: stop both.
            if any(proc.poll() not in (None, 0) for proc in procs):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        _kill(procs)
    texts = []
    for out, err in files:
        out.seek(0)
        err.seek(0)
        texts.append((out.read(), err.read()))
        out.close()
        err.close()
    codes = [proc.returncode for proc in procs]
    return codes, [t[0] for t in texts], [t[1] for t in texts], timed_out


def _report(codes, outs, errs, timed_out) -> str:
    lines = [f"timed out after {TIMEOUT_S} s" if timed_out else "", f"return codes {codes}"]
    for i, (out, err) in enumerate(zip(outs, errs)):
        lines += [f"--- process {i} stdout ---", out[-4000:], f"--- process {i} stderr ---"]
        lines.append(err[-8000:])
    return "\n".join(lines)


def test_two_processes_solve_their_shards_of_a_global_batch(tmp_path):
    codes, outs, errs, timed_out = _run_processes(tmp_path)
    if any(PORT_TAKEN in err.lower() for err in errs):  # the port was taken meanwhile
        codes, outs, errs, timed_out = _run_processes(tmp_path)
    report = _report(codes, outs, errs, timed_out)
    assert not timed_out and codes == [0] * NUM_PROCESSES, report
    ok = [[line for line in out.splitlines() if line.startswith(OK)] for out in outs]
    assert all(len(lines) == 1 for lines in ok), report
    for i, (line,) in enumerate(ok):
        assert f"process {i} of {NUM_PROCESSES}, 4 devices" in line, report
    # Both processes gathered the same global iteration counts (both processes' rows).
    assert ok[0][0].split("global")[1] == ok[1][0].split("global")[1], report
