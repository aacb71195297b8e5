"""Replay of many studies at once: selection, worker processes, progress, reports.

``stagelr replay verify|what-if`` runs here. Studies are replayed in worker processes
(``concurrent.futures.ProcessPoolExecutor``, spawned: each worker opens its own store
and optimizer, and the GP's torch never crosses a fork), a few studies per task; the
parent shows a progress bar, then a summary table, and writes the JSON and CSV reports.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stagelr.models import ReplayReport, StudyStatus

from ..errors import InputError
from ..store import Store
from . import replay_study, what_if_config

__all__ = [
    "REPORT_FORMAT",
    "BatchResult",
    "StudyKey",
    "StudySelection",
    "replay_many",
    "select_studies",
    "summary",
    "write_csv",
    "write_json",
]

#: The format name of the JSON report file.
REPORT_FORMAT = "stagelr-replay-report"

StudyKey = tuple[int, str, str, StudyStatus]


@dataclass(frozen=True)
class StudySelection:
    """Which studies: every given filter must hold; ``all_`` with none selects all."""

    ids: tuple[int, ...] = ()
    name: str | None = None
    project: str | None = None
    status: StudyStatus | None = None
    all_: bool = False
    family: str | None = None

    def empty(self) -> bool:
        return not (
            self.ids or self.name or self.project or self.status or self.family or self.all_
        )

    def describe(self) -> dict[str, Any]:
        return {
            "ids": list(self.ids),
            "name": self.name,
            "project": self.project,
            "status": None if self.status is None else self.status.value,
            "family": self.family,
            "all": self.all_,
        }


def select_studies(store: Store, selection: StudySelection) -> list[StudyKey]:
    """The selected studies' keys, by id. InputError when nothing is selected at all or
    a given id does not exist."""
    if selection.empty():
        raise InputError(
            "select studies with --id, --name, --project, --status, --family, or --all for "
            "every study"
        )
    with store.transaction(read_only=True) as repo:
        keys = repo.study_keys(
            project=selection.project, status=selection.status, family=selection.family
        )
    if selection.ids:
        wanted = set(selection.ids)
        known = {k[0] for k in keys}
        if selection.project is None and selection.status is None and selection.family is None:
            missing = sorted(wanted - known)
            if missing:
                raise InputError(f"no study {missing[0]}: list them with GET /v1/studies")
        keys = [k for k in keys if k[0] in wanted]
    if selection.name is not None:
        keys = [k for k in keys if fnmatch.fnmatchcase(k[2], selection.name)]
    return keys


# --------------------------------------------------------------------------- workers

_STATE: dict[str, Any] = {}


def _init_worker(url: str) -> None:
    """Per worker process: its own store and optimizer, made once."""
    from ..optimizer import GPOptimizer  # the torch import, paid once per worker

    _STATE["store"] = Store(url)
    _STATE["optimizer"] = GPOptimizer()


def _error_report(key: StudyKey, mode: Literal["verify", "what-if"], error: str) -> ReplayReport:
    study_id, project, name, status = key
    return ReplayReport(
        study_id=study_id,
        project=project,
        name=name,
        study_status=status,
        mode=mode,
        decisions=0,
        ok=False,
        stages_compared=0,
        stages_differing=0,
        error=error,
    )


def _replay_chunk(keys: Sequence[StudyKey], overrides: Mapping[str, Any] | None) -> list[str]:
    """Replay studies in this worker; reports as JSON (cheap to pickle, NaN-safe)."""
    out = []
    mode: Literal["verify", "what-if"] = "verify" if overrides is None else "what-if"
    for key in keys:
        try:
            report = replay_study(_STATE["store"], key[0], _STATE["optimizer"], overrides)
        except Exception as exc:  # one bad study must not stop the batch: report it
            report = _error_report(key, mode, f"{type(exc).__name__}: {exc}")
        out.append(report.model_dump_json())
    return out


@dataclass
class BatchResult:
    mode: Literal["verify", "what-if"]
    overrides: dict[str, Any]
    reports: list[ReplayReport]
    seconds: float
    workers: int
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def mismatching(self) -> int:
        return sum(1 for r in self.reports if r.error is None and r.mismatches)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.reports if r.error is not None)


def _chunks(keys: Sequence[StudyKey], size: int) -> Iterator[list[StudyKey]]:
    for start in range(0, len(keys), size):
        yield list(keys[start : start + size])


def replay_many(
    url: str,
    keys: Sequence[StudyKey],
    overrides: Mapping[str, Any] | None = None,
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> BatchResult:
    """Replay ``keys`` (verify if ``overrides`` is None, else what-if) in ``workers``
    processes (1: in this process); ``progress(n)`` is called as n more are done."""
    if workers < 1:
        raise InputError("--workers must be at least 1")
    if overrides is not None and keys:
        # Fail fast on a bad --set, before any worker starts (the per-study configs are
        # validated again in the workers, against each study's stored config).
        with Store(url) as store, store.transaction(read_only=True) as repo:
            first = repo.get_study(keys[0][0])
        if first is not None:
            what_if_config(first.config, overrides)
    mode: Literal["verify", "what-if"] = "verify" if overrides is None else "what-if"
    started = time.perf_counter()
    results: list[str] = []
    # A few studies per task: amortizes the task round trip, keeps the bar moving.
    size = max(1, min(25, math.ceil(len(keys) / (workers * 8)) if keys else 1))
    if workers == 1 or len(keys) <= 1:
        _init_worker(url)
        try:
            for chunk in _chunks(keys, size):
                results.extend(_replay_chunk(chunk, overrides))
                if progress:
                    progress(len(chunk))
        finally:
            _STATE.pop("store").close()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(url,)
        ) as pool:
            pending: set[Future[list[str]]] = {
                pool.submit(_replay_chunk, chunk, overrides) for chunk in _chunks(keys, size)
            }
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    chunk_reports = future.result()
                    results.extend(chunk_reports)
                    if progress:
                        progress(len(chunk_reports))
    reports = sorted(
        (ReplayReport.model_validate_json(r) for r in results), key=lambda r: r.study_id
    )
    return BatchResult(
        mode=mode,
        overrides=dict(overrides or {}),
        reports=reports,
        seconds=time.perf_counter() - started,
        workers=workers,
    )


# --------------------------------------------------------------------------- reports


def summary(result: BatchResult) -> dict[str, Any]:
    """The batch in numbers: how many studies and stages differ, and by how much."""
    reports = result.reports
    stages = [s for r in reports for s in r.stages]
    distances = [s.lr_decades for s in stages if s.lr_decades is not None]
    compared = sum(r.stages_compared for r in reports)
    differing = sum(r.stages_differing for r in reports)
    moved = [d for d in distances if d > 0]
    return {
        "studies": len(reports),
        "ok": sum(1 for r in reports if r.ok and r.error is None),
        "mismatching": result.mismatching,
        "errors": result.errors,
        "studies_differing": sum(1 for r in reports if r.stages_differing),
        "decisions": sum(r.decisions for r in reports),
        "mismatches": sum(len(r.mismatches) for r in reports),
        "stages_compared": compared,
        "stages_differing": differing,
        "share_differing": differing / compared if compared else None,
        "mean_lr_decades": statistics.fmean(distances) if distances else None,
        "median_lr_decades_when_differing": statistics.median(moved) if moved else None,
        "max_lr_decades": max(distances) if distances else None,
        "estimates": sum(r.estimates for r in reports),
        "chosen_estimated": sum(1 for s in stages if s.chosen_estimated),
        "seconds": round(result.seconds, 3),
        "studies_per_second": round(len(reports) / result.seconds, 2) if result.seconds else None,
        "workers": result.workers,
    }


def write_json(result: BatchResult, path: Path, database: str) -> None:
    """The JSON report: header fields, the summary, and every study's ReplayReport."""
    body = {
        "format": REPORT_FORMAT,
        "version": 1,
        "mode": result.mode,
        "overrides": result.overrides,
        "database": database,
        "selection": result.selection,
        "summary": summary(result),
        "studies": [json.loads(r.model_dump_json()) for r in result.reports],
    }
    path.write_text(json.dumps(body, indent=2, allow_nan=False) + "\n")


CSV_COLUMNS = (
    "study_id",
    "project",
    "name",
    "mode",
    "stage",
    "recorded_lr",
    "replayed_lr",
    "lr_decades",
    "differs",
    "chosen_estimated",
    "estimated_candidates",
    "recorded_candidates",
    "replayed_candidates",
    "mismatches",
    "error",
)


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def write_csv(result: BatchResult, path: Path) -> None:
    """The CSV report: one row per study and stage (one row for a study with none)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in result.reports:
            base = [r.study_id, r.project, r.name, r.mode]
            if not r.stages:
                writer.writerow(
                    [*base, "", "", "", "", "", "", "", "", "", len(r.mismatches), r.error or ""]
                )
            for s in r.stages:
                writer.writerow(
                    [
                        *base,
                        s.index,
                        _num(s.recorded_lr),
                        _num(s.replayed_lr),
                        _num(s.lr_decades),
                        int(s.differs),
                        int(s.chosen_estimated),
                        sum(1 for c in s.candidates if c.estimated),
                        " ".join(repr(lr) for lr in s.recorded_lrs),
                        " ".join(repr(c.lr) for c in s.candidates),
                        sum(1 for m in r.mismatches if m.stage == s.index),
                        r.error or "",
                    ]
                )
