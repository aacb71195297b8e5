"""A study's trajectory as a portable schedule (:class:`stagelr.schedule.Schedule`).

Derived from the stored segments alone: each completed training (exploit) segment is one
piece, with the LR shape it was handed out with (``lr``, ``lr_end``, ``lr_shape``), so
the piece's steps train at exactly the LRs ``segment.lr_at(step)`` gave the live job.
A training segment that continued its stage's chosen candidate (``continue_best``) is
preceded by that candidate's window, as the candidate trained it (a constant window, or
an annealed probe's ``wsd``), and by the finalist's check window where one continued
it: those steps are on the trajectory too. The other
search trials and the range test are not; the provenance counts their steps.
"""

from __future__ import annotations

from datetime import datetime

from stagelr.models import LRShape, SegmentKind, SegmentStatus
from stagelr.schedule import Schedule, SchedulePiece, ScheduleProvenance, ScheduleStage

from . import __version__
from .errors import InputError, InvalidStateError, NotFoundError
from .store import Repository
from .store.records import SegmentRecord, StudyHistory

__all__ = ["find_study_id", "run_schedule_export", "study_schedule"]


def _trained(steps: int, steps_done: int | None, status: SegmentStatus) -> int:
    if status is SegmentStatus.open:
        return 0
    return steps if steps_done is None else steps_done


def _kept_path(saved: dict[str, SegmentRecord], seg: SegmentRecord) -> list[SegmentRecord]:
    """The search windows a training segment's restored state went through, first
    first: the chosen candidate's, then any window that continued it from its end state
    (a finalist's check); [] when it restored none of its stage's candidates."""
    path: list[SegmentRecord] = []
    restore = seg.restore
    while restore and (window := saved.get(restore)) is not None and window.stage == seg.stage:
        if window in path:  # a malformed history that restores in a cycle
            break
        path.insert(0, window)
        restore = window.restore
    return path


def study_schedule(history: StudyHistory, exported_at: datetime) -> Schedule:
    """The schedule of the study's kept trajectory, with its provenance.

    InvalidStateError when the trajectory has a gap (a training segment completed with
    fewer steps than planned and a later one went on from the planned step): no single
    schedule reproduces that.
    """
    study = history.study
    stage_start = {st.index: st.start_step for st in history.stages}
    candidates: dict[int, int] = {}
    saved: dict[str, SegmentRecord] = {}  # a candidate's saved end state -> the candidate
    for seg in history.segments:
        if seg.kind is SegmentKind.explore:
            parent = saved.get(seg.restore) if seg.restore else None
            if parent is None or parent.stage != seg.stage:  # a check tries no new LR
                candidates[seg.stage] = candidates.get(seg.stage, 0) + 1
            if seg.save_end and seg.status is SegmentStatus.completed:
                saved[seg.save_end] = seg
    pieces: list[SchedulePiece] = []
    kinds: dict[int, str] = {}
    at = 0

    def add(seg: SegmentRecord, start: int, kind: str) -> None:
        nonlocal at
        done = _trained(seg.steps, seg.steps_done, seg.status)
        constant = seg.lr_shape is LRShape.constant or seg.lr_end is None
        end = seg.start_step + done if seg.kind is SegmentKind.exploit else start + done
        if end <= start:
            return
        if start != at:
            raise InvalidStateError(
                f"study {study.id}'s trajectory has a gap at step {at} (stage {seg.stage} "
                f"starts at {start}): no schedule reproduces it"
            )
        pieces.append(
            SchedulePiece(
                start=start,
                steps=end - start,
                lr=seg.lr,
                lr_end=None if constant else seg.lr_end,
                shape=LRShape.constant if constant else seg.lr_shape,
                shape_steps=(end - start) if constant else seg.steps,
                stage=seg.stage,
                kind=kind,  # type: ignore[arg-type]
            )
        )
        at = end

    for seg in history.segments:
        if seg.kind is not SegmentKind.exploit or seg.status is not SegmentStatus.completed:
            continue
        constant = seg.lr_shape is LRShape.constant or seg.lr_end is None
        if candidates.get(seg.stage):
            kind = "search"
        elif constant:
            kind = "train_on"
        else:
            kind = "decay"
        kinds[seg.stage] = kind
        stage_at = stage_start.get(seg.stage, seg.start_step)
        kept = _kept_path(saved, seg)
        if kept:
            # continue_best: the chosen candidate's window is where the stage began (and
            # a finalist's check window, which continued it, came next)
            add(kept[0], stage_at, kind)
            for window in kept[1:]:
                add(window, window.start_step, kind)
            add(seg, seg.start_step, kind)
        else:
            add(seg, stage_at if constant else seg.start_step, kind)
    charged = sum(_trained(s.steps, s.steps_done, s.status) for s in history.segments)
    stages = [
        ScheduleStage(
            index=st.index,
            start_step=st.start_step,
            kind=kinds.get(st.index, "search" if candidates.get(st.index) else "train_on"),  # type: ignore[arg-type]
            candidates=candidates.get(st.index, 0),
            chosen_lr=st.chosen_lr,
        )
        for st in history.stages
    ]
    provenance = ScheduleProvenance(
        study_id=study.id,
        project=study.project,
        name=study.name,
        status=study.status.value,
        config=dict(study.config),
        stages=stages,
        searched=any(candidates.values()),
        search_steps=charged - at,
        charged_steps=charged,
        exported_at=exported_at,
        server_version=__version__,
    )
    return Schedule(steps=at, pieces=pieces, provenance=provenance)


def find_study_id(repo: Repository, study: str, project: str | None) -> int:
    """The id of ``study``: an id, or a name (in ``project`` when given); NotFoundError
    naming the fix when there is none, InputError when the name is in several projects."""
    if study.isdigit():
        record = repo.get_study(int(study))
        if record is None or (project is not None and record.project != project):
            raise NotFoundError(f"no study {study}: give an existing study's id or name")
        return record.id
    matches = [
        (study_id, proj)
        for study_id, proj, name, _ in repo.study_keys(project=project)
        if name == study
    ]
    if not matches:
        where = f" in project {project!r}" if project else ""
        raise NotFoundError(f"no study named {study!r}{where}: give its id or exact name")
    if len(matches) > 1:
        projects = ", ".join(sorted(p for _, p in matches))
        raise InputError(f"study name {study!r} is in several projects ({projects}): add --project")
    return matches[0][0]


def run_schedule_export(
    database_url: str, study: str, project: str | None, output: str, fmt: str
) -> int:
    """`stagelr schedule`: write a study's schedule as JSON or CSV (``-``: stdout)."""
    import sys
    from pathlib import Path

    from .store import Store

    store = Store(database_url)
    try:
        store.check_schema()
        with store.transaction(read_only=True) as repo:
            history = repo.history(find_study_id(repo, study, project))
        assert history is not None
        schedule = study_schedule(history, exported_at=store.now())
    finally:
        store.close()
    text = schedule.to_csv() if fmt == "csv" else schedule.dumps()
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
        searched = (
            f"; the study searched ({schedule.provenance.search_steps} steps not in it)"
            if schedule.provenance.searched
            else ""
        )
        print(
            f"stagelr schedule: study {history.study.id} ({history.study.name!r}): "
            f"{schedule.steps} steps in {len(schedule.pieces)} pieces written to "
            f"{output}{searched}",
            file=sys.stderr,
        )
    return 0
