"""Carry cached runs over a code change that does not change them, by reproducing them.

    python -m benchmarks.quality.recheck --old 8e9102e21d7876c8 [--per-variant 2]

A run is cached under the hash of the code it depends on (``harness.code_hashes``), so any
edit to, say, ``workloads.py`` makes every run stale, including days of charlm runs the
edit cannot have touched. This retrains a sample of the runs cached under an old hash
(``--old``) with today's code, on this machine (runs are only compared bit for bit with
runs this CPU trained), and compares each with its record: the final loss, every harness
evaluation, the LR path and the charged steps, exactly. If every sample matches, it
records in ``<results>/code-aliases.json`` that today's hash reproduces the old one on the
sampled variants, with the samples' keys as the evidence, and the cache then reads the old
runs of those variants' workloads as today's (every variant of a workload runs the same
code; only T or a parameter differs). A single mismatch records nothing and prints where the
two differ.

Per variant it samples the ``--per-variant`` quickest runs of that hash that did not
diverge (``--variant`` picks variants, ``--skip`` leaves some out; a later check of the
same change adds its variants to the record).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from . import harness
from .harness import Cache, Task, machine_name, read_records
from .workloads import VARIANTS


def task_of(record: dict[str, Any], old: str) -> Task | None:
    """The task a record was made by, if today's definitions rebuild its exact key."""
    variant = VARIANTS.get(record["variant"])
    if variant is None:
        return None
    task = Task(
        variant, record["method"], int(record["seed"]), tuple(sorted(record["config"].items()))
    )
    hashes = {task.kind: old}
    corpus = record.get("corpus")
    return task if task.key(hashes, corpus) == record["key"] else None


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Where two runs' results differ (empty: identical, bit for bit)."""
    out = []
    for field in ("final_loss", "charged_steps", "trajectory_steps", "diverged"):
        if a.get(field) != b.get(field):
            out.append(f"{field}: {a.get(field)!r} != {b.get(field)!r}")
    if [list(p) for p in a["curve"]] != [list(p) for p in b["curve"]]:
        first = next(
            (
                i
                for i, (p, q) in enumerate(zip(a["curve"], b["curve"], strict=False))
                if list(p) != list(q)
            ),
            min(len(a["curve"]), len(b["curve"])),
        )
        out.append(f"curve differs from evaluation {first}")
    if [list(p) for p in a.get("lr_path", [])] != [list(p) for p in b.get("lr_path", [])]:
        out.append("lr_path differs")
    return out


def samples(
    folder: Path, old: str, per_variant: int, skip: set[str]
) -> list[tuple[Task, dict[str, Any]]]:
    here = machine_name()
    chosen: list[tuple[Task, dict[str, Any]]] = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        records = [
            r for r in read_records(path)
            if r["code"] == old and r.get("machine") == here and r["variant"] not in skip
            and r["method"] != "oracle"
        ]  # fmt: skip
        # The quickest runs that trained to the end (a diverged run exercises little).
        records.sort(
            key=lambda r: (
                bool(r["run"].get("diverged")),
                float(r["run"].get("seconds") or math.inf),
            )
        )
        taken = 0
        for record in records:
            task = task_of(record, old)
            if task is None or taken >= per_variant:
                continue
            chosen.append((task, record))
            taken += 1
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", action="append", required=True, help="an old code hash")
    parser.add_argument("--per-variant", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], help="a variant to leave out")
    parser.add_argument("--variant", action="append", default=None, help="only these variants")
    parser.add_argument(
        "--results", type=Path, default=harness.ROOT / "docs" / "results" / "quality"
    )
    args = parser.parse_args(argv)
    cache = Cache(args.results)
    aliases_path = args.results / harness.ALIASES_FILE
    known = json.loads(aliases_path.read_text()) if aliases_path.exists() else {"aliases": []}
    server = None
    status = 0
    try:
        for old in args.old:
            chosen = samples(args.results, old, args.per_variant, set(args.skip))
            if args.variant:
                chosen = [(t, r) for t, r in chosen if t.variant.name in args.variant]
            if not chosen:
                print(f"{old}: no run of it made on this machine ({machine_name()}) to reproduce")
                status = 1
                continue
            kinds = {task.kind for task, _ in chosen}
            if len(kinds) != 1:
                print(f"{old}: runs of several kinds {sorted(kinds)}; not one code hash")
                status = 1
                continue
            (kind,) = kinds
            if kind == "stagelr" and server is None:
                server = harness.start_service(Path(tempfile.mkdtemp(prefix="recheck-")))
                harness._init_worker(server.url)
            else:
                harness._init_worker(server.url if server else None)
            bad = []
            for task, record in chosen:
                started = time.perf_counter()
                (run,) = harness.execute_item((task,))
                diff = differences(run, record["run"])
                print(
                    f"{old} {task.variant.name} {task.method} {dict(task.config)} "
                    f"seed {task.seed}: "
                    + ("identical" if not diff else "; ".join(diff))
                    + f" ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
                if diff:
                    bad.append(task)
            if bad:
                print(f"{old}: {len(bad)} of {len(chosen)} runs differ; no alias recorded")
                status = 1
                continue
            entry = {
                "kind": kind,
                "old": old,
                "new": cache.hashes[kind],
                "machine": machine_name(),
                "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "variants": sorted({t.variant.name for t, _ in chosen}),
                "reproduced": [r["key"] for _, r in chosen],
            }
            for earlier in known["aliases"]:
                if (earlier["kind"], earlier["old"], earlier["new"]) == (kind, old, entry["new"]):
                    # Another sample of the same change: the variants both vouch for.
                    entry["variants"] = sorted(set(entry["variants"]) | set(earlier["variants"]))
                    entry["reproduced"] = earlier["reproduced"] + entry["reproduced"]
            known["aliases"] = [
                a for a in known["aliases"] if not (a["old"] == old and a["new"] == entry["new"])
            ] + [entry]
            aliases_path.write_text(json.dumps(known, indent=1) + "\n")
            print(f"{old}: {len(chosen)} runs reproduced bit for bit: now read as {entry['new']}")
    finally:
        if server is not None:
            server.stop()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
