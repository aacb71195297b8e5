"""PyTorch Lightning: train a LightningModule under stagelr with one callback.

::

    import lightning.pytorch as pl
    import stagelr
    from stagelr.lightning import StagelrCallback

    tuner = stagelr.Tuner(url, study="lit-run", lr_min=1e-4, lr_max=1.0, total_steps=5000)
    trainer = pl.Trainer(max_epochs=-1, callbacks=[StagelrCallback(tuner)])
    trainer.fit(module, train_loader, val_loader)    # ends when the study ends
    tuner.close()

Per segment the callback restores and saves checkpoints through Lightning's own state
(the strategy's model state dict, every optimizer's state, the precision plugin's
scaler, and the RNGs; in memory, or on disk with ``directory=``), sets the segment's LR on
every param group of every optimizer right after the restore, reports the loss the
segment asks for on its cadence (``segment.report_due``), and moves to the next segment
once the segment's steps are trained or it should stop. When the study ends, training
stops (``trainer.should_stop``).

The validation loss is the mean of what ``validation_step`` returns (a loss tensor, or a
mapping with ``"loss"`` or ``"val_loss"``) over the validation dataloader given to
``fit`` (or the datamodule's); ``self.log`` calls inside it are skipped there, since
Lightning's own validation loop logs them. Give ``val_loss=`` to compute it another way.
The training loss, when a segment asks for it, is what ``training_step`` returned.

The LR belongs to stagelr: a module whose ``configure_optimizers`` returns an LR
scheduler is refused at the start of training. Under DDP (Lightning's ``ddp`` strategy)
only rank 0 talks to the service; the plan reaches every rank through
:class:`stagelr.torch.DistributedTuner`.

Needs ``pip install "stagelr[lightning]"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'stagelr.lightning needs PyTorch Lightning: pip install "stagelr[lightning]"'
    ) from exc

import torch

from ._tuner import Tuner
from .distributed import DistributedSegment, DistributedTuner
from .models import LRShape, Metric
from .torch import Checkpointer, apply_lr, capture_rng, restore_rng

__all__ = ["LightningCheckpointer", "StagelrCallback"]

logger = logging.getLogger("stagelr")

ValLoss = Callable[["pl.Trainer", "pl.LightningModule"], float]


class LightningCheckpointer(Checkpointer):
    """A :class:`stagelr.torch.Checkpointer` that captures through Lightning's strategy.

    The state is what a Lightning checkpoint holds of the training itself: the module's
    state dict as the strategy gives it, each configured optimizer's state, and the
    precision plugin's (the grad scaler under 16-bit mixed precision), plus the RNGs.
    """

    def __init__(
        self, trainer: pl.Trainer, *, directory: str | os.PathLike[str] | None = None
    ) -> None:
        if not trainer.optimizers:
            raise ValueError("the trainer has no optimizer: configure_optimizers returned none")
        super().__init__(trainer.lightning_module, trainer.optimizers[0], directory=directory)
        self.trainer = trainer

    def _apply_lr(self, lr: float) -> None:
        for optimizer in self.trainer.optimizers:
            apply_lr(optimizer, lr)

    def _capture(self) -> dict[str, Any]:
        strategy = self.trainer.strategy
        return {
            "model": strategy.lightning_module_state_dict(),
            # Under the key the base class copies on an in-memory restore.
            "optimizer": [strategy.optimizer_state(o) for o in self.trainer.optimizers],
            "precision": self.trainer.precision_plugin.state_dict(),
            "rng": capture_rng(),
        }

    def _apply(self, state: dict[str, Any]) -> None:
        strategy = self.trainer.strategy
        strategy.load_model_state_dict({"state_dict": state["model"]})
        strategy.load_optimizer_state_dict({"optimizer_states": state["optimizer"]})
        if state.get("precision"):
            self.trainer.precision_plugin.load_state_dict(state["precision"])
        restore_rng(state["rng"])


class StagelrCallback(pl.Callback):
    """Run ``trainer.fit`` under a :class:`stagelr.Tuner`, segment by segment.

    Args:
        tuner: The study's tuner (a plain :class:`stagelr.Tuner`, or a
            :class:`stagelr.torch.DistributedTuner`; a plain one is wrapped, so DDP works
            either way). The callback does not close it.
        val_loss: ``(trainer, module) -> float``; by default, the mean of
            ``validation_step``'s returned loss over the validation dataloader.
        directory: Keep checkpoints as files there instead of in memory.

    Attributes:
        segments: The segments trained, in order (their final views).
        restores: The checkpoint names restored, in order.
    """

    def __init__(
        self,
        tuner: Tuner | DistributedTuner,
        *,
        val_loss: ValLoss | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.tuner = tuner if isinstance(tuner, DistributedTuner) else DistributedTuner(tuner)
        self.val_loss = val_loss or validation_loss
        self.directory = directory
        self.segments: list[Any] = []
        self.restores: list[str] = []
        self._checkpointer: LightningCheckpointer | None = None
        self._segment: DistributedSegment | None = None
        self._step = 0
        self._global_step = 0

    @property
    def segment(self) -> DistributedSegment | None:
        """The segment being trained (its ``data_seed`` may drive a data order)."""
        return self._segment

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.lr_scheduler_configs:
            raise ValueError(
                "stagelr sets the learning rate every segment: remove the LR scheduler "
                "that configure_optimizers returns"
            )
        self._checkpointer = LightningCheckpointer(trainer, directory=self.directory)
        self._global_step = trainer.global_step
        self._next(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        segment = self._segment
        if segment is not None and segment.lr_shape is not LRShape.constant:
            # A decaying segment: the LR of the optimizer step this batch belongs to.
            assert self._checkpointer is not None
            self._checkpointer._apply_lr(segment.lr_at(self._step + 1))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        segment = self._segment
        # An optimizer step, not a batch: under gradient accumulation they differ.
        if segment is None or trainer.global_step == self._global_step:
            return
        self._global_step = trainer.global_step
        self._step += 1
        step = self._step
        if segment.report_due(step):
            if segment.metric is Metric.train_loss:
                value = _loss_of(outputs, "training_step")
            else:
                value = self.val_loss(trainer, pl_module)
            segment.report(step, value)
        if step >= segment.planned_steps or segment.should_stop:
            self._finish(trainer, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._segment is not None:
            # max_steps or max_epochs came first: the segment stays open, so that a
            # restarted job (with checkpoints on disk) resumes it.
            logger.warning(
                "training ended before the study did: segment %d left open after %d of "
                "%d steps (raise max_steps/max_epochs; the study's end stops training)",
                self._segment.id,
                self._step,
                self._segment.planned_steps,
            )

    # ------------------------------------------------------------------ segments

    def _finish(self, trainer: pl.Trainer, step: int) -> None:
        segment, checkpointer = self._segment, self._checkpointer
        assert segment is not None and checkpointer is not None
        checkpointer.end(segment)
        segment.complete(step)
        self.segments.append(segment.view)
        self._next(trainer)

    def _next(self, trainer: pl.Trainer) -> None:
        assert self._checkpointer is not None
        self._segment = self.tuner.next_segment()
        self._step = 0
        if self._segment is None:
            trainer.should_stop = True
            return
        if self._segment.restore:
            self.restores.append(self._segment.restore)
        self._checkpointer.begin(self._segment)


def validation_loss(trainer: pl.Trainer, module: pl.LightningModule) -> float:
    """The mean loss ``validation_step`` returns over the validation dataloader(s)."""
    loaders = list(_val_loaders(trainer, module))
    if not loaders:
        raise ValueError(
            "no validation data: pass val_dataloaders to trainer.fit (or a datamodule with "
            "val_dataloader), or give StagelrCallback(val_loss=...)"
        )
    total, count = 0.0, 0
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), trainer.precision_plugin.val_step_context(), _no_logging(module):
            for loader_idx, loader in enumerate(loaders):
                for batch_idx, raw in enumerate(loader):
                    batch = trainer.strategy.batch_to_device(raw, dataloader_idx=loader_idx)
                    if len(loaders) > 1:
                        out = module.validation_step(batch, batch_idx, loader_idx)
                    else:
                        out = module.validation_step(batch, batch_idx)
                    total += _loss_of(out, "validation_step")
                    count += 1
    finally:
        module.train(was_training)
    return total / count if count else float("nan")


def _val_loaders(trainer: pl.Trainer, module: pl.LightningModule) -> Iterator[Iterable[Any]]:
    loaders: Any = trainer.val_dataloaders
    if loaders is None:
        # Lightning loads them lazily; with limit_val_batches=0 it never does.
        datamodule = getattr(trainer, "datamodule", None)  # set by fit, not declared
        source = datamodule if datamodule is not None else module
        try:
            loaders = source.val_dataloader()
        except Exception:  # the default hook raises when it is not overridden
            return
    if isinstance(loaders, Mapping):
        yield from loaders.values()
    elif isinstance(loaders, list | tuple):
        yield from loaders
    else:
        yield loaders


def _loss_of(output: Any, hook: str) -> float:
    if isinstance(output, Mapping):
        output = output.get("loss", output.get("val_loss"))
    if isinstance(output, torch.Tensor):
        return float(output.detach().float().mean())
    if isinstance(output, int | float):
        return float(output)
    raise TypeError(
        f"{hook} returned {type(output).__name__}: return the loss (a tensor, or a dict "
        "with 'loss'), or give StagelrCallback(val_loss=...)"
    )


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


@contextmanager
def _no_logging(module: pl.LightningModule) -> Iterator[None]:
    # self.log outside Lightning's own loops would land in the training results (or
    # raise); an instance attribute shadows the method for the duration.
    attrs = vars(module)
    attrs["log"] = attrs["log_dict"] = _ignore
    try:
        yield
    finally:
        attrs.pop("log", None)
        attrs.pop("log_dict", None)
