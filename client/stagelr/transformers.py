"""Hugging Face Transformers: train with ``Trainer`` under stagelr with one callback.

::

    import stagelr
    from stagelr.transformers import StagelrCallback

    tuner = stagelr.Tuner(url, study="bert-run", lr_min=1e-6, lr_max=1e-3, total_steps=5000)
    args = TrainingArguments(output_dir, max_steps=100_000, lr_scheduler_type="constant",
                             eval_strategy="no", save_strategy="no")
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=val,
                      callbacks=[StagelrCallback(tuner)])
    trainer.train()                                   # ends when the study ends
    tuner.close()

Per segment the callback restores and saves the model and the optimizer (and the RNGs)
with :class:`stagelr.torch.Checkpointer` (in memory, or on disk with ``directory=``),
sets the segment's LR on every param group right after the restore, and asks the Trainer
for what the segment reports on its cadence: an evaluation (``control.should_evaluate``;
its ``eval_loss`` is reported) for a validation-loss segment, a log
(``control.should_log``; the training loss averaged since the last log) for a
training-loss one. Once the segment's steps are trained and reported it moves to the
next segment; when the study ends, training stops (``control.should_training_stop``).

The LR belongs to stagelr: use ``lr_scheduler_type="constant"`` (any other schedule is
refused at the start of training) and set ``max_steps`` above the steps the study will
charge, search included; the study's end stops training first. Under distributed
training (``torchrun``, accelerate) only rank 0 talks to the service; the plan reaches
every rank through :class:`stagelr.torch.DistributedTuner`.

Needs ``pip install "stagelr[transformers]"``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

try:
    from transformers import (
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'stagelr.transformers needs Hugging Face Transformers: pip install "stagelr[transformers]"'
    ) from exc

import torch

from ._tuner import Tuner
from .distributed import DistributedSegment, DistributedTuner
from .models import LRShape, Metric, SegmentView
from .torch import Checkpointer, apply_lr

__all__ = ["StagelrCallback"]

logger = logging.getLogger("stagelr")


class _TrainerCheckpointer(Checkpointer):
    """The Trainer's optimizer plus its (constant) scheduler, whose base LRs must follow."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        directory: str | os.PathLike[str] | None,
    ) -> None:
        super().__init__(model, optimizer, directory=directory)
        # accelerate wraps the scheduler; the torch scheduler is inside.
        self.scheduler = getattr(scheduler, "scheduler", scheduler)

    def _apply_lr(self, lr: float) -> None:
        apply_lr(self.optimizer, lr)
        # The Trainer steps its scheduler after every optimizer step, and a constant
        # LambdaLR sets each group's LR back to its base LR: that base must be ours.
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)


class StagelrCallback(TrainerCallback):
    """Run ``Trainer.train`` under a :class:`stagelr.Tuner`, segment by segment.

    Args:
        tuner: The study's tuner (a plain :class:`stagelr.Tuner` is wrapped in a
            :class:`stagelr.torch.DistributedTuner`, so distributed runs work either way).
            The callback does not close it.
        directory: Keep checkpoints as files there instead of in memory.

    Attributes:
        segments: The segments trained, in order (their final views).
        restores: The checkpoint names restored, in order.
    """

    def __init__(
        self,
        tuner: Tuner | DistributedTuner,
        *,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self.tuner = tuner if isinstance(tuner, DistributedTuner) else DistributedTuner(tuner)
        self.directory = directory
        self.segments: list[SegmentView] = []
        self.restores: list[str] = []
        self._checkpointer: _TrainerCheckpointer | None = None
        self._segment: DistributedSegment | None = None
        self._step = 0
        self._pending: int | None = None  # the step whose report the Trainer is producing

    @property
    def segment(self) -> DistributedSegment | None:
        """The segment being trained (its ``data_seed`` may drive a data order)."""
        return self._segment

    # ------------------------------------------------------------------ events

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl:
        schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        if schedule != "constant":
            raise ValueError(
                f"stagelr sets the learning rate every segment, and lr_scheduler_type="
                f"{schedule!r} would change it: use TrainingArguments(lr_scheduler_type="
                "'constant')"
            )
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None or optimizer is None:
            raise RuntimeError("the Trainer passed no model or optimizer to on_train_begin")
        self._checkpointer = _TrainerCheckpointer(
            model, optimizer, kwargs.get("lr_scheduler"), self.directory
        )
        self._next(control)
        return control

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl:
        segment = self._segment
        if segment is not None and segment.lr_shape is not LRShape.constant:
            # A decaying segment: the LR of the step about to run.
            assert self._checkpointer is not None
            self._checkpointer._apply_lr(segment.lr_at(self._step + 1))
        return control

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl:
        segment = self._segment
        if segment is None:
            return control
        self._step += 1
        if segment.report_due(self._step):
            # The Trainer evaluates or logs right after this event; on_evaluate / on_log
            # report the figure and end the segment if this was its last step.
            self._pending = self._step
            if segment.metric is Metric.train_loss:
                control.should_log = True
            else:
                control.should_evaluate = True
        elif self._step >= segment.planned_steps or segment.should_stop:
            self._finish(control)
        return control

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        segment = self._segment
        if segment is None or self._pending is None or segment.metric is Metric.train_loss:
            return control
        if not metrics or "eval_loss" not in metrics:
            raise ValueError(
                "the evaluation gave no eval_loss: the model must return a loss (give it "
                "labels), and the Trainer needs an eval_dataset"
            )
        self._report(metrics["eval_loss"], control)
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        segment = self._segment
        if segment is None or self._pending is None or segment.metric is not Metric.train_loss:
            return control
        if logs and "loss" in logs:  # a training log, not an evaluation's
            self._report(logs["loss"], control)
        return control

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl:
        if self._segment is not None:
            logger.warning(
                "training ended before the study did: segment %d left open after %d of "
                "%d steps (raise max_steps; the study's end stops training)",
                self._segment.id,
                self._step,
                self._segment.planned_steps,
            )
        return control

    # ------------------------------------------------------------------ segments

    def _report(self, value: float, control: TrainerControl) -> None:
        segment, step = self._segment, self._pending
        assert segment is not None and step is not None
        self._pending = None
        segment.report(step, value)
        if step >= segment.planned_steps or segment.should_stop:
            self._finish(control)

    def _finish(self, control: TrainerControl) -> None:
        segment, checkpointer = self._segment, self._checkpointer
        assert segment is not None and checkpointer is not None
        checkpointer.end(segment)
        segment.complete(self._step)
        self.segments.append(segment.view)
        self._next(control)

    def _next(self, control: TrainerControl) -> None:
        assert self._checkpointer is not None
        self._segment = self.tuner.next_segment()
        self._step = 0
        self._pending = None
        if self._segment is None:
            control.should_training_stop = True
            return
        if self._segment.restore:
            self.restores.append(self._segment.restore)
        self._checkpointer.begin(self._segment)
