"""PyTorch Lightning under stagelr: an MLP on scikit-learn's bundled digits, on CPU.

    stagelr serve &                       # or any running server
    python examples/lightning_digits.py --url http://127.0.0.1:8321 --study lit-digits

Needs ``pip install "stagelr[lightning]" scikit-learn`` (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import stagelr
from stagelr.lightning import StagelrCallback


class DigitsMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.loss = nn.CrossEntropyLoss()
        # What each optimizer step trained with; the test compares it with the segments.
        self.trained: list[dict[str, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        optimizer = self.trainer.optimizers[0]
        weights = sum(float(p.detach().double().sum()) for p in self.parameters())
        self.trained.append({"lr": optimizer.param_groups[0]["lr"], "weights": weights})
        return self.loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self.net(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The LR here is only a starting value: every segment sets its own.
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    train, val = torch.utils.data.random_split(
        data, [1400, len(data) - 1400], generator=torch.Generator().manual_seed(0)
    )
    return DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("STAGELR_URL", "http://127.0.0.1:8321"))
    parser.add_argument("--study", default="lit-digits")
    parser.add_argument("--total-steps", type=int, default=300)
    parser.add_argument("--tau0", type=int, default=50)
    parser.add_argument("--out", help="write what was trained here (JSON)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    module = DigitsMLP()
    train, val = loaders()
    with stagelr.Tuner(
        args.url,
        study=args.study,
        lr_min=1e-3,
        lr_max=1.0,
        total_steps=args.total_steps,
        tau0=args.tau0,
        tau_max=args.tau0 * 2,
        explore_ratio=0.2,
        k=3,
    ) as tuner:
        callback = StagelrCallback(tuner)
        trainer = pl.Trainer(
            max_epochs=-1,  # the study's end stops training
            callbacks=[callback],
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, train, val)
        study = tuner.study()
    print(f"study {study.id} {study.status.value}: {len(callback.segments)} segments")
    for stage in study.stages:
        print(f"stage {stage.index}: lr={stage.chosen_lr}")
    if args.out:
        record = {
            "study_id": study.id,
            "trained": module.trained,
            "segments": [s.model_dump(mode="json") for s in callback.segments],
            "restores": callback.restores,
        }
        Path(args.out).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
