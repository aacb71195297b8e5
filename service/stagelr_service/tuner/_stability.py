"""The stability edge of a search with annealed probes.

A constant-LR window warns about a hot LR through its noise floor: the loss sits high.
An annealed probe (``probe: anneal``) removes that floor, which is what it is for, and
with it the warning; what is left to catch is instability. The run holds the chosen LR
for many times the window, and the sharpness of a network grows while it trains up to
what its LR allows (progressive sharpening, the edge of stability: Cohen et al., ICLR
2021), so an LR that blew up in a short window marks an edge that the LRs just below it
reach later in the run. The search therefore stays a factor ``STABILITY_MARGIN`` below
the lowest LR whose window was unstable: no candidate is proposed above it, and none
above it is chosen.

A window is unstable when it diverged (NaN, infinity, or stopped by the divergence
stop), or, in the first stage (training from the job's first state, where every stable
LR makes progress over a window), when it ended above where it started even after its
cooldown: the annealing did not undo what the LR did (on the digits MLP, the LRs whose
windows ended at the initial loss had killed the network, and the run held just below
them did too). A transient spike that the cooldown undoes is not instability: the
window's end says so. In a later stage, where a cool LR near the noise floor may end a
window a little above its start, only divergence counts; so in the first stage of a job
that starts from a trained model (``pretrained``), whose loss may rise for a while
under a fresh optimizer before it falls (on the byte-MLP fine-tune a window at a third
of the whole run's best LR ended 0.1% above its start and capped every search at a
fifth of that LR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._types import CandidateAnalysis
from .config import ResolvedConfig

#: How far below the lowest unstable LR the search stays (a factor on the LR).
STABILITY_MARGIN = 0.5


def window_unstable(config: ResolvedConfig, candidate: CandidateAnalysis) -> bool:
    """Whether the candidate's window diverged or (first stage, from a fresh model)
    ended above its start."""
    if candidate.diverged:
        return True
    observations = candidate.trial.observations
    if not observations or not all(math.isfinite(v) for _, v in observations):
        return True
    first = candidate.trial.stage == 0 and not config.pretrained
    return first and float(observations[-1][1]) > float(observations[0][1])


def stability_cap(config: ResolvedConfig, candidates: Sequence[CandidateAnalysis]) -> float:
    """The highest LR the search may propose or choose: ``STABILITY_MARGIN`` times the
    lowest unstable candidate's LR, or ``lr_max`` when none was unstable (or the probes
    are constant-LR windows, whose noise floor does this job)."""
    return stability_caps(config, candidates)[-1]


def stability_caps(config: ResolvedConfig, candidates: Sequence[CandidateAnalysis]) -> list[float]:
    """:func:`stability_cap` of each prefix of ``candidates``, the empty one first
    (``len(candidates) + 1`` values), judging each window once."""
    caps = [config.lr_max]
    for candidate in candidates:
        cap = caps[-1]
        if config.probe == "anneal" and window_unstable(config, candidate):
            cap = min(cap, STABILITY_MARGIN * candidate.trial.lr)
        caps.append(cap)
    return caps


def unit_cap(config: ResolvedConfig, cap: float) -> float:
    """The cap in the optimizer's units (normalized log-LR; below lr_min: 0)."""
    if cap >= config.lr_max:
        return 1.0
    if cap <= config.lr_min:
        return 0.0
    return math.log(cap / config.lr_min) / math.log(config.lr_max / config.lr_min)
