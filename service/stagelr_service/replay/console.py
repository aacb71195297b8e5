"""The terminal side of ``stagelr replay``: progress bar, summary table, exit status.

Exit status: 0 when every study replayed (verify: and every decision matched); 1 when a
verify found a mismatch; 2 on an error (bad database URL or schema, bad selection or
``--set``, or a study that could not be replayed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StagelrError
from ..store import Store, mask_url
from .batch import (
    BatchResult,
    StudySelection,
    replay_many,
    select_studies,
    summary,
    write_csv,
    write_json,
)

__all__ = ["EXIT_ERROR", "EXIT_MISMATCH", "EXIT_OK", "render", "run_replay"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_ERROR = 2


def _lr(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def render(result: BatchResult, console: Console, show: int = 20) -> None:
    """The summary table, then up to ``show`` rows of what differs."""
    numbers = summary(result)
    title = "replay verify" if result.mode == "verify" else f"replay what-if {result.overrides}"
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows: list[tuple[str, Any]] = [
        ("studies", numbers["studies"]),
        ("decisions replayed", numbers["decisions"]),
    ]
    if result.mode == "verify":
        rows += [
            ("studies matching", numbers["ok"]),
            ("studies with mismatches", numbers["mismatching"]),
            ("mismatches", numbers["mismatches"]),
        ]
    else:
        share = numbers["share_differing"]
        rows += [
            ("stages compared", numbers["stages_compared"]),
            ("stages choosing another LR", numbers["stages_differing"]),
            ("share of stages differing", "-" if share is None else f"{share:.1%}"),
            ("mean |log10 LR ratio| (decades)", _lr(numbers["mean_lr_decades"])),
            ("median when differing", _lr(numbers["median_lr_decades_when_differing"])),
            ("max (decades)", _lr(numbers["max_lr_decades"])),
            ("estimated candidates", numbers["estimates"]),
            ("choices of an estimated LR", numbers["chosen_estimated"]),
        ]
    rows += [
        ("errors", numbers["errors"]),
        ("seconds", f"{numbers['seconds']:.1f}"),
        ("studies/s", numbers["studies_per_second"]),
        ("workers", numbers["workers"]),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)

    if result.mode == "verify":
        detail = Table(title="mismatches (recorded vs replayed)")
        for column in ("study", "stage", "seq", "field", "recorded", "replayed"):
            detail.add_column(column)
        shown = 0
        for r in result.reports:
            for m in r.mismatches:
                if shown < show:
                    detail.add_row(
                        f"{r.study_id} {r.project}/{r.name}",
                        str(m.stage),
                        "-" if m.seq is None else str(m.seq),
                        m.field,
                        _short(m.recorded),
                        _short(m.replayed),
                    )
                shown += 1
        if shown:
            console.print(detail)
    else:
        detail = Table(title="stages choosing another LR (* = an LR that never ran)")
        for column in ("study", "stage", "recorded LR", "replayed LR", "decades", "estimates"):
            detail.add_column(column)
        shown = 0
        for r in result.reports:
            for s in r.stages:
                if s.differs and shown < show:
                    detail.add_row(
                        f"{r.study_id} {r.project}/{r.name}",
                        str(s.index),
                        _lr(s.recorded_lr),
                        _lr(s.replayed_lr) + (" *" if s.chosen_estimated else ""),
                        _lr(s.lr_decades),
                        f"{sum(c.estimated for c in s.candidates)}/{len(s.candidates)}",
                    )
                    shown += 1
        if shown:
            console.print(detail)
    errors = [r for r in result.reports if r.error is not None]
    for r in errors[:show]:
        console.print(f"[red]study {r.study_id} {r.project}/{r.name}: {r.error}[/red]")


def run_replay(
    url: str,
    selection: StudySelection,
    overrides: Mapping[str, Any] | None,
    *,
    workers: int = 2,
    report: Path | None = None,
    csv_path: Path | None = None,
    show: int = 20,
    progress: bool = True,
) -> int:
    """``stagelr replay verify|what-if``: select, replay, show, write; the exit status."""
    out = Console()
    err = Console(stderr=True)
    try:
        with Store(url) as store:
            store.check_schema()
            keys = select_studies(store, selection)
            safe_url = store.safe_url
        if not keys:
            err.print("stagelr replay: no study matches the selection")
            return EXIT_ERROR
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not progress,
            transient=False,
        ) as bar:
            task = bar.add_task("replay", total=len(keys))
            result = replay_many(
                url,
                keys,
                overrides,
                workers=workers,
                progress=lambda n: bar.advance(task, n),
            )
    except StagelrError as exc:
        err.print(f"stagelr replay: {exc.message}", markup=False, highlight=False)
        return EXIT_ERROR
    except SQLAlchemyError as exc:
        err.print(
            f"stagelr replay: the database {mask_url(url)} does not answer: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
            markup=False,
        )
        return EXIT_ERROR
    result.selection = selection.describe()
    render(result, out, show)
    if report is not None:
        write_json(result, report, safe_url)
        out.print(f"JSON report: {report}")
    if csv_path is not None:
        write_csv(result, csv_path)
        out.print(f"CSV report: {csv_path}")
    if result.errors:
        return EXIT_ERROR
    if result.mode == "verify" and result.mismatching:
        return EXIT_MISMATCH
    return EXIT_OK
