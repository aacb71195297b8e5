"""The run plan and the results cache.

Every finished run is appended at once to ``<results>/<variant>.jsonl.gz`` (gzip-compressed
JSON lines; a file is compacted into one gzip member when a benchmark ends), keyed by what
determines it: the variant and its T, the method and its config (a planned budget other
than T is ``budget`` in it), the seed, the hash of the code that produced it and, for the
text workloads, the corpus's SHA-256. A run whose key is in the cache is never trained
again, so a full benchmark resumes, and a code change (or another corpus) retrains exactly
what it affects, unless ``code-aliases.json`` records that the new code reproduces the old
code's runs bit for bit (``python -m benchmarks.quality.recheck``). Each stagelr run is
also one study of the live server's (scratch) database, kept as a gzip-compressed
``stagelr export`` file per variant under ``<results>/studies/``.

Steps-to-target (BENCHMARK.md version 2) reads budgeted runs: a planned method (the
target config, Prodigy and D-Adapt, stagelr ``default``) is run for each budget B in
:data:`BUDGETS` in turn on a seed, stopping at the first whose run ends at or below the
target; the anytime rivals run once to 3T.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import hashlib
import json
import math
import os
import platform
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from . import methods, rivals, tuned, workloads
from .methods import Run
from .workloads import VARIANTS, Variant

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service" / "stagelr_service"

#: Seeds per run kind and workload (BENCHMARK.md "Seeds and statistics").
#: The slow workloads: a run takes minutes on charlm and 15-30 s on the GRU workloads on
#: this shared 2-core machine (against 0.5-4 s for the rest), so they get the protocol's
#: 2 grid seeds; their single-run methods get 3 (charlm) and 5 (the GRU workloads) seeds
#: where the protocol asks 10 of a run under a minute: what the machine could train.
SLOW = ("charlm", "charrnn", "charrnn-ft")
GRID_SEEDS = {
    "nqm": 3, "digits": 3, "charlm": 2, "cnn": 3, "regression": 3, "charrnn": 2, "charrnn-ft": 2,
    "lstm": 3, "autoencoder": 3, "charmlp-ft": 3, "convlm": 3, "convlm-ft": 3, "imagefit": 3,
    "cnn-ft": 3, "lorenz": 3, "swissroll": 3, "patchae-ft": 3, "digitvit": 3, "hastie": 3,
    "lorenz-ft": 3, "roll-ft": 3,
}  # fmt: skip
METHOD_SEEDS = {
    "nqm": 10, "digits": 10, "charlm": 3, "cnn": 10, "regression": 10, "charrnn": 5,
    "charrnn-ft": 5, "lstm": 10, "autoencoder": 10, "charmlp-ft": 10, "convlm": 10,
    "convlm-ft": 10, "imagefit": 10, "cnn-ft": 10, "lorenz": 10, "swissroll": 10,
    "patchae-ft": 10, "digitvit": 10, "hastie": 10, "lorenz-ft": 10, "roll-ft": 10,
}  # fmt: skip
BASELINES = ("untuned", "range_test")
RIVALS = rivals.ALL
STAGELR = tuple(tuned.METHODS)
ALL_METHODS = ("grid", *BASELINES, *RIVALS, *STAGELR)
#: The budgets (in T) a planned method's steps-to-target is read from, in order.
BUDGETS = (1.0, 1.5, 2.0, 3.0)
#: stagelr's rows planned for each budget (the same preset told B x T charged steps).
DEFAULT_BY_BUDGET = {b: m for m, (p, b) in tuned.METHODS.items() if p == "default"}
#: Where the commit at which ``default`` was frozen for a held-out split's report is
#: recorded: this file for the test split, ``default-frozen-<split>.json`` for another.
FROZEN_FILE = "default-frozen.json"
ALIASES_FILE = "code-aliases.json"
QUICK_STEPS = {"nqm": 160, "digits": 160, "charlm": 32, "regression": 160, "cnn": 160}
QUICK_VARIANTS = ("nqm-b8", "digits", "charlm", "regression", "cnn")


def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(ROOT).as_posix().encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name() -> str:
    """What a result records about the machine that trained it (runs are compared in
    steps, which do not depend on it; its seconds do)."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def code_hashes() -> dict[str, str]:
    """The code each kind of run depends on. Baselines: the workloads and the baseline
    runners. stagelr: those, the driver and the service's decision code (tuner, forecast,
    optimizer, the presets in the wire models)."""
    here = Path(__file__).resolve().parent
    base = [here / "workloads.py", here / "methods.py"]
    return {
        "baseline": _hash_files(base),
        "rival": _hash_files([*base, here / "rivals.py"]),
        "stagelr": _hash_files(
            [
                *base,
                here / "tuned.py",
                SERVICE / "tuner",
                SERVICE / "forecast",
                SERVICE / "optimizer",
                SERVICE / "studies.py",
                ROOT / "client" / "stagelr" / "models.py",
            ]
        ),
        "oracle": _hash_files([here / "workloads.py"]),
    }


