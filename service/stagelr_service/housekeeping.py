"""Archive and delete studies: the audit log both doors share, and `stagelr archive` /
`stagelr delete` on the store.

An archived study leaves the default study list (API and dashboard) and keeps its whole
history: its page, replay, export and the schedule export read it as before. A deleted one is gone
with its history. Every change is one line of the ``stagelr.audit`` log with structured
fields (``action``, ``study_id``, ``study``, ``project``, ``scope``; the request id when
it came through the API or the dashboard).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from .store.records import StudyRecord

__all__ = ["audit", "run_housekeeping"]

_log = logging.getLogger("stagelr.audit")

_DONE = {"archive": "archived", "unarchive": "unarchived", "delete": "deleted"}


def audit(action: str, study: StudyRecord, scope: str | None) -> None:
    """Log one housekeeping change: what, which study, by whom (the request's project
    scope; ``*`` with auth off or from the command line)."""
    _log.info(
        "study %s %s (%s/%s) by scope %s",
        study.id,
        _DONE[action],
        study.project,
        study.name,
        scope or "*",
        extra={
            "action": action,
            "study_id": study.id,
            "study": study.name,
            "project": study.project,
            "scope": scope or "*",
        },
    )


def run_housekeeping(
    database_url: str,
    action: str,
    study: str,
    project: str | None,
    *,
    yes: bool,
    ask: Callable[[str], str] = input,
) -> int:
    """`stagelr archive|unarchive|delete STUDY`: asks first unless ``yes``; exit status 0
    when done, 1 when the answer was no."""
    from .schedule import find_study_id
    from .store import Store

    store = Store(database_url)
    try:
        store.check_schema()
        with store.transaction(read_only=True) as repo:
            record = repo.get_study(find_study_id(repo, study, project))
        assert record is not None
        what = f"study {record.id} ({record.project}/{record.name}, {record.status.value})"
        if action == "delete":
            question = f"Delete {what} and its whole history, for good? [y/N] "
        else:
            question = f"{action.capitalize()} {what}? [y/N] "
        if not yes:
            try:
                answer = ask(question)
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print(f"stagelr {action}: nothing done (--yes skips the question)", file=sys.stderr)
                return 1
        with store.transaction() as repo:
            current = repo.lock_study(record.id)
            if current is None:
                print(f"stagelr {action}: {what} is gone already", file=sys.stderr)
                return 0
            if action == "delete":
                repo.delete_study(record.id)
            else:
                repo.set_archived(record.id, action == "archive")
        audit(action, current, None)
        print(f"stagelr {action}: {what} {_DONE[action]}", file=sys.stderr)
        return 0
    finally:
        store.close()
