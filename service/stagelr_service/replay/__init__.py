"""Replay of stored studies: the tuner run again over recorded observations, no training.

- :func:`verify_history`: the stored config; every recorded decision and forecast must come
  out the same (an audit after an upgrade).
- :func:`what_if_history`: another config (:data:`WHAT_IF_KEYS`); LRs that never ran get
  GP estimates, flagged ``estimated``.
- :func:`replay_study`: either, for one study of a store (what the API calls).
- :mod:`stagelr_service.replay.batch`: many studies in worker processes (``stagelr replay``).

The package holds no torch: the optimizer (``stagelr_service.optimizer.GPOptimizer``) comes
in as an argument, as it does for the tuner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stagelr.models import DECISION_FIELDS, ReplayReport

from .. import tuner
from ..errors import NotFoundError
from ..store import Store
from ._verify import verify_history
from ._whatif import ESTIMATED, WHAT_IF_KEYS, parse_overrides, what_if_config, what_if_history

__all__ = [
    "DECISION_FIELDS",
    "ESTIMATED",
    "WHAT_IF_KEYS",
    "parse_overrides",
    "replay_study",
    "verify_history",
    "what_if_config",
    "what_if_history",
]


def replay_study(
    store: Store,
    study_id: int,
    optimizer: tuner.Optimizer,
    overrides: Mapping[str, Any] | None = None,
    *,
    scope: str | None = None,
) -> ReplayReport:
    """Verify (``overrides`` None) or what-if one study of ``store``.

    The history is read in one short read-only transaction; the replay runs outside any
    transaction. ``scope``: the caller's project (another project's study is not found).
    """
    with store.transaction(read_only=True) as repo:
        history = repo.history(study_id)
    if history is None or (scope is not None and history.study.project != scope):
        raise NotFoundError(f"no study {study_id}: list studies with GET /v1/studies")
    if overrides is None:
        return verify_history(history, optimizer)
    return what_if_history(history, overrides, optimizer)
