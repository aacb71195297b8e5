"""A study's config as the tuner reads it: the request resolved against a preset.

The wire's :class:`stagelr.models.StudyConfig` carries only what the user set. The
server resolves it once, at creation (:func:`resolve`): every field left out comes from
the chosen preset, and the result, a :class:`ResolvedConfig` with every field required,
is what the store keeps. A later change to a preset's defaults therefore never changes a
stored study, which is what keeps replay and crash recovery exact. A stored config is
read back with :meth:`ResolvedConfig.stored`.

The presets, the meaning of a field's absence in configs stored before it existed
(:data:`LEGACY_CONFIG`) and the budget planner's arithmetic live here, with the tuner
that reads them: the thin client knows none of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from stagelr.models import (
    MAX_STAGES,
    Acquisition,
    DivergedPolicy,
    ForecastModel,
    LRShape,
    Selection,
    StudyConfig,
)

__all__ = [
    "DEFAULT_PRESET",
    "WarmStart",
    "LEGACY_CONFIG",
    "PRESETS",
    "PRETRAINED_HORIZON_SCALE",
    "RANGE_TEST_SWEEP",
    "ResolvedConfig",
    "budget_taus",
    "decay_steps",
    "resolve",
]

#: The preset of a request that names none.
DEFAULT_PRESET = "default"

#: Preset defaults. A study names a preset and may override any field.
PRESETS: dict[str, dict[str, Any]] = {
    # The published AutoLRS method (ICLR 2021), as its reference implementation runs it.
    "autolrs": {
        "tau0": 1000,
        "tau_max": 8000,
        "tau_growth": 2.0,
        "explore_ratio": 0.1,
        "k": 10,
        "initial_design": 1,
        "acquisition": Acquisition.lcb,
        "kappa": 1000.0,
        "forecast": ForecastModel.exp_reference,
        "noise_aware": False,
        "diverged_policy": DivergedPolicy.penalty,
        "divergence_stop": False,
        "divergence_factor": 3.0,
        "carry_over": False,
        "selection": Selection.min_forecast,
        "metric_schedule": "reference",
        "reports_per_explore": 10,
        "reports_per_exploit": 10,
        "planner": "fixed",
        "budget_stages": 3,
        "decay_fraction": 0.0,
        "decay_shape": LRShape.one_minus_sqrt,
        "continue_best": False,
        "same_data": False,
        "lr_bounds": "given",
        "range_test_steps": 100,
        "range_test_decades": 3.0,
        "probe": "constant",
        "finalists": 0,
    },
    # stagelr's own: a model of training that scores each candidate by the loss it keeps
    # once annealed (docs/tuner.md): annealed probes read at their window's end, a
    # stability edge, the winner's search steps kept; a real acquisition on a
    # noise-aware GP, divergence stop.
    "default": {
        "tau0": 1000,
        "tau_max": 8000,
        "tau_growth": 2.0,
        # Six candidates of tau/40 steps, then the best one's stability check (finalists):
        # a search charging 0.175 tau. Four candidates missed the NQM's best LR on
        # several seeds; eight cost the NQM the trajectory they charge. Windows of tau/20
        # spent the steps that half-length windows keep (better beyond noise on six
        # workloads of 20, docs/tuner.md); half-length windows alone blew up the
        # large-batch regression, which the check catches.
        "explore_ratio": 0.025,
        "k": 6,
        # The first search's first candidates: one in each third of the log-LR range
        # (in a seeded order), so the GP starts from a valley, not a line. With one in
        # each half, a hot half that ended badly left log-EI creeping up from the cool
        # side in small steps, stopping 6-19x below the next candidate (the batch-32
        # regression chose 0.41x its best peak); three strata: -0.0030 [-0.0066,
        # -0.0001] there, no variant worse beyond noise (docs/tuner.md).
        "initial_design": 3,
        "acquisition": Acquisition.log_ei,
        "kappa": 2.0,
        "forecast": ForecastModel.window_end,
        "noise_aware": True,
        "diverged_policy": DivergedPolicy.worst_plus_spread,
        "divergence_stop": True,
        "divergence_factor": 3.0,
        "carry_over": True,
        # The lowest annealed score below the stability edge: no tie rule.
        "selection": Selection.min_forecast,
        "metric_schedule": "val_loss",
        "reports_per_explore": 10,
        "reports_per_exploit": 10,
        # With total_steps, the last 20% decay to 0 (WSD's 1-sqrt cooldown), and only the
        # first stage searches ('hold').
        "planner": "hold",
        "budget_stages": 3,
        "decay_fraction": 0.2,
        "decay_shape": LRShape.one_minus_sqrt,
        # The stage continues the chosen candidate's end state: its steps are trajectory.
        "continue_best": True,
        "same_data": True,
        # Automatic bounds from a range test: off, the user's bounds are used as given.
        "lr_bounds": "given",
        "range_test_steps": 100,
        "range_test_decades": 3.0,
        # Each candidate's window ends in a cooldown to 0 (shape wsd) and is scored by
        # its last reading (forecast window_end), with the noise of one reading as the
        # GP's noise: the noise floor of a constant LR is out of the comparison.
        "probe": "anneal",
        # The best candidate trains one more window from its own end state; the stage
        # continues from there unless that window lost ground (then the first round
        # chooses again below half its LR). A short window cannot see an LR that holds
        # for a window but not for a stage; the check's steps are trajectory when it
        # passes.
        "finalists": 1,
    },
    # The default before the annealed model (kept so that comparisons and studies that
    # name it keep working): constant-LR windows forecast to the stage horizon by the
    # robust fit, a tie within noise going to the hotter LR.
    "default-v1": {
        "tau0": 1000,
        "tau_max": 8000,
        "tau_growth": 2.0,
        # Six candidates of tau/20 steps: a search charging 0.3 tau, not the reference's
        # tau. Under a charged budget (charged_steps) the steps saved are trajectory: on
        # the W1/W2 probes at a budget of T, 6 x tau/20 ended lower than 10 x tau/10 on
        # the NQM and level on the digits MLP (docs/benchmarks.md, section 8).
        "explore_ratio": 0.05,
        "k": 6,
        # The first search's first candidates: one in each half of the log-LR range
        # (in a seeded order), so the GP starts from the whole range. With a single
        # random start, the digits MLP searches that began at the cool end crawled up
        # and never tried the LRs that reach the target (docs/benchmarks.md, section 8).
        "initial_design": 2,
        "acquisition": Acquisition.log_ei,
        "kappa": 2.0,
        "forecast": ForecastModel.robust,
        "noise_aware": True,
        "diverged_policy": DivergedPolicy.worst_plus_spread,
        "divergence_stop": True,
        "divergence_factor": 3.0,
        "carry_over": True,
        # A tie within the lowest forecast's noise goes to the hotter LR (at most half a
        # decade hotter): a tau' window's forecast favours cool LRs, and with the final
        # decay a hot LR pays. The hotter candidate's own sd does not widen the tie: on
        # the digits MLP a turbulent hot window's sd made LRs that later collapsed the
        # run look as good (docs/benchmarks.md, section 8).
        "selection": Selection.hottest_within_best_noise,
        "metric_schedule": "val_loss",
        "reports_per_explore": 10,
        "reports_per_exploit": 10,
        # With total_steps, the last 20% decay to 0 (WSD's 1-sqrt cooldown), and only the
        # first stage searches ('hold'): every later search on the char-LM chose an LR
        # 3-9x cooler (a short window rewards annealing, which the decay does anyway).
        # The budget planner and continue_best are off: on the W1/W2 ablation the
        # planner's short later stages chose cool LRs, and continue_best with this
        # selection keeps every candidate's state until the stage ends (k model copies).
        "planner": "hold",
        "budget_stages": 3,
        "decay_fraction": 0.2,
        "decay_shape": LRShape.one_minus_sqrt,
        "continue_best": False,
        "same_data": True,
        # Automatic bounds from a range test: off, the user's bounds are used as given.
        "lr_bounds": "given",
        "range_test_steps": 100,
        "range_test_decades": 3.0,
        "probe": "constant",
        "finalists": 0,
    },
}

#: The range a range test sweeps when the study gives no lr_min / lr_max.
RANGE_TEST_SWEEP = (1e-6, 10.0)

#: What a stored config written before a field existed means by its absence: the
#: behaviour stagelr had then. Migrations 0003 to 0011 (and the exchange format's
#: versions 2 to 10) write these into older configs, so a stored study never changes its
#: decisions.
LEGACY_CONFIG: dict[str, Any] = {
    "planner": "fixed",
    "budget_stages": 3,
    "decay_fraction": 0.0,
    "decay_shape": "one_minus_sqrt",
    "continue_best": False,
    "same_data": True,
    "lr_bounds": "given",
    "range_test_steps": 100,
    "range_test_decades": 3.0,
    "initial_design": 1,
    "family": None,
    "prior_studies": [],
    "warm_start": None,
    "probe": "constant",
    "finalists": 0,
    "pretrained": False,
    "horizon_scale": 1.0,
}

#: The ``horizon_scale`` a preset gives a pretrained job that sets none (1 otherwise,
#: and for presets not named). From a trained state the first search's windows chose
#: 0.12-0.64 times the whole run's best peak on the five fine-tunes of the benchmark
#: (median 0.30, ``default`` at T); holding three times their choice: docs/tuner.md,
#: "Fine-tunes: a declared trained start".
PRETRAINED_HORIZON_SCALE: dict[str, float] = {"default": 3.0}


def decay_steps(total_steps: int | None, decay_fraction: float | None) -> int:
    """Steps of the final decay segment: ``round(decay_fraction * total_steps)``."""
    if total_steps is None or not decay_fraction:
        return 0
    return min(total_steps - 1, round(decay_fraction * total_steps))


def budget_taus(
    total_steps: int,
    stages: int,
    growth: float,
    decay_fraction: float,
    explore_ratio: float | None = None,
) -> list[int]:
    """The budget planner's stage lengths: the steps before the decay, split into
    ``stages`` parts growing by ``growth`` (the last takes the rounding remainder).

    With ``explore_ratio``, a budget too small for every stage to search gets fewer
    stages, down to one.
    """
    train = total_steps - decay_steps(total_steps, decay_fraction)
    while True:
        weights = [growth**i for i in range(stages)]
        total_weight = sum(weights)
        taus = [max(1, round(train * w / total_weight)) for w in weights[:-1]]
        taus.append(train - sum(taus))
        taus = [t for t in taus if t > 0]
        if explore_ratio is None or stages <= 1 or round(taus[0] * explore_ratio) >= 1:
            return taus
        stages -= 1


class WarmStart(BaseModel):
    """What a study took from its priors, fixed when it was created: the narrow first
    search it runs and what it checks the priors against (``tuner/_priors.py``).

    Derived from the prior summary stored with the study (``summary_hash`` names it);
    the tuner reads only this, never another study.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary_hash: str
    #: the prior studies whose config fingerprint is the study's (the ones used)
    priors: tuple[int, ...]
    #: the priors' first-stage LR (the median in log-LR), the search's centre
    lr: float
    #: the narrow search's LRs, in the order tried: the centre first
    candidates: tuple[float, ...]
    #: each narrow candidate trains this fraction of the stage's tau' steps
    window: float
    #: the priors' first-stage start loss (median), None: unknown. A study created
    #: before ``start_reading`` existed is judged by it.
    start_loss: float | None = None
    #: the step (within its window) and the loss (median) of the first report of the
    #: priors' chosen candidate: the loss after that many steps from the job's start at
    #: about the LR the narrow search centres on. None: unknown (``start_loss`` judges).
    start_reading: tuple[int, float] | None = None
    #: the priors' forecast for their chosen LR (median), None: unknown
    prediction: float | None = None
    #: how the centre was found, and what the stage trains: ``final_loss`` (where a GP
    #: over the priors' (LR, final loss) pairs is lowest: jobs that held different LRs
    #: measured the whole run's answer) and ``explore`` (the priors held one LR: one
    #: narrow step cooler, to measure the other side) train the centre once the narrow
    #: search finds it fits; ``chosen_lr`` (the median of the priors' chosen LRs, the
    #: studies created before the others existed) trains the narrow candidate the
    #: study's selection picks
    basis: Literal["chosen_lr", "final_loss", "explore"] = "chosen_lr"
    #: where the priors' own search windows ended lowest (the median over priors, in
    #: log-LR), None: unknown. A short window leans away from the whole run's best LR,
    #: the same way for every job of one workload: a neighbour of the centre that wins
    #: its window on the other side (or with no lean at all) says the priors do not fit.
    window_lr: float | None = None

    @property
    def holds_centre(self) -> bool:
        """Whether a fitting narrow search trains the centre (not the selection's pick)."""
        return self.basis != "chosen_lr"