def kind_of(method: str) -> str:
    """Which code a method's runs depend on (a key of :func:`code_hashes`)."""
    if method == "oracle":
        return "oracle"
    if method in RIVALS:
        return "rival"
    return "stagelr" if method.startswith("stagelr-") else "baseline"


@dataclass(frozen=True)
class Task:
    """One run to do."""

    variant: Variant
    method: str  # grid | untuned | range_test | a rival | stagelr-<preset> | oracle
    seed: int
    config: tuple[tuple[str, Any], ...] = ()

    @property
    def kind(self) -> str:
        return kind_of(self.method)

    @property
    def budget(self) -> float:
        """The budget this run plans for, in T (stagelr: its method's)."""
        if self.method in tuned.METHODS:
            return float(tuned.METHODS[self.method][1] or 1.0)
        return float(dict(self.config).get("budget", 1.0))

    def key(self, hashes: dict[str, str], corpus: str | None) -> str:
        return json.dumps(
            [
                self.variant.name,
                self.variant.steps,
                [list(p) for p in self.variant.params],
                self.variant.evals,
                self.method,
                dict(self.config),
                self.seed,
                hashes[self.kind],
                corpus,
            ],
            sort_keys=True,
        )


@dataclass
class Cache:
    """The JSONL results of one results folder, by task key."""

    folder: Path
    hashes: dict[str, str] = field(default_factory=code_hashes)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale: int = 0
    other_corpus: int = 0
    _corpora: dict[str, str | None] = field(default_factory=dict)

    def corpus(self, workload: str = "charlm") -> str | None:
        """The SHA-256 of ``workload``'s corpus (None: its data is fixed by the code)."""
        if workload not in self._corpora:
            self._corpora[workload] = workloads.corpus_sha256(workload)
        return self._corpora[workload]

    def load(self) -> Cache:
        self.folder.mkdir(parents=True, exist_ok=True)
        current = set(self.hashes.values())
        aliases = load_aliases(self.folder, self.hashes)
        for path in sorted(self.folder.glob("*.jsonl.gz")):
            for record in read_records(path):
                workload = VARIANTS[record["variant"]].workload
                method = record["method"]
                alias = alias_of(aliases, kind_of(method), record["code"], workload, method)
                if alias is not None:
                    record = rekeyed(record, alias)
                if record["code"] not in current:
                    self.stale += 1
                    continue
                if record.get("corpus") and record["corpus"] != self.corpus(workload):
                    # Runs on another corpus are never compared with these.
                    self.other_corpus += 1
                    continue
                self.records[record["key"]] = record
        return self

    def key(self, task: Task) -> str:
        return task.key(self.hashes, self.corpus(task.variant.workload))

    def get(self, task: Task) -> dict[str, Any] | None:
        return self.records.get(self.key(task))

    def add(self, task: Task, run: dict[str, Any]) -> dict[str, Any]:
        key = self.key(task)
        record: dict[str, Any] = {
            "key": key,
            "variant": task.variant.name,
            "steps": task.variant.steps,
            "method": task.method,
            "config": dict(task.config),
            "seed": task.seed,
            "code": self.hashes[task.kind],
            "corpus": self.corpus(task.variant.workload),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_name(),
            "run": run,
        }
        self.records[key] = record
        # A gzip member per record (a gzip file may hold many): written at once, so an
        # interrupted benchmark loses nothing; compact() joins them at the end.
        with gzip.open(self.folder / f"{task.variant.name}.jsonl.gz", "at") as file:
            file.write(json.dumps(record, separators=(",", ":")) + "\n")
        return record

    def compact(self, names: list[str]) -> None:
        """Rewrite each named variant's file as one gzip member (its records in order)."""
        for name in names:
            path = self.folder / f"{name}.jsonl.gz"
            if path.exists():
                write_records(path, list(read_records(path)))


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results file (gzip-compressed JSON lines)."""
    with gzip.open(path, "rt") as file:
        return [json.loads(line) for line in file if line.strip()]


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Write ``records`` as one gzip member, atomically (mtime 0: the bytes depend on
    the records alone)."""
    partial = path.with_name(path.name + ".part")
    with partial.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as file:
        for record in records:
            file.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
    partial.replace(path)


