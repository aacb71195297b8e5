"""PyTorch helper: carry out a segment's checkpoint plan and apply its learning rate.

This module imports torch; ``import stagelr`` does not::

    from stagelr.torch import Checkpointer

    checkpointer = Checkpointer(model, optimizer)      # in memory; directory=... on disk
    for segment in tuner:
        checkpointer.begin(segment)   # restore, save_start, then segment.lr on every group
        for step in segment.steps():
            ...
        checkpointer.end(segment)     # save_end, drop the discarded checkpoints
        segment.complete()

A checkpoint holds the model, the optimizer, the grad scaler when given, and the random
number generators: torch's CPU generator, CUDA's when CUDA is in use, Python's ``random``
and NumPy's global one when NumPy is loaded. Restoring one and training again therefore
repeats the same steps, which is what makes the candidates of a stage comparable.

A job of several processes (DDP) wraps its tuner in :class:`DistributedTuner` (from
:mod:`stagelr.distributed`): rank 0 talks to the service and every rank gets its plan.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote

import torch

from .models import LRShape

__all__ = [
    "CheckpointNotFoundError",
    "Checkpointer",
    "DistributedSegment",
    "DistributedTuner",
    "SegmentPlan",
    "SegmentSampler",
    "apply_lr",
    "capture_rng",
    "restore_rng",
]


class SegmentPlan(Protocol):
    """What :class:`Checkpointer` reads from a segment (a :class:`stagelr.Segment` or a
    :class:`stagelr.models.SegmentView`)."""

    @property
    def lr(self) -> float: ...

    @property
    def restore(self) -> str | None: ...

    @property
    def save_start(self) -> str | None: ...

    @property
    def save_end(self) -> str | None: ...

    @property
    def discard(self) -> Sequence[str]: ...


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


class CheckpointNotFoundError(LookupError):
    """A segment asks to restore a checkpoint that this checkpointer does not hold."""


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every param group to ``lr``.

    ``initial_lr`` is set too where present, so that an LR scheduler built on this
    optimizer starts from the new rate. A tensor LR (capturable or fused optimizers) is
    filled in place, keeping its device and dtype.
    """
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if key not in group:
                continue
            if isinstance(group[key], torch.Tensor):
                group[key].fill_(lr)
            else:
                group[key] = lr


