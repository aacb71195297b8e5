"""stagelr's presets on a workload, through the real client against a live server.

The job is the same as the baselines' (``workloads``); the service decides every LR.
Each run is one study in the benchmark's SQLite database, named so that a rerun never
resumes a half-finished one.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import stagelr

from .methods import Run, eval_every
from .workloads import Variant, make_job

#: The LR search range is the span of the variant's Tier A grid, the same prior the grid
#: gets (unless an ablation turns on the range test, which finds its own). A fine-tune's
#: job says that it starts from a trained model (``pretrained``), as its user would: the
#: workloads below pretrain their model inside the benchmark. Nothing else of a preset
#: changes with the workload.
PRETRAINED_WORKLOADS = frozenset(
    {"charrnn-ft", "charmlp-ft", "convlm-ft", "cnn-ft", "patchae-ft", "lorenz-ft", "roll-ft"}
)
#:
#: The stagelr rows of the benchmark: method -> (preset, charged budget as a multiple of
#: T, or None). With a budget the study is told the job's whole compute
#: (``charged_steps``) and fits its search and trajectory into it: ``default`` at T is
#: the equal-compute run; at 1.5T, 2T and 3T the runs its steps-to-target is read from
#: (the smallest budget whose run ends at or below the target). ``autolrs`` is the
#: published method: T training steps, its search on top.
METHODS: dict[str, tuple[str, float | None]] = {
    "stagelr-default": ("default", 1.0),
    "stagelr-default-1.5t": ("default", 1.5),
    "stagelr-default-2t": ("default", 2.0),
    "stagelr-default-3t": ("default", 3.0),
    "stagelr-autolrs": ("autolrs", None),
}


def preset_overrides(preset: str, steps: int) -> dict[str, Any]:
    """``autolrs`` with tau rescaled to the budget (tau0 = T/16, tau_max = T/4);
    ``default`` exactly as shipped. Tiny smoke budgets keep tau0 large enough for a
    one-step explore window."""
    if preset == "autolrs":
        tau0 = max(10, steps // 16)
        return {"tau0": tau0, "tau_max": max(tau0, steps // 4)}
    return {}


def job_facts(variant: Variant) -> dict[str, Any]:
    """What the variant's job tells the service about itself: ``pretrained`` for a
    fine-tune (every preset reads it; only ``default`` acts on it)."""
    return {"pretrained": True} if variant.workload in PRETRAINED_WORKLOADS else {}


def _use_data_seed(job: Any, base_seed: int, segment: Any) -> None:
    """Draw an explore segment's batches from its ``data_seed`` (what a job's
    ``stagelr.torch.SegmentSampler`` does); training segments keep the run's own data
    order, the one the baselines see. The workloads draw step ``t``'s batch (or NQM's
    gradient noise) from ``(job.seed, t)``, so the seed is what changes."""
    if segment.kind == "explore":
        job.seed = 1_000_000 + segment.data_seed % 2**20
    else:
        job.seed = base_seed
    if hasattr(job, "_epoch"):
        job._epoch = -1  # the digits job caches its epoch's order


def run_stagelr(
    url: str,
    variant: Variant,
    seed: int,
    preset: str,
    study_prefix: str = "quality",
    overrides: dict[str, Any] | None = None,
    budget: float | None = None,
) -> Run:
    """Train one seed of ``variant`` under ``preset`` (with config ``overrides``, for an
    ablation); every step and evaluation counted. ``budget``: the study's charged budget
    as a multiple of T (``charged_steps``); None: ``total_steps`` = T, the search on top."""
    job = make_job(variant, seed)
    checkpoints = job.checkpointer()
    steps = variant.steps
    every = eval_every(variant)
    label = preset if budget is None else f"{preset}-{budget:g}t"
    name = f"{study_prefix}/{variant.name}/{label}/seed{seed}/{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    curve = [(0, 0, job.val_loss())]
    charged = 0
    tuner_evals = 0
    diverged = False
    lr_path: list[tuple[int, float]] = []
    config = {**preset_overrides(preset, steps), **job_facts(variant), **(overrides or {})}
    if budget is not None:
        config["charged_steps"] = round(budget * steps)
    if config.get("lr_bounds") != "range_test":
        # A range test is the tuner's own way to bounds: it gets none from the grid.
        config.update(lr_min=min(variant.grid), lr_max=max(variant.grid))
    with stagelr.Tuner(
        url,
        study=name,
        preset=preset,  # type: ignore[arg-type]
        # With a charged budget the service fits the trajectory to it.
        total_steps=None if "charged_steps" in config else steps,
        seed=seed,
        **config,
    ) as tuner:
        for segment in tuner:
            checkpoints.begin(segment)
            _use_data_seed(job, seed, segment)
            exploit = segment.kind == "exploit"
            decaying = exploit and segment.lr_shape != "constant"
            if exploit and (not lr_path or lr_path[-1][1] != segment.lr):
                # A segment that continues a candidate (continue_best) starts
                # horizon - steps into its stage, at the LR the candidate had.
                offset = segment.horizon - segment.planned_steps
                lr_path.append((segment.start_step - offset, segment.lr))
            for step in segment.steps():
                t = segment.start_step + step - 1
                lr = segment.lr_at(step)
                if decaying and step > 1 and (step - 1) % max(1, segment.planned_steps // 25) == 0:
                    lr_path.append((t, lr))
                loss = job.train_step(t, lr)
                charged += 1
                if exploit and not math.isfinite(loss):
                    diverged = True
                    break
                if exploit and ((t + 1) % every == 0 or t + 1 == steps):
                    curve.append((t + 1, charged, job.val_loss()))
                if segment.report_due(step):
                    if segment.metric == "train_loss":
                        value = loss
                    else:
                        value = job.val_loss()
                        tuner_evals += 1
                    segment.report(step, value)
            if diverged:
                # The trajectory itself blew up: nothing left to tune.
                segment.fail("trajectory diverged")
                tuner.stop()
                curve.append((curve[-1][0], charged, math.nan))
                break
            checkpoints.end(segment)
            segment.complete()
        study = tuner.study()
        stages = _stage_diagnostics(tuner, study.id, len(study.stages))
    final = math.nan if diverged else job.val_loss()
    return Run(
        final_loss=final,
        charged_steps=charged,
        trajectory_steps=study.trajectory_steps,
        curve=curve,
        lr_path=lr_path,
        tuner_evals=tuner_evals,
        eval_cost_steps=tuner_evals * job.eval_cost_steps,
        diverged=diverged,
        seconds=time.perf_counter() - started,
        extra={
            "study": name,
            "study_id": study.id,
            "service_charged_steps": study.charged_steps,
            "stages": stages,
        },
    )


def _stage_diagnostics(tuner: stagelr.Tuner, study_id: int, count: int) -> list[dict[str, Any]]:
    """Per stage: the chosen LR, its forecast and the loss realized at the stage's end
    (the exploit segment's last report of the same metric): the forecast error."""
    out: list[dict[str, Any]] = []
    segments = tuner.client.list_segments(study_id)
    for index in range(count):
        detail = tuner.client.get_stage(study_id, index)
        exploit = [s for s in segments if s.stage == index and s.kind == "exploit"]
        chosen = [c for c in detail.candidates if c.lr == detail.chosen_lr and c.forecast]
        predicted = chosen[0].forecast.prediction if chosen and chosen[0].forecast else None
        realized = None
        if exploit:
            obs = [
                o
                for o in tuner.client.list_observations(exploit[0].id)
                if o.metric == exploit[0].metric
            ]
            if obs and obs[-1].step == exploit[0].steps:
                realized = obs[-1].value if math.isfinite(obs[-1].value) else None
        out.append(
            {
                "stage": index,
                "start_step": detail.start_step,
                "tau": detail.tau,
                "candidates": len(detail.candidates),
                "chosen_lr": detail.chosen_lr,
                "predicted": predicted,
                "realized": realized,
            }
        )
    return out
