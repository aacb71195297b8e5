"""The repository: every read and write of the store, inside one transaction.

A :class:`Repository` is bound to the session of one transaction (``Store.transaction``,
the one way in) and returns frozen records, never ORM rows. Its methods are grouped by
who uses them, one module each:

- :mod:`.live`: the live path (studies, stages, segments, observations, forecasts, a
  study's history), on every request of a training job;
- :mod:`.token_queries`: projects' bearer tokens;
- :mod:`.summaries`: the study lists of the API and the dashboard, and /metrics' counts;
- :mod:`.bulk`: replay's selection and import's multi-row inserts.

:mod:`.codec` holds what they share: how values are stored and how a row becomes a
record.
"""

from __future__ import annotations

from .bulk import BulkQueries
from .codec import KEEP, Keep
from .summaries import SummaryQueries
from .token_queries import TokenQueries

__all__ = ["KEEP", "Keep", "Repository"]


class Repository(TokenQueries, SummaryQueries, BulkQueries):
    """Reads and writes of one transaction. Get one from ``Store.transaction()``."""
