"""GPOptimizer: the GP surrogate and acquisition behind each BO decision."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stagelr_service.optimizer import GPOptimizer, Posterior, Proposal

CLIFF = 0.7


@pytest.fixture(scope="module")
def opt() -> GPOptimizer:
    return GPOptimizer()


def bowl(x: float) -> float:
    return 1.0 + 4.0 * (x - 0.37) ** 2


def with_penalty(ys: list[float | None]) -> list[float]:
    """Replace diverged (None) values by the worst finite one plus the spread, as the tuner."""
    finite = [v for v in ys if v is not None]
    penalty = max(finite) + (max(finite) - min(finite))
    return [penalty if v is None else v for v in ys]


def cliff_loss(x: float) -> float | None:
    return None if x >= CLIFF else 1.0 + 3.0 * (x - 0.4) ** 2


def run_loop(
    opt: GPOptimizer, f: Callable[[float], float | None], xs: list[float], steps: int
) -> list[float]:
    """Propose-evaluate loop with log EI; returns all x evaluated, initial ones first."""
    xs = list(xs)
    for _ in range(steps):
        ys = with_penalty([f(x) for x in xs])
        xs.append(opt.propose(xs, ys, None, acquisition="log_ei", kappa=0.0).x)
    return xs


@pytest.mark.parametrize("acquisition", ["log_ei", "lcb"])
@pytest.mark.parametrize("noisy", [False, True])
def test_propose_returns_x_in_unit_interval(
    opt: GPOptimizer, acquisition: str, noisy: bool
) -> None:
    x = [0.1, 0.35, 0.6, 0.9]
    y = [2.0, 1.1, 1.3, 3.0]
    yvar = [0.01] * 4 if noisy else None
    p = opt.propose(x, y, yvar, acquisition=acquisition, kappa=2.0)
    assert isinstance(p, Proposal)
    assert 0.0 <= p.x <= 1.0
    assert p.acquisition == acquisition
    assert math.isfinite(p.acquisition_value)
    assert set(p.hyperparameters) == {"lengthscale", "outputscale", "noise"}
    assert all(type(v) is float and v > 0 for v in p.hyperparameters.values())


def test_finds_minimum_of_smooth_bowl(opt: GPOptimizer) -> None:
    xs = run_loop(opt, bowl, [0.9], steps=7)
    best = min(xs, key=bowl)
    assert abs(best - 0.37) < 0.03


def test_stays_away_from_divergence_cliff(opt: GPOptimizer) -> None:
    start = [0.15, 0.5, 0.85]
    xs = run_loop(opt, cliff_loss, start, steps=8)
    proposals = xs[len(start) :]
    assert all(x < CLIFF for x in proposals)
    assert abs(min(xs, key=lambda x: cliff_loss(x) or math.inf) - 0.4) < 0.05


def test_never_reproposes_an_existing_point(opt: GPOptimizer) -> None:
    # A noisy-looking best point: EI is highest right next to it.
    x = [0.2, 0.4, 0.42, 0.6, 0.8]
    y = [1.5, 1.0, 1.02, 1.4, 2.0]
    radius = 0.05
    for acquisition in ("log_ei", "lcb"):
        p = opt.propose(x, y, None, acquisition=acquisition, kappa=0.0, exclude_radius=radius)
        assert min(abs(p.x - xi) for xi in x) > radius


def test_exclusion_of_whole_grid_still_proposes(opt: GPOptimizer) -> None:
    p = opt.propose([0.5], [1.0], None, acquisition="log_ei", kappa=0.0, exclude_radius=1.0)
    assert 0.0 <= p.x <= 1.0
    assert math.isfinite(p.acquisition_value)


def test_an_upper_bound_is_never_exceeded(opt: GPOptimizer) -> None:
    """A bowl whose minimum sits at 0.8: with ``upper`` 0.3 the proposal stays at or
    below it for both acquisitions; an upper bound below the grid proposes its start."""
    x = [0.1, 0.5, 0.9]
    y = [(v - 0.8) ** 2 for v in x]
    for acquisition in ("log_ei", "lcb"):
        free = opt.propose(x, y, None, acquisition=acquisition, kappa=2.0)
        bounded = opt.propose(x, y, None, acquisition=acquisition, kappa=2.0, upper=0.3)
        assert free.x > 0.3 and bounded.x <= 0.3
    assert opt.propose(x, y, None, acquisition="log_ei", kappa=0.0, upper=-1.0).x == 0.0
    with pytest.raises(ValueError, match="upper"):
        opt.propose(x, y, None, acquisition="log_ei", kappa=0.0, upper=math.nan)


def test_lcb_with_huge_kappa_samples_most_uncertain_region(opt: GPOptimizer) -> None:
    x = [0.0, 0.1, 0.2, 0.3]
    y = [1.0, 0.8, 0.9, 1.2]
    p = opt.propose(x, y, None, acquisition="lcb", kappa=1000.0)
    assert p.x > 0.95


def test_single_point_works(opt: GPOptimizer) -> None:
    for acquisition in ("log_ei", "lcb"):
        p = opt.propose([0.3], [2.5], None, acquisition=acquisition, kappa=2.0)
        assert 0.0 <= p.x <= 1.0 and abs(p.x - 0.3) > 0.1
        assert math.isfinite(p.acquisition_value)
        assert all(math.isfinite(v) for v in p.hyperparameters.values())
    post = opt.posterior([0.3], [2.5], [0.1], [0.0, 0.3, 1.0])
    assert all(math.isfinite(v) for v in post.mean + post.std)
    assert post.mean[1] == pytest.approx(2.5, abs=0.1)


def test_all_equal_y_works(opt: GPOptimizer) -> None:
    x, y = [0.1, 0.5, 0.9], [1.7, 1.7, 1.7]
    for acquisition in ("log_ei", "lcb"):
        p = opt.propose(x, y, None, acquisition=acquisition, kappa=2.0)
        assert 0.0 <= p.x <= 1.0
        assert math.isfinite(p.acquisition_value)
        assert all(math.isfinite(v) for v in p.hyperparameters.values())
    post = opt.posterior(x, y, None, [0.0, 0.3, 0.5])
    assert all(math.isfinite(v) for v in post.mean + post.std)
    assert post.mean == pytest.approx([1.7] * 3, abs=1e-6)


def test_noisy_point_is_trusted_less(opt: GPOptimizer) -> None:
    # A smooth trend with one outlier at x = 0.5.
    x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    y = [1.0 + 0.5 * xi for xi in x]
    y[4] += 1.0
    trend = 1.0 + 0.5 * 0.5
    confident = [1e-4] * len(x)
    doubtful = list(confident)
    doubtful[4] = 4.0
    at_outlier = [0.5]
    sure = opt.posterior(x, y, confident, at_outlier).mean[0]
    unsure = opt.posterior(x, y, doubtful, at_outlier).mean[0]
    assert abs(unsure - trend) < 0.5 * abs(sure - trend)
    p = opt.propose(x, y, doubtful, acquisition="log_ei", kappa=0.0)
    assert 0.0 <= p.x <= 1.0


def test_deterministic(opt: GPOptimizer) -> None:
    x = [0.12, 0.47, 0.55, 0.81, 0.33]
    y = [1.9, 1.05, 1.1, 2.7, 1.3]
    yvar = [0.01, 0.02, 0.01, 0.05, 0.01]
    for acquisition in ("log_ei", "lcb"):
        for v in (None, yvar):
            first = opt.propose(x, y, v, acquisition=acquisition, kappa=2.0)
            again = GPOptimizer().propose(x, y, v, acquisition=acquisition, kappa=2.0)
            assert first == again


def test_concurrent_calls_match_sequential(opt: GPOptimizer) -> None:
    datasets = [([0.1, 0.5, 0.9], [2.0 + i, 1.0, 3.0]) for i in range(6)]
    expected = [opt.propose(x, y, None, acquisition="log_ei", kappa=0.0) for x, y in datasets]

    def propose(data: tuple[list[float], list[float]]) -> Proposal:
        x, y = data
        return opt.propose(x, y, None, acquisition="log_ei", kappa=0.0)

    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(propose, datasets))
    assert got == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_y_raises(opt: GPOptimizer, bad: float) -> None:
    with pytest.raises(ValueError):
        opt.propose([0.2, 0.5], [1.0, bad], None, acquisition="log_ei", kappa=0.0)
    with pytest.raises(ValueError):
        opt.posterior([0.2, 0.5], [1.0, bad], None, [0.5])


@pytest.mark.parametrize(
    ("x", "y", "yvar", "acquisition"),
    [
        ([], [], None, "log_ei"),
        ([0.1, 0.2], [1.0], None, "log_ei"),
        ([1.5], [1.0], None, "log_ei"),
        ([0.5], [1.0], [-1.0], "log_ei"),
        ([0.5], [1.0], [0.1, 0.1], "log_ei"),
        ([0.5], [1.0], None, "ucb"),
    ],
)
def test_invalid_inputs_raise(
    opt: GPOptimizer,
    x: list[float],
    y: list[float],
    yvar: list[float] | None,
    acquisition: str,
) -> None:
    with pytest.raises(ValueError):
        opt.propose(x, y, yvar, acquisition=acquisition, kappa=1.0)


def test_posterior_is_sane_on_grid(opt: GPOptimizer) -> None:
    x = [0.2, 0.3, 0.4]
    y = [1.4, 1.1, 1.2]
    grid = [i / 20 for i in range(21)]
    post = opt.posterior(x, y, None, grid)
    assert isinstance(post, Posterior)
    assert post.x == grid
    assert len(post.mean) == len(post.std) == len(grid)
    assert all(math.isfinite(m) for m in post.mean)
    assert all(s > 0 for s in post.std)
    std = dict(zip(grid, post.std, strict=True))
    mean = dict(zip(grid, post.mean, strict=True))
    for xi, yi in zip(x, y, strict=True):
        assert abs(mean[xi] - yi) < 0.1
        assert std[xi] < 0.5 * std[1.0]
    # Uncertainty grows with distance from the data (it saturates at the prior far away).
    assert std[1.0] >= std[0.6] > 2.0 * std[0.4]


def test_warm_up_runs(opt: GPOptimizer) -> None:
    opt.warm_up()


def test_import_does_not_load_torch() -> None:
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys; from stagelr_service.optimizer import Proposal, Posterior; "
        "assert 'torch' not in sys.modules and 'botorch' not in sys.modules"
    )
    env_path = f"{root / 'client'}:{root / 'service'}"
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={"PYTHONPATH": env_path}, timeout=60
    )


@pytest.mark.parametrize("n", [1, 3, 8, 20])
@pytest.mark.parametrize("noisy", [False, True])
def test_the_direct_posterior_and_log_ei_equal_botorchs(n: int, noisy: bool) -> None:
    """The fast path's posterior and LogEI are those of the SingleTaskGP it stands for
    (BoTorch's model and LogExpectedImprovement, same MAP hyperparameters)."""
    import torch
    from botorch.acquisition.analytic import LogExpectedImprovement

    from stagelr_service.optimizer import gp

    x = [(0.13 + 0.71 * i / max(1, n - 1)) % 1.0 for i in range(n)]
    y = [2.0 + 0.8 * (v - 0.4) ** 2 + 0.03 * math.sin(17 * v) for v in x]
    yvar = [1e-4 * (1 + i % 3) for i in range(n)] if noisy else None
    points = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    with torch.no_grad():
        data = gp._prepare(x, y, yvar)
        hyper = gp._fit_map(data)
        model, _ = gp._fitted_model(data, hyper)
        mean, std = gp._grid_mean_std(data, hyper, points)
        ref_mean, ref_std = gp._mean_std(model, points)
        acqf = LogExpectedImprovement(model, best_f=data.y.min(), maximize=False)
        ref_ei = acqf(points.view(-1, 1, 1))
        ei = gp._log_ei_helper((data.y.min() - mean) / std) + std.log()
    # GPyTorch's own solves differ from one plain Cholesky by ~1e-8 here.
    assert torch.allclose(mean, ref_mean, rtol=1e-6, atol=1e-7)
    assert torch.allclose(std, ref_std, rtol=1e-6, atol=1e-7)
    assert torch.allclose(ei, ref_ei, rtol=1e-6, atol=1e-6)
