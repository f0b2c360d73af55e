"""Execute every notebook in ``notebooks/`` and fail if any cell raises.

The notebooks carry their own assertions (the PBDL iterates, the TF statuses, the
hypergradient against finite differences, ...), so running them is a test of the package.

The kernel is this interpreter: a temporary kernelspec whose ``argv`` is ``sys.executable``,
so the notebooks import the same ``jaxopt_dict`` as pytest does, whatever "python3"
kernelspec a user or CI image happens to have installed (a user-level one may point at a
different Python). Nothing is installed into the user's Jupyter directories.
"""

from __future__ import annotations

import json
import pathlib
import sys

# Test extras (pyproject): missing ones fail the run instead of skipping the notebooks.
import ipykernel  # noqa: F401
import matplotlib  # noqa: F401
import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "jaxopt-dict-tests"
CELL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """A kernelspec manager that knows one kernel: ipykernel on ``sys.executable``."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec_dir = kernels / KERNEL_NAME
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxopt_dict tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def test_the_notebooks_are_there():
    assert len(NOTEBOOKS) >= 5, f"expected the notebooks in {NOTEBOOK_DIR}"


def test_kernel_is_this_interpreter(kernel_specs):
    assert kernel_specs.get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_executed(path):
    """Committed with outputs, so that it renders with its figures on GitHub."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, path.name
    assert all(cell.execution_count is not None for cell in code), f"{path.name} is not executed"
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"], path.name
    assert any("image/png" in o.get("data", {}) for cell in code for o in cell.outputs), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, kernel_specs):
    nb = nbformat.read(path, as_version=4)
    kernel = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_specs)
    client = nbclient.NotebookClient(
        nb,
        km=kernel,
        timeout=CELL_TIMEOUT_S,
        # The working directory of the kernel: a temporary one (nothing is written, but if a
        # notebook ever did, it would land there).
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises nbclient.exceptions.CellExecutionError on a failing cell