def stage_count_bound(
    total_steps: int, tau0: int, tau_max: int, growth: float, decay_fraction: float | None
) -> int:
    """An upper bound on the stages of a ``fixed`` or ``hold`` plan: the stages that grow
    from tau0 to tau_max (each at least tau0 steps), the stages of tau_max steps after
    them, a clipped last one and the decay."""
    train = total_steps - decay_steps(total_steps, decay_fraction)
    growing = train // tau0 + 1
    if tau0 >= tau_max:
        growing = 1
    elif growth > 1.0:
        growing = min(growing, math.ceil(math.log(tau_max / tau0) / math.log(growth)) + 1)
    return growing + train // tau_max + 2


def check_stage_count(config: ResolvedConfig, total_steps: int | None = None) -> None:
    """Refuse (ValueError naming the fix) a new study whose plan could have more than
    :data:`stagelr.models.MAX_STAGES` stages over ``total_steps`` (by default its own):
    every request on a study costs work in proportion to its stages. Stored studies are
    not checked: they keep working as they were created."""
    total = config.total_steps if total_steps is None else total_steps
    if config.planner == "budget" or total is None:
        return
    bound = stage_count_bound(
        total, config.tau0, config.tau_max, config.tau_growth, config.decay_fraction
    )
    if bound > MAX_STAGES:
        raise ValueError(
            f"total_steps = {total} in stages of at most tau_max = {config.tau_max} steps "
            f"(from tau0 = {config.tau0}, growing by {config.tau_growth:g}) makes up to "
            f"{bound} stages, more than {MAX_STAGES}: raise tau_max (to at least "
            f"{-(-total // (MAX_STAGES // 2))}) or tau0 and tau_growth"
        )


