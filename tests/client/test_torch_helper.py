"""stagelr.torch: checkpoints by the segment's names, and the LR applied after a restore."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stagelr.models import SegmentView
from stagelr.torch import Checkpointer, CheckpointNotFoundError, apply_lr


def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    # Two param groups, so that "every group" means something.
    groups: list[dict[str, Any]] = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.2}]
    optimizer = torch.optim.Adam(groups, lr=0.1)
    return model, optimizer


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        x = torch.rand(8, 4)  # drawn from the global RNG, so a restored RNG repeats it
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Independent copies of the model's tensors and the optimizer's state tensors."""
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for i, per_param in optimizer.state_dict()["state"].items():
        for k, v in per_param.items():
            state[f"opt.{i}.{k}"] = v.clone() if isinstance(v, torch.Tensor) else v
    return state


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def plan(**fields: Any) -> SegmentView:
    values: dict[str, Any] = {
        "id": 1,
        "study_id": 1,
        "seq": 0,
        "stage": 0,
        "index": 0,
        "kind": "explore",
        "status": "open",
        "lr": 0.01,
        "steps": 10,
        "start_step": 0,
        "horizon": 100,
        "metric": "val_loss",
        "report_every": 2,
        "data_seed": 0,
    }
    values.update(fields)
    return SegmentView.model_validate(values)


@pytest.fixture(params=["memory", "disk"])
def checkpointer(request: pytest.FixtureRequest, tmp_path: Path) -> Checkpointer:
    model, optimizer = make_model()
    directory = tmp_path / "ckpt" if request.param == "disk" else None
    return Checkpointer(model, optimizer, directory=directory)


# --------------------------------------------------------------------------- restore


def test_restore_brings_back_model_and_optimizer_state(checkpointer: Checkpointer) -> None:
    model, optimizer = checkpointer.model, checkpointer.optimizer
    train(model, optimizer, 3)
    saved = snapshot(model, optimizer)
    checkpointer.save("start")
    train(model, optimizer, 3)

    checkpointer.restore("start")

    assert_same(snapshot(model, optimizer), saved)


def test_restore_brings_back_the_torch_rng(checkpointer: Checkpointer) -> None:
    checkpointer.save("start")
    expected = torch.rand(5)

    checkpointer.restore("start")

    assert torch.equal(torch.rand(5), expected)


def test_restore_brings_back_python_random(checkpointer: Checkpointer) -> None:
    checkpointer.save("start")
    expected = [random.random() for _ in range(3)]

    checkpointer.restore("start")

    assert [random.random() for _ in range(3)] == expected


def test_restore_brings_back_numpy_rng_when_numpy_is_loaded(checkpointer: Checkpointer) -> None:
    checkpointer.save("start")
    expected = np.random.rand(3)

    checkpointer.restore("start")

    assert np.array_equal(np.random.rand(3), expected)


def test_training_again_after_restore_repeats_the_same_steps(checkpointer: Checkpointer) -> None:
    model, optimizer = checkpointer.model, checkpointer.optimizer
    train(model, optimizer, 2)
    checkpointer.save("start")
    train(model, optimizer, 4)
    first = snapshot(model, optimizer)

    checkpointer.restore("start")
    train(model, optimizer, 4)

    assert_same(snapshot(model, optimizer), first)


def test_restoring_twice_gives_the_same_state(checkpointer: Checkpointer) -> None:
    # Each candidate of a stage restores the same stage-start checkpoint.
    model, optimizer = checkpointer.model, checkpointer.optimizer
    train(model, optimizer, 2)
    saved = snapshot(model, optimizer)
    checkpointer.save("start")
    checkpointer.restore("start")
    train(model, optimizer, 3)

    checkpointer.restore("start")

    assert_same(snapshot(model, optimizer), saved)


def test_saved_checkpoint_is_not_changed_by_later_training() -> None:
    model, optimizer = make_model()
    checkpointer = Checkpointer(model, optimizer)
    train(model, optimizer, 2)
    checkpointer.save("start")
    held = checkpointer._memory["start"]
    before = {k: v.clone() for k, v in held["model"].items()}
    exp_avg_before = held["optimizer"]["state"][0]["exp_avg"].clone()

    train(model, optimizer, 3)

    assert all(torch.equal(held["model"][k], v) for k, v in before.items())
    assert torch.equal(held["optimizer"]["state"][0]["exp_avg"], exp_avg_before)


def test_grad_scaler_state_is_saved_and_restored() -> None:
    model, optimizer = make_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    checkpointer = Checkpointer(model, optimizer, scaler=scaler)
    checkpointer.save("start")
    scaler.load_state_dict({**scaler.state_dict(), "scale": 4.0})

    checkpointer.restore("start")

    assert scaler.get_scale() == 1024.0


def test_restoring_an_unknown_name_raises(checkpointer: Checkpointer) -> None:
    with pytest.raises(CheckpointNotFoundError):
        checkpointer.restore("never-saved")


# --------------------------------------------------------------------------- disk


