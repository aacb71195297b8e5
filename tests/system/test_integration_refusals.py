"""What the integrations refuse, and how a failing rank 0 stops every rank."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

import stagelr

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def tuner(url: str, study: str) -> stagelr.Tuner:
    return stagelr.Tuner(
        url, study=study, lr_min=1e-3, lr_max=1.0, total_steps=40, tau0=10, explore_ratio=0.1
    )


def studies_named(url: str, name: str) -> list[Any]:
    # The name search: the shared server holds every module's studies, beyond one page.
    studies = httpx.get(f"{url}/v1/studies", params={"name": name}, timeout=30).json()["studies"]
    return [s for s in studies if s["name"] == name]


# Lightning's own use of torch.utils._pytree under torch 2.13 warns; not ours to fix.
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
def test_lightning_refuses_a_module_with_an_lr_scheduler(live_server, tmp_path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from stagelr.lightning import StagelrCallback

    class Scheduled(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=5)]

    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8)
    with tuner(live_server.url, "lightning-scheduled") as t:
        trainer = pl.Trainer(
            max_steps=20,
            callbacks=[StagelrCallback(t)],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
        )
        with pytest.raises(ValueError, match="remove the LR scheduler"):
            trainer.fit(Scheduled(), data)
    # Refused before asking the service anything.
    assert studies_named(live_server.url, "lightning-scheduled") == []


def test_the_hf_callback_refuses_a_non_constant_schedule(live_server, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from stagelr.transformers import StagelrCallback

    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    rows = [{"input_ids": [1, 2, 3, 4], "labels": i % 2} for i in range(16)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=10,
        lr_scheduler_type="linear",
        report_to=[],
        use_cpu=True,
    )
    with tuner(live_server.url, "hf-linear") as t:
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=rows, callbacks=[StagelrCallback(t)]
        )
        with pytest.raises(ValueError, match="lr_scheduler_type='constant'"):
            trainer.train()
    assert studies_named(live_server.url, "hf-linear") == []


RANKS = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import stagelr
    from stagelr.torch import DistributedTuner
    from stagelr.distributed import RankZeroError

    def worker(rank, url, port, out):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=2)
        # lr_max differs from the stored study's: the service answers 409 to rank 0.
        tuner = DistributedTuner(stagelr.Tuner(url, study="ddp-clash", lr_min=1e-3, lr_max=0.5,
                                               total_steps=40, tau0=10, explore_ratio=0.1))
        try:
            with tuner:
                tuner.next_segment()
            outcome = "no error"
        except RankZeroError as exc:
            outcome = "RankZeroError: " + str(exc)
        except stagelr.ConflictError as exc:
            outcome = "ConflictError: " + exc.slug
        with open(f"{out}/rank{rank}.txt", "w") as f:
            f.write(outcome)
        dist.destroy_process_group()

    if __name__ == "__main__":
        url, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        mp.spawn(worker, args=(url, port, out), nprocs=2, join=True)
    """
)


def test_when_rank_zero_fails_every_rank_stops_with_an_error(live_server, tmp_path) -> None:
    from stagelr_service.server import free_port

    with tuner(live_server.url, "ddp-clash") as t:
        t.study()  # the stored study: lr_max 1.0
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    done = subprocess.run(
        [sys.executable, str(script), live_server.url, str(free_port()), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "rank0.txt").read_text() == "ConflictError: config-mismatch"
    assert (tmp_path / "rank1.txt").read_text().startswith("RankZeroError")