class ResolvedConfig(BaseModel):
    """A study's config with every field decided (see the module): what the tuner reads
    and the store keeps. Its fields are :class:`stagelr.models.StudyConfig`'s, whose
    descriptions say what each means; only ``total_steps`` and ``charged_steps`` may be
    None (no budget)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["autolrs", "default", "default-v1"]
    lr_min: float
    lr_max: float
    # None: no budget (and configs stored before a field existed lack it: None).
    total_steps: int | None = None
    charged_steps: int | None = None
    seed: int
    tau0: int
    tau_max: int
    tau_growth: float
    explore_ratio: float
    k: int
    initial_design: int
    acquisition: Acquisition
    kappa: float
    forecast: ForecastModel
    noise_aware: bool
    diverged_policy: DivergedPolicy
    divergence_stop: bool
    divergence_factor: float
    carry_over: bool
    selection: Selection
    metric_schedule: Literal["reference", "val_loss", "train_loss"]
    reports_per_explore: int
    reports_per_exploit: int
    planner: Literal["fixed", "budget", "hold"]
    budget_stages: int
    decay_fraction: float
    decay_shape: LRShape
    continue_best: bool
    same_data: bool
    lr_bounds: Literal["given", "range_test"]
    range_test_steps: int
    range_test_decades: float
    probe: Literal["constant", "anneal"]
    finalists: int
    pretrained: bool
    horizon_scale: float
    # Where the priors come from, as the request named them, and what the study took
    # from them at creation (None: a full first search). Absent in configs stored
    # before priors existed: no priors.
    family: str | None = None
    prior_studies: tuple[int, ...] = ()
    warm_start: WarmStart | None = None

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and (data.get("lr_min") is None or data.get("lr_max") is None):
            raise ValueError(
                "lr_min and lr_max are required: give the LR search range, or set "
                "lr_bounds to 'range_test' to find it with a range test"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ResolvedConfig:
        """What holds only once every field is known (the request checks the rest)."""
        if self.lr_min >= self.lr_max:
            raise ValueError(
                f"lr_min ({self.lr_min:g}) must be below lr_max ({self.lr_max:g}): "
                "swap them or widen the range"
            )
        if self.lr_max / self.lr_min > 1e12:
            raise ValueError("the LR range spans more than 12 decades: narrow it")
        if self.tau_max < self.tau0:
            raise ValueError(f"tau_max ({self.tau_max}) must be at least tau0 ({self.tau0})")
        if self.decay_shape is LRShape.constant:
            raise ValueError("decay_shape cannot be 'constant': set decay_fraction to 0 instead")
        if self.planner == "budget" and self.total_steps is not None:
            first = budget_taus(
                self.total_steps,
                self.budget_stages,
                self.tau_growth,
                self.decay_fraction,
                self.explore_ratio,
            )[0]
            if round(first * self.explore_ratio) < 1:
                raise ValueError(
                    f"total_steps = {self.total_steps} leaves {first} steps before the "
                    "decay, too few for an explore window: raise total_steps or "
                    "explore_ratio, or lower decay_fraction"
                )
        if self.finalists > 0:
            if not self.continue_best:
                raise ValueError(
                    "finalists continue their own windows' end states: set continue_best "
                    "to true, or finalists to 0"
                )
            if self.probe != "anneal":
                raise ValueError(
                    "finalists check annealed windows: set probe to 'anneal', or finalists to 0"
                )
            if self.finalists > self.k:
                raise ValueError(
                    f"finalists ({self.finalists}) must be at most k ({self.k}): lower "
                    "finalists or raise k"
                )
        if round(self.tau0 * self.explore_ratio) < 1:
            raise ValueError(
                f"tau0 * explore_ratio = {self.tau0 * self.explore_ratio:g} rounds to 0 "
                "explore steps: raise tau0 or explore_ratio"
            )
        return self

    @property
    def checks_choice(self) -> bool:
        """Whether the cold first search ends in the finalists' second windows (the
        stability check of its choice): trials of stage 0 with index >= k are those."""
        return (
            self.finalists > 0
            and self.continue_best
            and self.probe == "anneal"
            and self.warm_start is None
        )

    @classmethod
    def stored(cls, config: Mapping[str, Any]) -> ResolvedConfig:
        """A config as the store keeps it (:meth:`to_stored`), read back."""
        return cls.model_validate(config)

    def to_stored(self) -> dict[str, Any]:
        """The JSON form the store keeps and compares."""
        return self.model_dump(mode="json")

    def request(self) -> StudyConfig:
        """This config as the wire shows it (every field set)."""
        stored = self.to_stored()
        stored.pop("warm_start")  # the server's, not the user's
        return StudyConfig.model_validate(stored)


def resolve(request: StudyConfig | Mapping[str, Any]) -> ResolvedConfig:
    """The request with every field it leaves out filled from its preset.

    A mapping is validated as a request first. Raises ValueError (a pydantic
    ValidationError) naming what to fix when the resolved config is inconsistent.
    """
    if not isinstance(request, StudyConfig):
        request = StudyConfig.model_validate(request)
    given = request.model_dump(exclude_none=True)
    if "prior_studies" in given:
        given["prior_studies"] = tuple(given["prior_studies"])
    preset = given.get("preset", DEFAULT_PRESET)
    filled: dict[str, Any] = {**PRESETS[preset], "seed": 0, **given, "preset": preset}
    if "finalists" not in given and not (filled["continue_best"] and filled["probe"] == "anneal"):
        # The preset's stability check continues annealed windows' end states: a request
        # that turns either off has no check (one that asks for finalists is told why not).
        filled["finalists"] = 0
    filled.setdefault("pretrained", False)
    if "horizon_scale" not in given:
        pretrained = filled["pretrained"]
        filled["horizon_scale"] = PRETRAINED_HORIZON_SCALE.get(preset, 1.0) if pretrained else 1.0
    if filled["lr_bounds"] == "range_test":
        # No bounds given: the range test sweeps a range wide enough for SGD and Adam.
        for key, value in zip(("lr_min", "lr_max"), RANGE_TEST_SWEEP, strict=True):
            filled.setdefault(key, value)
    resolved = ResolvedConfig.model_validate(filled)
    check_stage_count(resolved)
    return resolved
