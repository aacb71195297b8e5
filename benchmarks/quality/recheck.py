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
same change adds its variants to the record). The NQM oracle (kind ``oracle``) is
compared on its value, its LR sequence and its expected curve.

Another CPU rounds differently, so records another machine trained cannot be reproduced
here. Then take the samples on this machine before the change, with the old code:

    python -m benchmarks.quality.recheck --old f5db67991c8d5093 --train-samples DIR

retrains, with today's code (which must be ``--old``), the quickest runs that the results
cache reads as that code (its own or carried over by an alias) and writes them to ``DIR``
(a results folder: gzip-compressed JSON lines); after the change,

    python -m benchmarks.quality.recheck --old f5db67991c8d5093 --samples DIR

reproduces those and records the alias in the results folder, naming ``DIR`` as where
its evidence lies. Old and new code then gave the same runs on one CPU, so the new code
gives every other machine's old runs too.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
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
    if "lrs" in a or "lrs" in b:  # the NQM oracle
        for field in ("final_loss", "lrs", "expected_curve"):
            if a.get(field) != b.get(field):
                out.append(f"{field} differs")
        return out
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
    folder: Path,
    old: str,
    per_variant: int,
    skip: set[str],
    here_only: bool = True,
    methods: set[str] | None = None,
) -> list[tuple[Task, dict[str, Any]]]:
    """Per variant, the ``per_variant`` quickest runs of code ``old`` that did not diverge
    (``here_only``: trained on this machine; else made by any machine, ``old`` being
    today's code, and read through the results folder's aliases as the cache reads them;
    ``methods``: runs of these methods only)."""
    here = machine_name()
    aliases = {} if here_only else harness.load_aliases(folder, harness.code_hashes())
    chosen: list[tuple[Task, dict[str, Any]]] = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        records = []
        for r in read_records(path):
            if r["variant"] not in VARIANTS or r["variant"] in skip:
                continue
            if methods is not None and r["method"] not in methods:
                continue
            if not here_only:
                workload = VARIANTS[r["variant"]].workload
                method = r["method"]
                alias = harness.alias_of(
                    aliases, harness.kind_of(method), r["code"], workload, method
                )
                if alias is not None:
                    r = harness.rekeyed(r, alias)
            if r["code"] == old and (not here_only or r.get("machine") == here):
                records.append(r)
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


def record_alias(path: Path, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the aliases file ``path``: read, merged and written under an
    exclusive lock of the file, so that rechecks run at once (one per kind of run) all
    keep theirs. (Read once at the start and written at the end, the last to finish
    dropped the others' aliases.) Another sample of the same change merges with its
    earlier entry: the variants both vouch for."""
    with path.open("a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        text = file.read()
        known = json.loads(text) if text.strip() else {"aliases": []}
        key = (entry["kind"], entry["old"], entry["new"], entry.get("methods"))
        for earlier in known["aliases"]:
            if (earlier["kind"], earlier["old"], earlier["new"], earlier.get("methods")) == key:
                entry["variants"] = sorted(set(entry["variants"]) | set(earlier["variants"]))
                entry["reproduced"] = earlier["reproduced"] + entry["reproduced"]
                if "samples" in earlier and "samples" not in entry:
                    entry["samples"] = earlier["samples"]
        known["aliases"] = [
            a
            for a in known["aliases"]
            if not (
                a["old"] == entry["old"]
                and a["new"] == entry["new"]
                and a.get("methods") == entry.get("methods")
            )
        ] + [entry]
        file.seek(0)
        file.truncate()
        file.write(json.dumps(known, indent=1) + "\n")
        file.flush()
        os.fsync(file.fileno())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", action="append", required=True, help="an old code hash")
    parser.add_argument("--per-variant", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], help="a variant to leave out")
    parser.add_argument("--variant", action="append", default=None, help="only these variants")
    parser.add_argument(
        "--method",
        action="append",
        default=None,
        help="only runs of these methods, and the alias vouches for them alone (a change to "
        "one preset's defaults leaves another preset's runs as they were)",
    )
    parser.add_argument(
        "--results", type=Path, default=harness.ROOT / "docs" / "results" / "quality"
    )
    parser.add_argument(
        "--train-samples",
        type=Path,
        metavar="DIR",
        default=None,
        help="retrain samples of --old (today's code) on this machine into DIR, for a later "
        "--samples DIR check of a change",
    )
    parser.add_argument(
        "--samples",
        type=Path,
        metavar="DIR",
        default=None,
        help="reproduce the old code's runs that --train-samples wrote to DIR",
    )
    args = parser.parse_args(argv)
    if args.train_samples is not None:
        return train_samples(args)
    cache = Cache(args.results)
    aliases_path = args.results / harness.ALIASES_FILE
    server = None
    status = 0
    try:
        for old in args.old:
            methods = set(args.method) if args.method else None
            chosen = samples(
                args.samples or args.results,
                old,
                args.per_variant,
                set(args.skip),
                methods=methods,
            )
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
            if methods is not None:
                # The alias vouches for these methods' runs only.
                entry["methods"] = sorted(methods)
            if args.samples is not None:
                entry["samples"] = _rel(args.samples)
            record_alias(aliases_path, entry)
            print(f"{old}: {len(chosen)} runs reproduced bit for bit: now read as {entry['new']}")
    finally:
        if server is not None:
            server.stop()
    return status


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(harness.ROOT))
    except ValueError:
        return str(path)


def train_samples(args: argparse.Namespace) -> int:
    """Retrain samples of each ``--old`` hash (today's code) on this machine into
    ``--train-samples``: the old side of a later ``--samples`` check."""
    hashes = harness.code_hashes()
    out = Cache(args.train_samples, hashes).load()
    status = 0
    for old in args.old:
        chosen = samples(
            args.results,
            old,
            args.per_variant,
            set(args.skip),
            here_only=False,
            methods=set(args.method) if args.method else None,
        )
        if args.variant:
            chosen = [(t, r) for t, r in chosen if t.variant.name in args.variant]
        kinds = {task.kind for task, _ in chosen}
        if not chosen or len(kinds) != 1 or hashes[next(iter(kinds))] != old:
            print(f"{old}: not today's code of one kind (today: {hashes}); nothing trained")
            status = 1
            continue
        server = None
        if kinds == {"stagelr"}:  # stagelr runs train through a live server
            server = harness.start_service(Path(tempfile.mkdtemp(prefix="recheck-")))
        harness._init_worker(server.url if server else None)
        for task, _ in chosen:
            if out.get(task) is not None:
                continue
            started = time.perf_counter()
            (run,) = harness.execute_item((task,))
            out.add(task, run)
            print(
                f"{old} {task.variant.name} {task.method} {dict(task.config)} seed {task.seed}: "
                f"trained here ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        out.compact(sorted({t.variant.name for t, _ in chosen}))
        if server is not None:
            server.stop()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