#: An alias map's key: (kind, old code hash, workload, method or None for every method).
AliasKey = tuple[str, str, str, str | None]


def load_aliases(folder: Path, hashes: dict[str, str]) -> dict[AliasKey, str]:
    """(kind, old code hash, workload, method) -> today's hash of that kind, for each
    recorded alias whose new side is today's code (``recheck`` reproduced runs of that
    workload under the old code with it, bit for bit), and for each alias of such an old
    hash in turn. An alias vouches only for the workloads its samples came from (every
    variant of a workload runs the same code; only T or a parameter differs), and, when
    it names ``methods``, only for those (a change to one preset's defaults leaves the
    other presets' runs as they were: ``recheck --method``); the method is None where it
    vouches for every method. Read a record's alias with :func:`alias_of`."""
    path = folder / ALIASES_FILE
    if not path.exists():
        return {}
    entries = json.loads(path.read_text())["aliases"]

    def workloads_of(entry: dict[str, Any]) -> set[str]:
        return {VARIANTS[v].workload for v in entry["variants"] if v in VARIANTS}

    def scope(entry: dict[str, Any]) -> list[str | None]:
        methods = entry.get("methods")
        return [None] if not methods else list(methods)

    out: dict[AliasKey, str] = {}
    for entry in entries:
        if hashes.get(entry["kind"]) == entry["new"]:
            for workload in workloads_of(entry):
                for method in scope(entry):
                    out[(entry["kind"], entry["old"], workload, method)] = entry["new"]
    grew = True
    while grew:
        grew = False
        for entry in entries:
            mine = scope(entry)
            for workload in workloads_of(entry):
                via = [
                    (m, new)
                    for (k, o, w, m), new in list(out.items())
                    if (k, o, w) == (entry["kind"], entry["new"], workload)
                ]
                for onward, new in via:
                    # The chain vouches for the methods both links do.
                    if onward is None:
                        methods = mine
                    elif None in mine or onward in mine:
                        methods = [onward]
                    else:
                        methods = []
                    for method in methods:
                        key = (entry["kind"], entry["old"], workload, method)
                        if key not in out:
                            out[key] = new
                            grew = True
    return out


def alias_of(
    aliases: dict[AliasKey, str], kind: str, code: str, workload: str, method: str
) -> str | None:
    """Today's hash a record of ``method`` made under ``code`` is read as, or None."""
    return aliases.get((kind, code, workload, method)) or aliases.get((kind, code, workload, None))


def rekeyed(record: dict[str, Any], code: str) -> dict[str, Any]:
    """``record`` under code hash ``code`` (its key's hash element replaced)."""
    key = json.loads(record["key"])
    key[7] = code
    return {**record, "key": json.dumps(key, sort_keys=True), "code": code}


# --------------------------------------------------------------------------- the plan


def variants_for(quick: bool, names: list[str] | None) -> list[Variant]:
    chosen = list(VARIANTS.values())
    if quick:
        chosen = [VARIANTS[n] for n in QUICK_VARIANTS]
    if names:
        chosen = [v for v in chosen if v.name in names or v.workload in names]
        if not chosen:
            raise SystemExit(
                f"no variant matches {names}: choose from {', '.join(VARIANTS)} or "
                f"{', '.join(workloads.WORKLOADS)}"
            )
    if quick:
        chosen = [v.smoke(QUICK_STEPS[v.workload]) for v in chosen]
    return chosen


