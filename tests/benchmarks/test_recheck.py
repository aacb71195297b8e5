"""``benchmarks.quality.recheck``: cached runs carried over a code change by reproducing
them bit for bit, with samples retrained on this machine before the change
(``--train-samples``) when the cache was trained on another CPU, for the baseline runs
and for stagelr runs (which train through a live server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.quality import harness
from benchmarks.quality.harness import Cache, Task
from benchmarks.quality.workloads import VARIANTS

ROOT = Path(__file__).resolve().parents[2]
NQM = VARIANTS["nqm-b8"]
TASKS = [
    Task(NQM, "grid", 0, (("peak", 1.9), ("schedule", "wsd"))),
    Task(NQM, "stagelr-default", 0),
]


def recheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.quality.recheck", "--variant", "nqm-b8", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder whose runs another CPU trained (today's code)."""
    folder = tmp_path_factory.mktemp("results")
    cache = Cache(folder).load()
    server = harness.start_service(tmp_path_factory.mktemp("server"))
    try:
        harness._init_worker(server.url)
        for task in TASKS:
            (run,) = harness.execute_item((task,))
            cache.add(task, run)
    finally:
        server.stop()
    path = folder / "nqm-b8.jsonl.gz"
    records = [{**r, "machine": "another CPU"} for r in harness.read_records(path)]
    harness.write_records(path, records)
    return folder


@pytest.mark.parametrize("kind", ["baseline", "stagelr"])
def test_samples_trained_here_carry_another_cpus_runs_over_a_change(
    elsewhere: Path, tmp_path: Path, kind: str
) -> None:
    old = harness.code_hashes()[kind]
    samples = tmp_path / "samples"
    # Without samples, nothing of this machine's own can be reproduced.
    direct = recheck("--results", str(elsewhere), "--old", old)
    assert direct.returncode == 1 and "no run of it made on this machine" in direct.stdout
    trained = recheck("--results", str(elsewhere), "--old", old, "--train-samples", str(samples))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "trained here" in trained.stdout
    (record,) = harness.read_records(samples / "nqm-b8.jsonl.gz")
    assert record["code"] == old and record["machine"] == harness.machine_name()
    checked = recheck("--results", str(elsewhere), "--old", old, "--samples", str(samples))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 runs reproduced bit for bit" in checked.stdout
    aliases = json.loads((elsewhere / harness.ALIASES_FILE).read_text())["aliases"]
    entry = next(a for a in aliases if a["kind"] == kind)
    assert entry["old"] == old and entry["variants"] == ["nqm-b8"]
    assert entry["samples"] == str(samples) and entry["reproduced"] == [record["key"]]
    # A sample that does not reproduce records nothing.
    harness.write_records(
        samples / "nqm-b8.jsonl.gz",
        [{**record, "run": {**record["run"], "final_loss": record["run"]["final_loss"] + 1e-9}}],
    )
    (elsewhere / harness.ALIASES_FILE).unlink()
    bad = recheck("--results", str(elsewhere), "--old", old, "--samples", str(samples))
    assert bad.returncode == 1 and "differ; no alias recorded" in bad.stdout
    assert not (elsewhere / harness.ALIASES_FILE).exists()


def _entry(kind: str, old: str, variants: list[str]) -> dict[str, object]:
    return {"kind": kind, "old": old, "new": "n" + old, "variants": variants,
            "reproduced": [f"{kind}-{v}" for v in variants]}  # fmt: skip


def test_rechecks_run_at_once_keep_each_others_aliases(tmp_path: Path) -> None:
    from benchmarks.quality.recheck import record_alias

    path = tmp_path / harness.ALIASES_FILE
    record_alias(path, _entry("baseline", "a1", ["cnn"]))
    # Another recheck (the stagelr runs') records its alias in the meantime.
    known = json.loads(path.read_text())
    known["aliases"].append(_entry("stagelr", "s1", ["cnn"]))
    path.write_text(json.dumps(known))
    record_alias(path, _entry("rival", "r1", ["cnn"]))
    kinds = [a["kind"] for a in json.loads(path.read_text())["aliases"]]
    assert kinds == ["baseline", "stagelr", "rival"]
    # Another sample of the same change: one entry, vouching for both samples' variants.
    record_alias(path, _entry("baseline", "a1", ["lstm"]))
    (entry,) = [a for a in json.loads(path.read_text())["aliases"] if a["old"] == "a1"]
    assert entry["variants"] == ["cnn", "lstm"]
    assert entry["reproduced"] == ["baseline-cnn", "baseline-lstm"]
