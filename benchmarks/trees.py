"""Which checkout's code a benchmark's child processes run.

A benchmark that compares two trees (``--baseline-tree``, a ``git archive`` of the code
before a change) starts children with one tree's ``client``, ``service`` and root first
on ``PYTHONPATH``. The new tree is the checkout the benchmark sits in, named explicitly:
a worktree that shares another checkout's virtual environment would otherwise run the
code that environment's editable install points at, and compare that code with itself.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout these benchmarks belong to.
ROOT = Path(__file__).resolve().parents[1]


def tree_pythonpath(tree: Path | None) -> str:
    """``PYTHONPATH`` for children running ``tree``'s code (None: this checkout's)."""
    source = ROOT if tree is None else tree
    return os.pathsep.join(str(p) for p in (source / "client", source / "service", source))