def test_a_new_checkpointer_restores_from_disk(tmp_path: Path) -> None:
    model, optimizer = make_model()
    train(model, optimizer, 3)
    saved = snapshot(model, optimizer)
    Checkpointer(model, optimizer, directory=tmp_path).save("stage-0/start")

    # A restarted job: fresh model and optimizer, same directory.
    model2, optimizer2 = make_model()
    Checkpointer(model2, optimizer2, directory=tmp_path).restore("stage-0/start")

    assert_same(snapshot(model2, optimizer2), saved)


def test_disk_checkpoint_is_one_file_and_no_temporary_is_left(tmp_path: Path) -> None:
    model, optimizer = make_model()
    checkpointer = Checkpointer(model, optimizer, directory=tmp_path)

    checkpointer.save("start")
    checkpointer.save("start")

    assert [p.name for p in tmp_path.iterdir()] == ["start.pt"]


def test_a_name_cannot_leave_the_directory(tmp_path: Path) -> None:
    model, optimizer = make_model()
    checkpointer = Checkpointer(model, optimizer, directory=tmp_path / "ckpt")

    checkpointer.save("../escape")

    assert not (tmp_path / "escape.pt").exists()
    assert checkpointer.names == ["../escape"]


# --------------------------------------------------------------------------- segments


def test_begin_applies_the_segment_lr_after_a_restore(checkpointer: Checkpointer) -> None:
    apply_lr(checkpointer.optimizer, 0.5)
    checkpointer.save("start")

    checkpointer.begin(plan(restore="start", lr=0.01))

    assert [g["lr"] for g in checkpointer.optimizer.param_groups] == [0.01, 0.01]


def test_begin_saves_save_start_from_the_restored_state(checkpointer: Checkpointer) -> None:
    model, optimizer = checkpointer.model, checkpointer.optimizer
    checkpointer.save("stage-start")
    saved = snapshot(model, optimizer)
    train(model, optimizer, 2)

    checkpointer.begin(plan(restore="stage-start", save_start="copy"))
    train(model, optimizer, 2)
    checkpointer.restore("copy")

    assert_same(snapshot(model, optimizer), saved)


def test_end_saves_save_end(checkpointer: Checkpointer) -> None:
    checkpointer.end(plan(save_end="after"))

    assert "after" in checkpointer


def test_end_drops_the_discarded_checkpoints(checkpointer: Checkpointer) -> None:
    checkpointer.save("old")
    checkpointer.save("kept")

    checkpointer.end(plan(discard=["old", "never-saved"]))

    assert checkpointer.names == ["kept"]


# --------------------------------------------------------------------------- apply_lr


def test_apply_lr_sets_initial_lr_for_schedulers() -> None:
    model, optimizer = make_model()
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)

    apply_lr(optimizer, 0.03)

    assert [(g["lr"], g["initial_lr"]) for g in optimizer.param_groups] == [(0.03, 0.03)] * 2


def test_apply_lr_fills_a_tensor_lr_in_place() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.1))
    lr_tensor = optimizer.param_groups[0]["lr"]

    apply_lr(optimizer, 0.03)

    assert optimizer.param_groups[0]["lr"] is lr_tensor
    assert lr_tensor.item() == pytest.approx(0.03)


# ------------------------------------------------------------------ decay and data order


def test_begin_makes_a_decaying_segment_set_the_lr_of_every_step() -> None:
    from stagelr._segment import Segment

    model, optimizer = make_model()
    view = plan(kind="exploit", lr=0.4, steps=4, lr_end=0.0, lr_shape="linear")
    segment = Segment(view, client=None, sender=None)  # type: ignore[arg-type]
    Checkpointer(model, optimizer).begin(segment)
    seen = []
    for _ in segment.steps():
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.4, 0.3, 0.2, 0.1])


def test_a_constant_segment_keeps_its_lr() -> None:
    from stagelr._segment import Segment

    model, optimizer = make_model()
    segment = Segment(plan(lr=0.25, steps=3), client=None, sender=None)  # type: ignore[arg-type]
    Checkpointer(model, optimizer).begin(segment)
    assert [optimizer.param_groups[0]["lr"] for _ in segment.steps()] == [0.25] * 3


def test_the_segment_sampler_gives_equal_batches_for_equal_data_seeds() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from stagelr.torch import SegmentSampler

    data = TensorDataset(torch.arange(50))
    sampler = SegmentSampler(len(data))
    loader = DataLoader(data, batch_size=10, sampler=sampler)
    model, optimizer = make_model()
    checkpointer = Checkpointer(model, optimizer, sampler=sampler)

    def order(seed: int) -> list[int]:
        checkpointer.begin(plan(data_seed=seed))
        return [int(x) for (batch,) in loader for x in batch]

    first, again, other = order(7), order(7), order(8)
    assert first == again and sorted(first) == list(range(50))
    assert first != other
    # a second pass of the same segment is a new permutation, not a repeat
    sampler.set_segment(plan(data_seed=7))
    one, two = list(sampler), list(sampler)
    assert one == first and two != one
