"""Screenshots of the dashboard for the docs: a real study on a live server, in chromium.

Starts `stagelr serve` on a fresh SQLite file, tunes the digits MLP of `stagelr demo`
under it (real PyTorch training), adds a few synthetic studies so the list has some
variety (one left running, one stopped, one whose job went quiet past the lease), and
then photographs the study list and the digits study's page with Debian's chromium
driven by Playwright. Then it adds 1,000 studies and times list pages over HTTP (first,
middle and last page of each sort):

    .venv/bin/python benchmarks/dashboard_screenshots.py            # docs/img/dashboard-*.png
    .venv/bin/python benchmarks/dashboard_screenshots.py --out /tmp/shots

Needs the `demo` and `dev` extras and /usr/bin/chromium (`apt-get install chromium`).
Prints what each page showed (studies, points per chart) and the time each step took.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx

import stagelr
from stagelr.models import Metric, SegmentDecision, SegmentKind
from stagelr_service.server import start_server
from stagelr_service.testing.simulation import SyntheticJob

ROOT = Path(__file__).resolve().parents[1]
LEASE_SECONDS = 15
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def synthetic(url: str, name: str, *, seed: int, segments: int | None = None) -> int:
    """Drive a synthetic job for ``segments`` segments (all: None); returns the study id.
    A job that stops early leaves its study running with the next segment open."""
    job = SyntheticJob(seed=seed, best_lr=0.03 * (1 + seed))
    with stagelr.Tuner(
        url,
        study=name,
        project="synthetic",
        lr_min=1e-3,
        lr_max=1.0,
        total_steps=600,
        tau0=100,
        tau_max=200,
        k=5,
        seed=seed,
    ) as tuner:
        for done, segment in enumerate(tuner):
            if segments is not None and done >= segments:
                break
            explore = segment.kind is SegmentKind.explore
            reports, _ = job.train(
                segment.lr,
                segment.planned_steps,
                segment.report_every,
                explore=explore,
                stop_above=segment.stop_above,
            )
            for step, value in reports:
                segment.report(step, value)
            segment.complete()
        return tuner.study_id


def list_latency(server_url: str, database_url: str, count: int = 1000) -> None:
    """Seed ``count`` studies through the repository and time list pages over HTTP:
    first, middle and last page of each sort, warm, median of 5 tries each."""
    from stagelr.models import StudyConfig
    from stagelr_service.store import Store
    from stagelr_service.tuner import resolve

    config = resolve(StudyConfig(lr_min=1e-3, lr_max=1.0, total_steps=1000)).to_stored()
    started = time.perf_counter()
    with Store(database_url) as store, store.transaction() as repo:
        project = repo.get_or_create_project("load")
        for i in range(count):
            study, _ = repo.create_study(project.id, f"load-{i:04d}", config)
            stage = repo.get_or_create_stage(study.id, 0, 100, 10, 0)
            segment = repo.insert_segment(
                study.id,
                stage.id,
                0,
                SegmentDecision(
                    stage=0,
                    index=3,
                    kind=SegmentKind.exploit,
                    lr=0.01 * (1 + i % 50),
                    steps=100,
                    start_step=0,
                    horizon=100,
                    metric=Metric.val_loss,
                    report_every=10,
                    data_seed=0,
                ),
            )
            repo.add_observations(segment.id, [(s, "val_loss", 2.0 - s / 100) for s in (10, 20)])
    print(f"seeded {count} studies in {time.perf_counter() - started:.1f} s")
    with httpx.Client(base_url=server_url, timeout=60) as client:
        for sort in ("updated", "name", "best_loss", "status"):
            figures = []
            for page in (1, count // 100, count // 50 + 1):
                client.get("/dashboard", params={"sort": sort, "page": page}).raise_for_status()
                tries = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    client.get("/dashboard", params={"sort": sort, "page": page})
                    tries.append(time.perf_counter() - t0)
                figures.append(f"page {page}: {sorted(tries)[2] * 1000:.0f} ms")
            print(f"list of {count}+ studies, 50 per page, sort={sort}: " + ", ".join(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--steps", type=int, default=1200, help="digits study total steps")
    parser.add_argument(
        "--no-list-timing",
        dest="list_timing",
        action="store_false",
        help="skip timing the list pages with 1,000 studies",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch
    from playwright.sync_api import sync_playwright

    from stagelr_service.demo import train_digits

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        # A short lease, so that a study whose job went quiet shows as stalled.
        server = start_server(
            f"sqlite:///{tmp}/stagelr.db",
            Path(tmp) / "server.log",
            env={"STAGELR_LEASE_SECONDS": str(LEASE_SECONDS)},
        )
        try:
            started = time.perf_counter()
            for seed, name in enumerate(("bowl-lr-sweep", "bowl-seed-1", "bowl-seed-2")):
                synthetic(server.url, name, seed=seed)
            stopped = synthetic(server.url, "bowl-early-stop", seed=2, segments=8)
            httpx.post(f"{server.url}/v1/studies/{stopped}/stop").raise_for_status()
            synthetic(server.url, "bowl-job-died", seed=3, segments=6)
            quiet_since = time.monotonic()
            with stagelr.Tuner(
                server.url,
                study="digits-mlp",
                project="vision",
                lr_min=1e-3,
                lr_max=1.0,
                total_steps=args.steps,
                tau0=100,
                tau_max=400,
                k=6,
                seed=3,
            ) as tuner:
                result = train_digits(tuner, seed=3)
                digits = tuner.study_id
            time.sleep(max(0.0, quiet_since + LEASE_SECONDS + 1 - time.monotonic()))
            synthetic(server.url, "bowl-in-progress", seed=1, segments=13)
            print(
                f"studies ready in {time.perf_counter() - started:.1f} s; digits final "
                f"val loss {result.final_val_loss:.4f}, stages "
                + ", ".join(f"{lr:.3g}" for _, _, lr in result.stages)
            )

            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                page.goto(f"{server.url}/dashboard")
                rows = page.locator("tr.study-row").count()
                page.screenshot(path=str(args.out / "dashboard-list.png"), full_page=True)
                page.goto(f"{server.url}/dashboard/studies/{digits}")
                # Down to the end of the latest stage that had a search: the whole page
                # (every stage, the config) is too tall for the README.
                searched = page.locator("section.stage:has(svg)").first.bounding_box()
                assert searched is not None
                height = searched["y"] + searched["height"] + 16
                counts = {
                    sel: page.locator(sel).count()
                    for sel in (
                        "circle.chosen",
                        "circle.candidate",
                        "circle.obs",
                        "section.stage",
                        "circle.cand",
                        "polyline.fit",
                    )
                }
                page.screenshot(
                    path=str(args.out / "dashboard-study.png"),
                    full_page=True,
                    clip={"x": 0, "y": 0, "width": 1200, "height": height},
                )
                browser.close()
            print(f"list: {rows} studies; study page: {counts}")
            for name in ("dashboard-list.png", "dashboard-study.png"):
                path = args.out / name
                print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
            if args.list_timing:
                list_latency(server.url, server.database_url)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