class SegmentSampler(torch.utils.data.Sampler[int]):
    """A data order driven by the segment's ``data_seed``, for a ``DataLoader``.

    Every segment of a stage carries the same ``data_seed`` (the ``same_data`` switch),
    so with this sampler every candidate of a stage trains on the same batches: the
    search compares LRs, not luck of the draw. Each pass over the data is a permutation
    seeded by ``(data_seed, pass)``; :meth:`set_segment` (called by
    ``Checkpointer(sampler=...)`` in ``begin``) starts the order again. Create the
    DataLoader's iterator after ``begin``::

        sampler = SegmentSampler(len(dataset))
        loader = DataLoader(dataset, batch_size=64, sampler=sampler)
        checkpointer = Checkpointer(model, optimizer, sampler=sampler)
        for segment in tuner:
            checkpointer.begin(segment)
            batches = _cycle(loader)   # iter(loader), restarted when it runs out
            ...
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 1:
            raise ValueError("a SegmentSampler needs a dataset of at least one item")
        self.size = size
        self.seed = seed
        self._pass = 0

    def set_segment(self, segment: Any) -> None:
        """Start the order of ``segment.data_seed`` from its beginning."""
        self.seed = int(segment.data_seed)
        self._pass = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Any:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._pass)
        self._pass += 1
        return iter(torch.randperm(self.size, generator=generator).tolist())


class Checkpointer:
    """Saves and restores training state by the names a segment gives.

    Args:
        model: The module whose ``state_dict`` is saved.
        optimizer: The optimizer whose state is saved and whose LR segments set.
        scaler: A ``torch.amp.GradScaler`` (or anything with ``state_dict`` and
            ``load_state_dict``) to save along.
        directory: Keep checkpoints as ``<directory>/<name>.pt`` files, written
            atomically, so that a restarted job can restore them. By default they are
            kept in memory, as independent copies (later training does not change them).
        sampler: A :class:`SegmentSampler` to set to each segment's data seed in
            :meth:`begin`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        scaler: _Stateful | None = None,
        directory: str | os.PathLike[str] | None = None,
        sampler: SegmentSampler | None = None,
    ) -> None:
        self.sampler = sampler
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ segments

    def begin(self, segment: SegmentPlan) -> None:
        """Before training a segment: restore, then save_start, then apply its LR.

        The LR comes last so that a restored optimizer state cannot bring back the LR it
        was saved with.

        On disk, a segment that restores nothing (a stage's first candidate, or training
        on without a search) also gets a start checkpoint of its own, named after the
        segment's id. A job killed in the middle of that segment and restarted is handed
        the same segment again; ``begin`` then restores that start checkpoint, so the
        segment is trained again from exactly where it first began.
        """
        start = self._start_name(segment)
        if start is not None and start in self:
            self.restore(start)  # a restarted job resumes this very segment
        else:
            if segment.restore:
                self.restore(segment.restore)
            elif start is not None:
                self.save(start)  # before save_start: a crash between them still resumes
        if segment.save_start:
            self.save(segment.save_start)
        self._apply_lr(segment.lr)
        self.follow_lr(segment)
        if self.sampler is not None:
            self.sampler.set_segment(segment)

    def follow_lr(self, segment: SegmentPlan) -> None:
        """For a segment whose LR moves (the budget's final decay), set the LR of every
        step as ``segment.steps()`` yields it. ``begin`` calls it; a loop that does not
        iterate ``segment.steps()`` sets ``segment.lr_at(step)`` itself."""
        shape = getattr(segment, "lr_shape", LRShape.constant)
        add_hook = getattr(segment, "add_step_hook", None)
        if LRShape(shape) is not LRShape.constant and add_hook is not None:
            add_hook(lambda step: self._apply_lr(segment.lr_at(step)))  # type: ignore[attr-defined]

    def end(self, segment: SegmentPlan) -> None:
        """After training a segment: save save_end, then drop the discarded checkpoints
        (and the segment's own start checkpoint)."""
        if segment.save_end:
            self.save(segment.save_end)
        for name in segment.discard:
            self.discard(name)
        start = self._start_name(segment)
        if start is not None:
            self.discard(start)

    def _start_name(self, segment: SegmentPlan) -> str | None:
        segment_id = getattr(segment, "id", None)
        if self.directory is None or segment.restore or not isinstance(segment_id, int):
            return None
        return f"{_START_PREFIX}{segment_id}"

    # ------------------------------------------------------------------ checkpoints

    def save(self, name: str) -> None:
        """Save the current state under ``name``, replacing any checkpoint of that name."""
        state = self._capture()
        if self.directory is None:
            self._memory[name] = copy.deepcopy(state)
            return
        path = self._path(name)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())
            # A crash mid-write leaves the old checkpoint, never a torn one.
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def restore(self, name: str) -> None:
        """Load the state saved under ``name``.

        Raises :class:`CheckpointNotFoundError` when there is none.
        """
        if self.directory is None:
            if name not in self._memory:
                raise CheckpointNotFoundError(
                    f"no checkpoint {name!r} in memory (a restarted job needs "
                    "Checkpointer(..., directory=...) to restore)"
                )
            state = dict(self._memory[name])
            # load_state_dict keeps the optimizer's state tensors rather than copying
            # them: copy, or training would write into the saved checkpoint.
            state["optimizer"] = copy.deepcopy(state["optimizer"])
        else:
            path = self._path(name)
            if not path.exists():
                raise CheckpointNotFoundError(f"no checkpoint {name!r} at {path}")
            # On the CPU first: load_state_dict moves each tensor to its parameter's device.
            state = torch.load(path, map_location="cpu", weights_only=True)
        self._apply(state)

    def discard(self, name: str) -> None:
        """Drop the checkpoint ``name``; nothing happens if there is none."""
        if self.directory is None:
            self._memory.pop(name, None)
        else:
            self._path(name).unlink(missing_ok=True)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if self.directory is None:
            return name in self._memory
        return self._path(name).exists()

    @property
    def names(self) -> list[str]:
        """The names of the checkpoints held, sorted."""
        if self.directory is None:
            return sorted(self._memory)
        names = (_name_of(p) for p in self.directory.glob("*.pt"))
        return sorted(n for n in names if not n.startswith(_START_PREFIX))

    # ------------------------------------------------------------------ state
    # The three methods below are what a framework integration overrides
    # (stagelr.lightning captures through Lightning's strategy); the naming, storage and
    # segment protocol above stay in one place.

    def _apply_lr(self, lr: float) -> None:
        apply_lr(self.optimizer, lr)

    def _capture(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng(),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def _apply(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])

    def _path(self, name: str) -> Path:
        if not name:
            raise ValueError("a checkpoint name must not be empty")
        assert self.directory is not None
        # Names come from the service: quote them so none can leave the directory.
        return self.directory / f"{quote(name, safe='')}.pt"


#: A segment's own start checkpoint on disk (see Checkpointer.begin); service names are
#: never like it.
_START_PREFIX = ".start-"


def _name_of(path: Path) -> str:
    return unquote(path.name.removesuffix(".pt"))


def capture_rng() -> dict[str, Any]:
    """The random state a checkpoint keeps: torch's (and CUDA's once in use), Python's
    and numpy's if it is loaded, as plain values ``torch.load(weights_only=True)`` reads."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    # Only when CUDA is already in use: asking otherwise would start a CUDA context.
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        rng["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        # Plain Python values, which torch.load(weights_only=True) accepts.
        rng["numpy"] = (str(kind), keys.tolist(), int(pos), int(has_gauss), float(cached))
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    """Set the random state :func:`capture_rng` captured."""
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    numpy = sys.modules.get("numpy")
    if "numpy" in rng and numpy is not None:
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        numpy.random.set_state(
            (kind, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, cached)
        )


# At the end: stagelr.distributed imports this module's names lazily, and re-exporting
# here keeps `from stagelr.torch import DistributedTuner` the one import a DDP job needs.
from .distributed import DistributedSegment, DistributedTuner  # noqa: E402
