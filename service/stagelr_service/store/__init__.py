"""The SQL store: SQLAlchemy tables, one repository, Alembic migrations.

``Store(url)`` owns the engine; ``Store.transaction()`` is the one way to read or write,
yielding a :class:`Repository` that returns frozen records. ``migrate(url)`` upgrades a
database; ``Store.check_schema()`` refuses one that is not current.
"""

from stagelr_service.errors import DuplicateSegmentError

from .database import Store, utcnow
from .engine import make_engine, mask_url, normalize_url
from .records import (
    ForecastRecord,
    ObservationRecord,
    ProjectRecord,
    SegmentRecord,
    StageRecord,
    StageStatus,
    StudyHistory,
    StudyRecord,
    TokenRecord,
)
from .repository import KEEP, Keep, Repository
from .schema import check_schema, downgrade, migrate

__all__ = [
    "DuplicateSegmentError",
    "ForecastRecord",
    "KEEP",
    "Keep",
    "ObservationRecord",
    "ProjectRecord",
    "Repository",
    "SegmentRecord",
    "StageRecord",
    "StageStatus",
    "Store",
    "StudyHistory",
    "StudyRecord",
    "TokenRecord",
    "check_schema",
    "downgrade",
    "make_engine",
    "mask_url",
    "migrate",
    "normalize_url",
    "utcnow",
]
