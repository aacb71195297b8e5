"""Hugging Face Trainer under stagelr: a tiny BERT, randomly initialized, on CPU.

The model is built from a config (no weights are downloaded) and learns a synthetic
task: is the first token in the lower half of the vocabulary?

    stagelr serve &                       # or any running server
    HF_HUB_OFFLINE=1 python examples/hf_trainer.py --url http://127.0.0.1:8321

Needs ``pip install "stagelr[transformers]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import stagelr
from stagelr.transformers import StagelrCallback

VOCAB, LENGTH = 64, 12


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
        self.labels = (self.ids[:, 0] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class RecordLR(TrainerCallback):  # type: ignore[misc]
    """What each optimizer step trained with (the test compares it with the segments)."""

    def __init__(self) -> None:
        self.trained: list[dict[str, float]] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        weights = sum(float(p.detach().double().sum()) for p in kwargs["model"].parameters())
        lr = kwargs["optimizer"].param_groups[0]["lr"]
        self.trained.append({"lr": lr, "weights": weights})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("STAGELR_URL", "http://127.0.0.1:8321"))
    parser.add_argument("--study", default="hf-tiny-bert")
    parser.add_argument("--total-steps", type=int, default=200)
    parser.add_argument("--tau0", type=int, default=40)
    parser.add_argument("--out", help="write what was trained here (JSON)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    recorder = RecordLR()
    with (
        stagelr.Tuner(
            args.url,
            study=args.study,
            lr_min=1e-5,
            lr_max=1e-1,
            total_steps=args.total_steps,
            tau0=args.tau0,
            tau_max=args.tau0 * 2,
            explore_ratio=0.2,
            k=3,
        ) as tuner,
        tempfile.TemporaryDirectory() as output_dir,
    ):
        callback = StagelrCallback(tuner)
        training = TrainingArguments(
            output_dir=output_dir,
            max_steps=100_000,  # a bound: the study's end stops training first
            lr_scheduler_type="constant",  # the LR is stagelr's
            per_device_train_batch_size=32,
            per_device_eval_batch_size=256,
            eval_strategy="no",  # the callback asks for evaluations on the segments' cadence
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=Tokens(2048, seed=1),
            eval_dataset=Tokens(256, seed=2),
            callbacks=[callback, recorder],  # the recorder sees the LR stagelr set
        )
        trainer.remove_callback(PrinterCallback)  # it would print every evaluation
        trainer.train()
        study = tuner.study()
    print(f"study {study.id} {study.status.value}: {len(callback.segments)} segments")
    for stage in study.stages:
        print(f"stage {stage.index}: lr={stage.chosen_lr}")
    if args.out:
        record = {
            "study_id": study.id,
            "trained": recorder.trained,
            "segments": [s.model_dump(mode="json") for s in callback.segments],
            "restores": callback.restores,
        }
        Path(args.out).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