def grid_points(variant: Variant, quick: bool) -> list[tuple[str, float]]:
    """Every (schedule, peak) of Tier A, nearest the grid's centre first (so a partial
    grid of a slow workload holds its likeliest winners)."""
    peaks = list(variant.grid)
    if quick:
        peaks = peaks[3:5]
    centre = math.log(peaks[len(peaks) // 2])
    peaks.sort(key=lambda p: abs(math.log(p) - centre))
    return [(kind, peak) for peak in peaks for kind in methods.SCHEDULES]


def seeds(variant: Variant, quick: bool, override: int | None, grid: bool) -> list[int]:
    if quick:
        return [0]
    if override is not None:
        return list(range(override))
    table = GRID_SEEDS if grid else METHOD_SEEDS
    return list(range(table[variant.workload]))


def best_config(
    cache: Cache, variant: Variant, quick: bool, seeds_override: int | None
) -> tuple[tuple[tuple[str, Any], ...], float] | None:
    """The Tier A config with the lowest median final loss over the grid seeds, and that
    median (the target); None until every grid point has all its seeds."""
    best: tuple[tuple[tuple[str, Any], ...], float] | None = None
    for kind, peak in grid_points(variant, quick):
        config = (("peak", peak), ("schedule", kind))
        finals = []
        for seed in seeds(variant, quick, seeds_override, grid=True):
            record = cache.get(Task(variant, "grid", seed, config))
            if record is None:
                return None
            finals.append(_final(record))
        median = float(np.median(finals))
        if best is None or median < best[1]:
            best = (config, median)
    return best


def _final(record: dict[str, Any]) -> float:
    value = record["run"]["final_loss"]
    return math.inf if value is None else float(value)


def frozen_file(folder: Path, split: str = "test") -> Path:
    """Where the frozen commit of held-out ``split`` is recorded."""
    if split not in workloads.HELD_OUT:
        raise ValueError(f"{split!r} is not a held-out split ({', '.join(workloads.HELD_OUT)})")
    return folder / (FROZEN_FILE if split == "test" else f"default-frozen-{split}.json")


def frozen_default(folder: Path, split: str = "test") -> dict[str, Any] | None:
    """The record of the commit at which ``default`` was frozen for held-out ``split``
    (None: it has not been run there)."""
    path = frozen_file(folder, split)
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def frozen_defaults(folder: Path) -> dict[str, dict[str, Any] | None]:
    """Each held-out split's frozen-commit record (None where there is none)."""
    return {split: frozen_default(folder, split) for split in workloads.HELD_OUT}


def record_frozen(folder: Path, commit: str, split: str = "test") -> dict[str, Any]:
    """Record that ``default`` is judged on held-out ``split`` as of ``commit``, with the
    stagelr code hash it is judged at (a later ``default`` is another hash: the report
    then says the split's results were read before it, and are dev results for it)."""
    record = {
        "commit": commit,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stagelr_code": code_hashes()["stagelr"],
    }
    frozen_file(folder, split).write_text(json.dumps(record, indent=1) + "\n")
    return record


def method_applies(method: str, variant: Variant, folder: Path) -> bool:
    """Whether ``method`` runs on ``variant``: rivals by optimizer family; a stagelr
    method (``default`` at every budget, ``autolrs``) on a held-out split only once the
    commit at which ``default`` is frozen for that split is recorded (a stagelr run reads
    the workload)."""
    if method in RIVALS:
        return rivals.applies(method, variant)
    if method.startswith("stagelr-") and variant.split in workloads.HELD_OUT:
        return frozen_default(folder, variant.split) is not None
    return True


def budget_task(variant: Variant, method: str, seed: int, config: tuple[tuple[str, Any], ...],
                budget: float) -> Task:  # fmt: skip
    """The run of ``method`` (``config``: its grid point, if any) planned for ``budget`` T."""
    if method in DEFAULT_BY_BUDGET.values():
        return Task(variant, DEFAULT_BY_BUDGET[budget], seed)
    if method in tuned.METHODS:  # autolrs: one run, total_steps = T
        if budget != 1.0:
            raise ValueError(f"{method} is not run for a budget")
        return Task(variant, method, seed)
    extra = () if budget == 1.0 else (("budget", budget),)
    return Task(variant, method, seed, tuple(sorted(config + extra)))


def first_at_target(
    cache: Cache, variant: Variant, method: str, seed: int, config: tuple[tuple[str, Any], ...],
    target: float,
) -> tuple[float | None, Task | None]:  # fmt: skip
    """Walk ``BUDGETS`` for one seed of a planned method: (the first budget whose run ends at
    or below ``target``, None), (inf, None) if none does, or (None, the next run to train)."""
    for budget in BUDGETS:
        task = budget_task(variant, method, seed, config, budget)
        record = cache.get(task)
        if record is None:
            return None, task
        if _final(record) <= target:
            return budget, None
    return math.inf, None


def plan(
    variant: Variant,
    cache: Cache,
    method_names: list[str],
    quick: bool,
    seeds_override: int | None,
) -> list[Task]:
    """The first-phase tasks of a variant: the grid, and every single-run method at T
    (the anytime rivals run to 3T in one go).

    A slow workload (:data:`SLOW`) trains its grid point by point with every seed of a
    point before the next, the grid's centre first: a partial grid then has its middle
    complete (a point counts toward the target only once it has all its seeds). charlm
    also runs its single-run methods before its grid.
    """
    grid: list[Task] = []
    if "grid" in method_names:
        grid_seeds = seeds(variant, quick, seeds_override, grid=True)
        points = grid_points(variant, quick)
        pairs = (
            [(seed, point) for point in points for seed in grid_seeds]
            if variant.workload in SLOW
            else [(seed, point) for seed in grid_seeds for point in points]
        )
        for seed, (kind, peak) in pairs:
            grid.append(Task(variant, "grid", seed, (("peak", peak), ("schedule", kind))))
    single = [
        Task(variant, method, seed)
        for seed in seeds(variant, quick, seeds_override, grid=False)
        for method in method_names
        if method != "grid"
        and (Task(variant, method, seed).budget == 1.0 or method in RIVALS)
        and method_applies(method, variant, cache.folder)
    ]
    oracle = [Task(variant, "oracle", 0)] if variant.workload == "nqm" else []
    ordered = single + grid if variant.workload == "charlm" else grid + single
    return [t for t in oracle + ordered if cache.get(t) is None]


def planned_methods(
    variant: Variant, cache: Cache, method_names: list[str], quick: bool,
    seeds_override: int | None, rival_budgets: bool = True,
) -> list[tuple[str, tuple[tuple[str, Any], ...]]]:  # fmt: skip
    """The planned methods whose steps-to-target is read from budgeted runs: the target
    config (once the grid is complete), Prodigy and D-Adapt, stagelr default (when a
    budgeted run of it, ``stagelr-default-1.5t`` and the like, is among ``method_names``:
    ``--method stagelr-default`` alone asks for its runs at T)."""
    out: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
    best = best_config(cache, variant, quick, seeds_override)
    if best is not None and "grid" in method_names:
        out.append(("grid", best[0]))
    for method in rivals.PLANNED if rival_budgets else ():
        if method in method_names and method_applies(method, variant, cache.folder):
            out.append((method, ()))
    wants_default = any(m in method_names for b, m in DEFAULT_BY_BUDGET.items() if b != 1.0)
    if wants_default and method_applies("stagelr-default", variant, cache.folder):
        out.append(("stagelr-default", ()))
    return out


def extension(
    variant: Variant,
    cache: Cache,
    method_names: list[str],
    quick: bool,
    seeds_override: int | None,
    rival_budgets: bool = True,
) -> list[Task]:
    """The next budgeted runs: the target config on the single-run methods' seeds at T
    (so every method pairs with it), then, per planned method and seed, the next budget
    while every smaller one ended above the target."""
    best = best_config(cache, variant, quick, seeds_override)
    if best is None:
        return []
    tasks: list[Task] = []
    planned = planned_methods(variant, cache, method_names, quick, seeds_override, rival_budgets)
    for method, config in planned:
        for seed in seeds(variant, quick, seeds_override, grid=False):
            _, task = first_at_target(cache, variant, method, seed, config, best[1])
            if task is not None:
                tasks.append(task)
    return tasks


def phases(
    variant: Variant,
    cache: Cache,
    first: list[Task],
    method_names: list[str],
    quick: bool,
    seeds_override: int | None,
    rival_budgets: bool = True,
) -> Iterator[tuple[str, list[Task]]]:
    """The batches of runs to train for ``variant``, each planned once the one before has
    been trained into ``cache``: ``first`` (its :func:`plan`), then the target config on
    every seed and each budget that the runs so far leave open (a seed's run ended above
    the target at every smaller budget), until none is. An empty ``first`` (every run at T
    cached, or only budgeted methods asked for) goes straight to the budgeted runs."""
    if first:
        yield "runs", first
    while tasks := extension(variant, cache, method_names, quick, seeds_override, rival_budgets):
        yield "budgeted runs", tasks


# --------------------------------------------------------------------------- execution

_URL: str | None = None


#: prctl(2)'s option that sends a signal to this process when its parent ends.
PR_SET_PDEATHSIG = 1


def _init_pool_worker(url: str | None) -> None:
    """A pool worker's start: it dies with the benchmark that started it (Linux's parent
    death signal), however that ends; an interrupted benchmark left its workers
    training, orphaned, until they had run every run queued to them."""
    # Not on Linux: the pool's own shutdown has to do.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the benchmark ended before the call above
        os._exit(1)
    _init_worker(url)


def _init_worker(url: str | None) -> None:
    global _URL
    _URL = url
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def execute(task: Task) -> dict[str, Any]:
    """Run one task (in a worker process) and return its JSON-ready result."""
    if task.method == "oracle":
        lrs, value = workloads.nqm_oracle(task.variant.steps, int(task.variant.param("batch")))
        curve = workloads.nqm_expected_losses(lrs, int(task.variant.param("batch")))
        return {"final_loss": value, "lrs": lrs.tolist(), "expected_curve": curve.tolist()}
    if task.kind == "stagelr":
        assert _URL is not None, "stagelr runs need the server"
        preset, budget = tuned.METHODS[task.method]
        # A stagelr task's config holds an ablation's overrides (none: the preset).
        run = tuned.run_stagelr(
            _URL,
            task.variant,
            task.seed,
            preset,
            overrides=dict(task.config) or None,
            budget=budget,
        )
    elif task.kind == "rival":
        run = rivals.run_rival(task.variant, task.seed, task.method, dict(task.config))
    else:
        run = methods.run_method(task.variant, task.seed, task.method, dict(task.config))
    return _with_expected(task, run)


def _with_expected(task: Task, run: methods.Run) -> dict[str, Any]:
    out = run.to_json()
    if task.variant.workload == "nqm" and run.lr_path and not run.diverged:
        # The exact E[L_T] of the LR path this run trained: W1's noise-free quality.
        out["expected_final"] = float(
            workloads.nqm_expected_losses(
                _expand(run.lr_path, run.trajectory_steps), int(task.variant.param("batch"))
            )[-1]
        )
    return out


# --------------------------------------------------------------------------- WSD branches
#
# WSD and constant at the same peak train the same steps on the same batches until WSD's
# cooldown starts (the warmup is shared, then both hold the peak), and every workload's
# batch is a function of the seed and the trajectory step alone. So the grid trains the
# constant run, keeps the state at the cooldown's first step, and branches the WSD run
# from it: the same numbers as two separate runs (a test checks they are identical) for
# 1 + 0.2 runs' training instead of 2, which is 20% off a grid. Only wall time changes:
# the WSD run's record, charged steps included, is what a separate run writes.


class _Tap:
    """A job wrapper that records what a fixed-schedule run sees, and keeps a snapshot of
    the state when trajectory step ``at`` is about to be trained."""

    def __init__(self, job: workloads.Job, at: int) -> None:
        self.job, self.at = job, at
        self.eval_cost_steps = job.eval_cost_steps
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.vals: dict[int, float] = {}  # steps trained -> the evaluation then
        self.state: Any = None

    def train_step(self, t: int, lr: float) -> float:
        if t == self.at:
            self.state = self.job.snapshot()
        loss = self.job.train_step(t, lr)
        self.lrs.append(lr)
        self.losses.append(loss)
        return loss

    def val_loss(self) -> float:
        value = self.job.val_loss()
        self.vals[len(self.losses)] = value
        return value

    def snapshot(self) -> Any:
        return self.job.snapshot()

    def load(self, state: Any) -> None:
        self.job.load(state)

    def checkpointer(self) -> workloads.SegmentCheckpointer:
        raise TypeError("a tapped job runs a fixed schedule, not stagelr")


class _Branch(_Tap):
    """Replays a tapped run's first ``at`` steps (and its evaluations among them) without
    training, then loads the tapped state and trains on for real."""

    def __init__(self, tap: _Tap) -> None:
        super().__init__(tap.job, tap.at)
        self.tap = tap
        self.trained = 0

    def train_step(self, t: int, lr: float) -> float:
        if t < self.at:
            if lr != self.tap.lrs[t]:
                raise AssertionError(f"branch LR {lr} differs from the trunk's at step {t}")
            self.trained = t + 1
            return self.tap.losses[t]
        if t == self.at:
            self.job.load(self.tap.state)
        self.trained = t + 1
        return self.job.train_step(t, lr)

    def val_loss(self) -> float:
        if self.trained <= self.at:
            return self.tap.vals[self.trained]
        return self.job.val_loss()


def run_constant_and_wsd(variant: Variant, seed: int, peak: float) -> tuple[Run, Run]:
    """Tier A's constant and WSD runs at ``peak``, the WSD run branched from the constant
    run at the start of its cooldown."""
    at = variant.steps - round(methods.WSD_COOLDOWN * variant.steps)
    tap = _Tap(workloads.make_job(variant, seed), at)
    constant = methods.train_schedule(tap, variant, "constant", peak)
    started = time.perf_counter()
    wsd = methods.train_schedule(_Branch(tap), variant, "wsd", peak)
    wsd.seconds = time.perf_counter() - started
    wsd.extra = {"branched_from": "constant", "shared_steps": at}
    return constant, wsd


def _work_items(tasks: list[Task]) -> list[tuple[Task, ...]]:
    """The tasks as units of work: a missing constant grid run and its missing WSD twin
    (same variant, seed and peak) become one unit, wherever the two stand in the list."""

    def twin_key(task: Task, schedule: str) -> tuple[str, int, float] | None:
        config = dict(task.config)
        if task.method != "grid" or config["schedule"] != schedule or task.budget != 1.0:
            return None
        return (task.variant.name, task.seed, float(config["peak"]))

    wsd = {key: t for t in tasks if (key := twin_key(t, "wsd")) is not None}
    constants = {key for t in tasks if (key := twin_key(t, "constant")) is not None}
    items: list[tuple[Task, ...]] = []
    for task in tasks:
        if twin_key(task, "wsd") in constants:
            continue  # trained as its constant twin's branch
        key = twin_key(task, "constant")
        twin = wsd.get(key) if key is not None else None
        items.append((task, twin) if twin is not None else (task,))
    return items


def execute_item(item: tuple[Task, ...]) -> list[dict[str, Any]]:
    """Run one unit of work (in a worker process): its tasks' JSON-ready results."""
    if len(item) == 1:
        return [execute(item[0])]
    constant, wsd = item
    peak = float(dict(constant.config)["peak"])
    runs = run_constant_and_wsd(constant.variant, constant.seed, peak)
    return [_with_expected(task, run) for task, run in zip(item, runs, strict=True)]


def _expand(path: list[tuple[int, float]], steps: int) -> np.ndarray:
    lrs = np.zeros(steps)
    for (start, lr), nxt in zip(path, [*path[1:], (steps, 0.0)], strict=True):
        lrs[start : nxt[0]] = lr
    return lrs


@dataclass
class Server:
    url: str
    stop: Callable[[], None]


#: Where each results folder's live server keeps its database while a benchmark runs
#: (not committed; the studies are kept as ``stagelr export`` files, see export_studies).
SCRATCH = ROOT / "benchmarks" / "results" / "tmp" / "quality-studies"
STUDIES_DIR = "studies"


def scratch_database(folder: Path) -> Path:
    """The server database of the results folder ``folder`` (one per folder)."""
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return SCRATCH / f"{folder.name}-{tag}.sqlite3"


def start_service(folder: Path) -> Server:
    """A live `stagelr serve` child on the results folder's scratch SQLite database
    (auth off)."""
    from stagelr_service.server import start_server

    database = scratch_database(folder)
    database.parent.mkdir(parents=True, exist_ok=True)
    process = start_server(f"sqlite:///{database}", database.with_suffix(".log"))
    return Server(process.url, process.stop)


def studies_file(folder: Path, variant: str) -> Path:
    """A variant's stagelr studies: a gzip-compressed ``stagelr export`` file (``gunzip``
    it and ``stagelr import`` it into a database to replay them)."""
    return folder / STUDIES_DIR / f"{variant}.jsonl.gz"


def exported_names(path: Path) -> set[str]:
    """The study names an export file holds."""
    if not path.exists():
        return set()
    with gzip.open(path, "rt") as file:
        lines = [json.loads(line) for line in file if line.strip()]
    return {line["name"] for line in lines[1:]}


def export_studies(cache: Cache, variant: str) -> int:
    """Append to ``variant``'s export file every study of its cached stagelr runs that
    the server's scratch database holds and the file lacks; how many were added."""
    from stagelr_service.exchange import export_studies as export
    from stagelr_service.store.database import Store

    database = scratch_database(cache.folder)
    path = studies_file(cache.folder, variant)
    have = exported_names(path)
    wanted = {
        str(r["run"]["extra"]["study"])
        for r in cache.records.values()
        if r["variant"] == variant
        and r["method"].startswith("stagelr-")
        and "study" in r["run"].get("extra", {})
    } - have
    if not wanted or not database.exists():
        return 0
    import io

    with Store(f"sqlite:///{database}") as store:
        with store.transaction(read_only=True) as repo:
            ids = [k[0] for k in repo.study_keys() if k[2] in wanted]
        buffer = io.StringIO()
        added = export(store, ids, buffer)
    fresh = buffer.getvalue().splitlines(keepends=True)
    old: list[str] = []
    if path.exists():
        with gzip.open(path, "rt") as file:
            old = [line for line in file if line.strip()]
    lines = (old or fresh[:1]) + fresh[1:]  # one header, then every study
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with partial.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as file:
        file.write("".join(lines).encode())
    partial.replace(path)
    return added


def run_all(
    variants: list[Variant],
    cache: Cache,
    method_names: list[str],
    *,
    quick: bool,
    seeds_override: int | None,
    jobs: int,
    log: Callable[[str], None] = print,
    rival_budgets: bool = True,
) -> int:
    """Train every missing run of ``variants``; returns how many were trained.
    ``rival_budgets=False``: Prodigy and D-Adapt at T only (their steps-to-target stays
    pending where their T run ends above the target)."""
    first = {v.name: plan(v, cache, method_names, quick, seeds_override) for v in variants}
    needs_server = any(m.startswith("stagelr-") for m in method_names) and any(
        method_applies(m, v, cache.folder)
        for v in variants
        for m in method_names
        if m.startswith("stagelr-")
    )
    server = start_service(cache.folder) if needs_server else None
    trained = 0
    try:
        context = get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=context,
            initializer=_init_pool_worker,
            initargs=(server.url if server else None,),
        ) as pool:
            try:
                for variant in variants:
                    for phase, tasks in phases(
                        variant, cache, first[variant.name], method_names, quick, seeds_override,
                        rival_budgets,
                    ):  # fmt: skip
                        log(f"{variant.name}: {len(tasks)} runs to train ({phase})")
                        futures = {
                            pool.submit(execute_item, item): item for item in _work_items(tasks)
                        }
                        # Written as each finishes, its study exported before it is
                        # logged: an interrupted benchmark loses no result and no study
                        # (the server's scratch database is not committed).
                        for future in as_completed(futures):
                            done = list(zip(futures[future], future.result(), strict=True))
                            for task, run in done:
                                cache.add(task, run)
                                trained += 1
                            if server is not None and any(
                                t.method.startswith("stagelr-") for t, _ in done
                            ):
                                export_studies(cache, variant.name)
                            for task, run in done:
                                log(_describe(task, run))
                    cache.compact([variant.name])
                    if server is not None:
                        export_studies(cache, variant.name)
            except BaseException:
                # Interrupted (SIGTERM raises SystemExit: stagelr_service.server): drop
                # the queued runs, so that leaving the pool waits for the running ones only.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        if server is not None:
            server.stop()
    return trained


def _describe(task: Task, run: dict[str, Any]) -> str:
    config = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in task.config)
    final = run["final_loss"]
    loss = "diverged" if final is None else f"{final:.4f}"
    charged = run.get("charged_steps", "-")
    seconds = run.get("seconds", 0.0)
    return (
        f"  {task.variant.name} {task.method} {config} seed {task.seed}: val {loss}, "
        f"{charged} charged, {seconds:.1f} s"
    )
