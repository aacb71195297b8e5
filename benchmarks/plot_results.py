"""Draw the benchmark figures of docs/benchmarks.md from the JSON results in docs/results.

python benchmarks/plot_results.py [--results docs/results] [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_decision_latency(data: dict[str, Any], out: Path) -> Path:
    """p50 (and p95 as error bar) of a decision vs the number of points, both paths."""
    ns = [int(n) for n in data["config"]["ns"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    fast, ref = data["fast"], data["reference"]
    series = (
        ("stagelr: grid MAP + grid LogEI", "o", [fast[str(n)]["log_ei"] for n in ns], ""),
        ("stagelr: same, noise-aware", "o", [fast[str(n)]["log_ei+yvar"] for n in ns], ""),
        (
            "BoTorch default: fit_gpytorch_mll + optimize_acqf",
            "s",
            [ref[str(n)]["log_ei"] for n in ns],
            "ref_",
        ),
    )
    for label, marker, cells, prefix in series:
        p50 = [cell[prefix + "p50_ms"] for cell in cells]
        p95 = [cell[prefix + "p95_ms"] for cell in cells]
        above = [b - a for a, b in zip(p50, p95, strict=True)]
        ax.errorbar(ns, p50, yerr=[[0] * len(ns), above], marker=marker, capsize=3, label=label)
    ax.set_xlabel("points in the GP (candidates so far)")
    ax.set_ylabel("decision latency, ms (p50, bar to p95)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("One decision on one core", fontsize=10)
    fig.tight_layout()
    path = out / "decision_latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_demo_run(data: dict[str, Any], out: Path) -> Path:
    """LR schedule with each stage's candidates, and the validation loss, per preset."""
    runs = data["runs"]
    fig, axes = plt.subplots(2, len(runs), figsize=(5.5 * len(runs), 6), sharex=True, squeeze=False)
    for col, run in enumerate(runs):
        top, bottom = axes[0][col], axes[1][col]
        segments = run["segments"]
        exploits = [s for s in segments if s["kind"] == "exploit"]
        for s in segments:
            if s["kind"] == "explore":
                colour = "tab:red" if s["status"] == "diverged" else "tab:gray"
                top.scatter(s["start_step"], s["lr"], s=14, color=colour, alpha=0.7, zorder=2)
        xs, ys = [], []
        for s in exploits:
            xs += [s["start_step"], s["start_step"] + (s["steps_done"] or 0)]
            ys += [s["lr"], s["lr"]]
        top.plot(xs, ys, color="tab:blue", lw=2, label="chosen LR (trained)")
        top.scatter([], [], s=14, color="tab:gray", label="candidates tried (stage start)")
        top.scatter([], [], s=14, color="tab:red", label="candidate stopped: diverged")
        top.set_yscale("log")
        top.set_ylabel("learning rate")
        top.set_title(
            f"preset {run['preset']}: final val loss {run['final_val_loss']:.4f}, "
            f"{run['charged_steps']} charged steps",
            fontsize=9,
        )
        top.grid(alpha=0.3)
        top.legend(fontsize=7, loc="lower left")
        colours = {"val_loss": "tab:blue", "train_loss": "tab:orange"}
        for s in exploits:
            points = [(s["start_step"] + step, v) for step, v in s["losses"] if v is not None]
            if points:
                bottom.plot(
                    *zip(*points, strict=True), color=colours[s["metric"]], marker=".", ms=3
                )
        for metric, colour in colours.items():
            if any(s["metric"] == metric for s in exploits):
                bottom.plot([], [], color=colour, label=metric.replace("_", " "))
        bottom.legend(fontsize=7)
        bottom.set_yscale("log")
        bottom.set_xlabel("training step (trajectory)")
        bottom.set_ylabel("loss the job reported")
        bottom.grid(alpha=0.3)
    fig.suptitle("digits MLP under stagelr: one run per preset, same stage sizes", fontsize=10)
    fig.tight_layout()
    path = out / "demo_run.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("docs/results"))
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plots = {"decision_latency.json": plot_decision_latency, "demo_run.json": plot_demo_run}
    for name, plot in plots.items():
        source = args.results / name
        if source.exists():
            print(plot(json.loads(source.read_text()), args.out))
        else:
            print(f"skipped {name}: not found in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
