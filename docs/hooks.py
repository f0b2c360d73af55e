"""mkdocs hook: add the notebooks and the benchmark results to the site from where they live.

The notebooks (``notebooks/*.ipynb``, committed with their outputs) and the latest full
benchmark run (``benchmarks/results/RESULTS.md`` and its PNG plots) stay the single source:
they are added to the site's files under the same paths, ``notebooks/...`` and
``benchmarks/results/...``, before mkdocs-jupyter looks for notebooks (hence the priority),
instead of being copied into ``docs/`` where they would go stale.
"""

from __future__ import annotations

import pathlib

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("notebooks/*.ipynb", "benchmarks/results/*.png", "benchmarks/results/RESULTS.md")


@event_priority(100)  # before mkdocs-jupyter's on_files (priority 0) turns .ipynb into pages
def on_files(files: Files, config) -> Files:
    for pattern in SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            files.append(
                File(
                    path.relative_to(ROOT).as_posix(),
                    src_dir=str(ROOT),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    return files
