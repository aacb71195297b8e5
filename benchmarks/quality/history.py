"""Learning from history on both benchmark splits: jobs of one family with and without
priors, at charged budget T, through the real client against a live server.

    python -m benchmarks.quality.history                 # train what is missing, print
    python -m benchmarks.quality.history --report-only   # print from the committed runs
    python -m benchmarks.quality.history --quick         # 2 seeds of a tiny NQM (a check)
    python -m benchmarks.quality.history --report-only --against CODE  # job by job vs CODE

Variants: every variant of the dev split (nqm-b8, nqm-b64, digits, digits-noisy, charlm,
charlm-3000), of the test split (cnn, regression, regression-b512, charrnn, charrnn-ft)
and of the test2 split (lstm, autoencoder, autoencoder-5000, charmlp-ft), whose history
runs were made with the ``default`` it judges (frozen at ``4db0f30``; the report says so
should ``default`` have changed since).
Seeds per variant are the quality benchmark's single-run seeds (10; 5 on the GRU
workloads, charrnn and charrnn-ft), except on the transformer, whose runs take minutes
on a 2-core machine: 5 on charlm, 3 on charlm-3000 (:data:`SEEDS`). Each seed ``s`` of a
variant is trained as:

- ``cold``: the shipped ``default`` preset, no priors (seed 0 is job 1 of the family);
- ``family``: seeds 1.. are jobs 2..n of the family, in seed order: their priors are the
  family's most recent completed studies (job 1 and the earlier warm jobs, at most the
  server's ``STAGELR_MAX_PRIORS``);
- ``mismatch``: the control, seeds 1..: the priors are the family studies (``prior_studies``,
  the last 5 before seed ``s``) of the variant's *partner*, another workload or one that
  no longer fits (:data:`PARTNER`). A prior is only read when its config fingerprint (LR
  range, charged budget, stage sizes, search; ``tuner/_priors.py``) is the study's; a
  partner of another grid or budget would be ignored and the control would be the cold
  run again. So the partner's family is trained *at the variant's fingerprint*: its own
  workload, with the variant's T and LR range (its chain is shown as
  ``<partner>@<variant>``). Only the tuner's fit checks can then notice the misfit. On the
  dev split the partners share grid and budget already (nqm-b8 <-> nqm-b64, digits <->
  digits-noisy), and their own families are the priors.

Runs are appended to ``docs/results/history/runs.jsonl.gz`` (gzip JSON lines, committed;
one record per run, keyed by the stagelr code hash, like the quality cache), so an
interrupted run resumes and ``--report-only`` prints the table without training. The
studies live in a SQLite database under the ignored ``benchmarks/results/tmp/``: a
family's later jobs need its earlier studies there to be their priors, so a chain is
resumed only while that database holds them (otherwise the script says which runs to
drop).

It prints, per variant and condition: the median final loss at T, the median search
cost (charged explore steps, and as a share of T), how many runs used their priors or
fell back, and the paired differences (mean and 95% paired bootstrap interval, seeds
1..n-1) against ``cold`` and against the Tier-A target config of the committed quality
cache (``docs/results/quality``, read as ``python -m benchmarks.quality --report-only``
reads it). docs/history.md quotes its output.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("dev", "test", "test2", "test3", "test4", "test5")
DEV = ["nqm-b8", "nqm-b64", "digits", "digits-noisy", "charlm", "charlm-3000"]
TEST = ["cnn", "regression", "regression-b512", "charrnn", "charrnn-ft"]
TEST2 = ["lstm", "autoencoder", "autoencoder-5000", "charmlp-ft"]
TEST3 = ["convlm", "convlm-ft", "imagefit", "imagefit-b2048", "cnn-ft"]
TEST4 = ["lorenz", "swissroll", "swissroll-b1024", "patchae-ft"]
TEST5 = ["digitvit", "hastie", "hastie-b1024", "lorenz-ft", "roll-ft"]
VARIANTS = DEV + TEST + TEST2 + TEST3 + TEST4 + TEST5
#: Seeds where the quality benchmark's count is not used: the transformer's runs take
#: 3-6 minutes each here. charlm gets 5 (four jobs after the first, as the GRU's); the
#: run twice as long gets 3, whose intervals rest on two pairs.
SEEDS = {"charlm": 5, "charlm-3000": 3}
#: The control's prior source. Dev: the variant of the same grid and budget. Test: another
#: batch size (regression <-> regression-b512), another model of the same grid (cnn <->
#: charrnn-ft), and for charrnn (a grid of its own) the same GRU fine-tuned from a
#: pretrained state, a job whose LR no longer fits a GRU trained from scratch. A partner
#: of another budget or grid is trained at the variant's (see :func:`chain_variant`).
#: The transformer's partner is the GRU (another model of bytes, trained from scratch
#: with Adam) at the transformer's budget and range: charlm-3000 at charlm's budget would
#: be charlm itself. Test2: a model trained with the other kind of optimizer, at the
#: variant's budget and range: the LSTM (Adam) for the SGD workloads (the autoencoder at
#: either horizon, the fine-tuned MLP), the autoencoder (SGD) for the LSTM; the
#: autoencoder's other horizon at its budget would be itself.
PARTNER = {
    "charlm": "charrnn",
    "charlm-3000": "charrnn",
    "nqm-b8": "nqm-b64",
    "nqm-b64": "nqm-b8",
    "digits": "digits-noisy",
    "digits-noisy": "digits",
    "cnn": "charrnn-ft",
    "charrnn-ft": "cnn",
    "regression": "regression-b512",
    "regression-b512": "regression",
    "charrnn": "charrnn-ft",
    "lstm": "autoencoder",
    "autoencoder": "lstm",
    "autoencoder-5000": "lstm",
    "charmlp-ft": "lstm",
    # Test3: the conv LM's scratch and fine-tuned jobs for each other (a job whose LR no
    # longer fits, as charrnn's), the photo's other batch size for each other, and for
    # the digits fine-tune the photo regression (another model, loss and optimizer), each
    # at the variant's budget and range.
    "convlm": "convlm-ft",
    "convlm-ft": "convlm",
    "imagefit": "imagefit-b2048",
    "imagefit-b2048": "imagefit",
    "cnn-ft": "imagefit",
    # Test4: the swiss roll's other batch size for each other; for the Lorenz GRU the
    # photo fine-tune (another model, loss scale and start), and for the fine-tune the
    # Lorenz GRU (a model trained from scratch), each at the variant's budget and range.
    "lorenz": "patchae-ft",
    "patchae-ft": "lorenz",
    "swissroll": "swissroll-b1024",
    "swissroll-b1024": "swissroll",
    # Test5: the classifier's other batch size for each other; for the attention encoder
    # the Lorenz fine-tune and for that fine-tune the attention encoder (another model,
    # loss and start), and for the roll's fine-tune the classifier (a model trained
    # from scratch with the same optimizer), each at the variant's budget and range.
    "hastie": "hastie-b1024",
    "hastie-b1024": "hastie",
    "digitvit": "lorenz-ft",
    "lorenz-ft": "digitvit",
    "roll-ft": "hastie",
}
CONDITIONS = ("cold", "family", "mismatch")
#: The most priors a control names (the server's default STAGELR_MAX_PRIORS).
MAX_PRIORS = 5
RUNS = ROOT / "docs" / "results" / "history" / "runs.jsonl.gz"
SCRATCH = ROOT / "benchmarks" / "results" / "tmp" / "history"
QUICK_STEPS = 160


def _final(r: dict[str, Any]) -> float:
    value = r["final"]
    return math.inf if value is None or math.isnan(value) else float(value)


def chain_label(name: str) -> str:
    """The family chain the control of ``name`` takes its priors from."""
    from .workloads import VARIANTS as ALL

    partner = PARTNER[name]
    mine, theirs = ALL[name], ALL[partner]
    same = mine.steps == theirs.steps and (min(mine.grid), max(mine.grid)) == (
        min(theirs.grid),
        max(theirs.grid),
    )
    return partner if same else f"{partner}@{name}"


def chain_variant(label: str, quick: bool) -> Any:
    """The variant a chain trains: a benchmark variant, or ``partner@variant``: the
    partner's workload at the variant's T and LR range (so that its fingerprint is the
    variant's)."""
    from .workloads import VARIANTS as ALL

    partner, _, host = label.partition("@")
    variant = ALL[partner]
    if host:
        target = ALL[host]
        variant = dataclasses.replace(variant, name=label, steps=target.steps, grid=target.grid)
    return variant.smoke(QUICK_STEPS) if quick else variant


def seed_count(name: str, quick: bool, override: int | None) -> int:
    """The quality benchmark's single-run seeds of the variant (10; 5 on the GRU
    workloads) or its :data:`SEEDS`, at most ``override``; 2 in quick mode."""
    from . import harness
    from .workloads import VARIANTS as ALL

    if quick:
        return 2
    count = SEEDS.get(name) or harness.METHOD_SEEDS[ALL[name.partition("@")[0]].workload]
    return min(count, override) if override is not None else count


def read_runs(path: Path) -> dict[str, dict[str, Any]]:
    """The recorded runs by key (the file may hold several gzip members: one a run)."""
    if not path.exists():
        return {}
    with gzip.open(path, "rt") as file:
        records = [json.loads(line) for line in file if line.strip()]
    return {r["key"]: r for r in records}


def completed(record: dict[str, Any]) -> bool:
    """Whether the run's study completed (a diverged trajectory stops it)."""
    status = record.get("status")
    return status == "completed" if status is not None else math.isfinite(_final(record))


def run_key(label: str, condition: str, seed: int, code: str) -> str:
    return json.dumps([label, condition, seed, code])


def latest_code(store: dict[str, dict[str, Any]]) -> str | None:
    """The code hash of the most recently finished run."""
    if not store:
        return None
    return str(max(store.values(), key=lambda r: r.get("finished_at", ""))["code"])


def shown_code(store: dict[str, dict[str, Any]]) -> str | None:
    """The code the report reads: today's stagelr code where any run of it is recorded,
    else the code of the most recently finished run (a run of an older code finished
    later, say to compare with it, does not displace today's)."""
    from . import harness

    today = harness.code_hashes()["stagelr"]
    if any(r["code"] == today for r in store.values()):
        return today
    return latest_code(store)


def variant_code(store: dict[str, dict[str, Any]], name: str, code: str, seeds: list[int]) -> str:
    """The code whose runs a variant's rows show: ``code`` where it has every run of the
    variant's three conditions on ``seeds``, else the most recent code that has (a
    variant measured under an earlier code keeps its rows, and says which code); else
    ``code`` (the rows then read pending)."""

    def complete(candidate: str) -> bool:
        return all(run_key(name, c, s, candidate) in store for c in CONDITIONS for s in seeds)

    if complete(code):
        return code
    mine = sorted(
        (r for r in store.values() if r["label"] == name),
        key=lambda r: r.get("finished_at", ""),
        reverse=True,
    )
    for candidate in dict.fromkeys(str(r["code"]) for r in mine):
        if complete(candidate):
            return candidate
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=None, choices=VARIANTS)
    parser.add_argument("--seeds", type=int, default=None, help="at most this many seeds a variant")
    parser.add_argument("--runs", type=Path, default=None, help=f"default {RUNS}")
    parser.add_argument("--folder", type=Path, default=None, help=f"default {SCRATCH}")
    parser.add_argument("--report-only", action="store_true", help="print, train nothing")
    parser.add_argument(
        "--quick", action="store_true", help="2 seeds of nqm-b8 at T=160, into a scratch folder"
    )
    parser.add_argument(
        "--against",
        metavar="CODE",
        default=None,
        help="also print, job by job, today's runs minus those of stagelr code CODE (a hash "
        "prefix) on every chain both trained",
    )
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

    from . import harness

    quick = bool(args.quick)
    folder = args.folder or (SCRATCH.with_name("history-quick") if quick else SCRATCH)
    runs_path = args.runs or (folder / "runs.jsonl.gz" if quick else RUNS)
    variants = args.variant or (["nqm-b8"] if quick else VARIANTS)
    unjudged = held_out_unjudged(variants)
    if unjudged and not args.report_only:
        parser.error(
            f"{', '.join(unjudged)}: held out, and default is not yet frozen for its split "
            "(a history run is a stagelr run): record the commit first with python -m "
            "benchmarks.quality --default-frozen-at COMMIT --frozen-split SPLIT"
        )
    store = read_runs(runs_path)
    code = harness.code_hashes()["stagelr"]
    if not args.report_only:
        train_all(variants, store, runs_path, folder, code, quick, args.seeds)
        store = read_runs(runs_path)
        if runs_path.exists():
            harness.write_records(runs_path, list(store.values()))
    else:
        shown = shown_code(store)
        if shown is None:
            raise SystemExit(f"no runs recorded in {runs_path}")
        if shown != code:
            print(f"note: no runs of today's stagelr code {code[:12]}; showing the latest recorded")
        code = shown
    for line in render(variants, store, code, quick, args.seeds):
        print(line)
    if args.against:
        for line in compare(store, code, args.against):
            print(line)
    return 0


def compare(store: dict[str, dict[str, Any]], new: str, old: str) -> list[str]:
    """Today's runs (code ``new``) against code ``old`` (a hash or its prefix), job by
    job: per chain and condition both trained, the medians, new minus old (mean and 95%
    paired bootstrap interval over the jobs where neither diverged) and how many jobs
    ended elsewhere. A chain's later jobs move with its earlier ones (their priors are
    those runs), so a whole chain is the unit a change is read on."""
    from . import report

    olds = {r["code"] for r in store.values() if r["code"].startswith(old)}
    if len(olds) != 1:
        return [f"--against {old}: {len(olds)} recorded codes match; give a longer prefix"]
    (full,) = olds
    by = {(r["label"], r["condition"], r["seed"], r["code"]): r for r in store.values()}
    labels = list(dict.fromkeys(r["label"] for r in store.values() if r["code"] == new))
    lines = [
        f"stagelr {new[:12]} against {full[:12]}, job by job (new - old: mean, 95% paired "
        "bootstrap interval over the jobs where neither diverged)",
        f"{'chain':28s} {'condition':9s} {'old':>8s} {'new':>8s}  new - old{'':27s} moved",
    ]
    for label in labels:
        for condition in CONDITIONS:
            seeds = sorted(
                s
                for (lab, cond, s, c) in by
                if lab == label and cond == condition and c == new and (lab, cond, s, full) in by
            )
            if not seeds:
                continue
            pairs = [
                (_final(by[label, condition, s, full]), _final(by[label, condition, s, new]))
                for s in seeds
            ]
            finite = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
            diffs = [b - a for a, b in finite]
            m, lo, hi = report.paired_bootstrap(diffs) if diffs else (math.nan,) * 3
            moved = sum(1 for a, b in pairs if a != b)
            left = len(pairs) - len(finite)
            note = f"  ({left} diverged, left out)" if left else ""
            lines.append(
                f"{label:28s} {condition:9s} {statistics.median(a for a, _ in pairs):8.4f} "
                f"{statistics.median(b for _, b in pairs):8.4f}  {m:+.4f} [{lo:+.4f}, {hi:+.4f}]"
                f"{'':4s} {moved}/{len(pairs)}{note}"
            )
    return lines


def held_out_unjudged(variants: list[str], folder: Path | None = None) -> list[str]:
    """The variants of a held-out split whose frozen commit is not recorded in the
    quality cache (``folder``): no stagelr run may read them yet."""
    from . import harness
    from .workloads import HELD_OUT
    from .workloads import VARIANTS as ALL

    cache = folder or harness.ROOT / "docs" / "results" / "quality"
    return [
        v
        for v in variants
        if ALL[v].split in HELD_OUT and harness.frozen_default(cache, ALL[v].split) is None
    ]


def train_all(
    variants: list[str],
    store: dict[str, dict[str, Any]],
    runs_path: Path,
    folder: Path,
    code: str,
    quick: bool,
    seeds_override: int | None,
) -> None:
    import stagelr

    from . import harness, tuned

    server: harness.Server | None = None

    def family(label: str) -> str:
        return f"{label}-{code[:12]}" + ("-quick" if quick else "")

    def check_in_store(client: stagelr.Client, ids: list[int], names: list[str]) -> None:
        """A chain resumes only on the database that holds its earlier studies."""
        for study_id, name in zip(ids, names, strict=True):
            try:
                found = client.get_study(study_id).name
            except stagelr.NotFoundError:
                found = None
            if found != name:
                raise SystemExit(
                    f"study {study_id} ({name}) is not in the scratch database: drop this "
                    f"code's runs of the chain from {runs_path} (or all of them) and rerun"
                )

    def train(
        label: str, condition: str, seed: int, overrides: dict[str, Any], prior_keys: list[str]
    ) -> None:
        nonlocal server
        k = run_key(label, condition, seed, code)
        if k in store:
            return
        if server is None:
            server = harness.start_service(folder)
        variant = chain_variant(label, quick)
        with stagelr.Client(server.url) as client:
            priors = [store[p] for p in prior_keys]
            check_in_store(client, [p["study_id"] for p in priors], [p["study"] for p in priors])
        run = tuned.run_stagelr(
            server.url,
            variant,
            seed,
            "default",
            study_prefix=f"history/{condition}",
            overrides=overrides,
            budget=1.0,
        )
        study_id = run.extra["study_id"]
        with stagelr.Client(server.url) as client:
            segments = client.list_segments(study_id)
            view = client.get_study(study_id)
        search = sum(
            s.steps_done if s.steps_done is not None else s.steps
            for s in segments
            if s.kind == "explore"
        )
        record = {
            "key": k,
            "label": label,
            "condition": condition,
            "seed": seed,
            "code": code,
            "steps": variant.steps,
            "lr_range": [min(variant.grid), max(variant.grid)],
            "final": run.final_loss,
            "charged": run.charged_steps,
            "search": search,
            "study_id": study_id,
            "study": view.name,
            "lr": view.stages[0].chosen_lr if view.stages else None,
            "use": view.priors.use.value if view.priors else None,
            "reason": view.priors.reason if view.priors else "",
            "priors": [s.id for s in view.priors.studies] if view.priors else [],
            "fits": [s.fits for s in view.priors.studies] if view.priors else [],
            "status": view.status.value,
            "seconds": round(run.seconds, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": harness.machine_name(),
        }
        store[k] = record
        runs_path.parent.mkdir(parents=True, exist_ok=True)
        # One gzip member a run, written at once (an interrupted run loses nothing);
        # main() rewrites the file as one member at the end.
        with gzip.open(runs_path, "at") as file:
            file.write(json.dumps(record, separators=(",", ":")) + "\n")
        print(
            f"  {label} {condition} seed {seed}: final {_final(record):.4f}, search "
            f"{search} steps, priors {record['use']} {record['reason']} ({run.seconds:.1f} s)",
            flush=True,
        )

    def chain(label: str, seeds: int) -> None:
        """Job 1 (seed 0, no completed prior yet), then jobs 2..seeds of the family."""
        train(label, "cold", 0, {"family": family(label)}, [])
        for seed in range(1, seeds):
            before = [run_key(label, "cold", 0, code)] + [
                run_key(label, "family", s, code) for s in range(1, seed)
            ]
            train(label, "family", seed, {"family": family(label)}, before[-MAX_PRIORS:])

    try:
        for name in variants:
            n = seed_count(name, quick, seeds_override)
            chain(name, n)
            for seed in range(1, n):
                train(name, "cold", seed, {}, [])
            partner = chain_label(name)
            chain(partner, max(n - 1, 1))
            for seed in range(1, n):
                ids = [run_key(partner, "cold", 0, code)] + [
                    run_key(partner, "family", s, code) for s in range(1, seed)
                ]
                # a study whose trajectory diverged was stopped: only completed ones are
                # priors (what a family reads, too)
                ids = [i for i in ids if completed(store[i])][-MAX_PRIORS:]
                train(
                    name,
                    "mismatch",
                    seed,
                    {"prior_studies": [store[i]["study_id"] for i in ids]},
                    ids,
                )
    finally:
        if server is not None:
            server.stop()


@functools.cache
def quality_cache() -> Any:
    """The committed quality cache, loaded once (as ``benchmarks.quality`` loads it)."""
    from .harness import Cache

    return Cache(ROOT / "docs" / "results" / "quality").load()


def target_finals(name: str, seeds: list[int], quick: bool) -> tuple[Any, list[float] | None]:
    """The Tier-A target config of the committed quality cache and its finals at T on
    ``seeds`` (None where the cache lacks them), as the quality report reads them."""
    from . import harness
    from .workloads import VARIANTS as ALL

    if quick:
        return None, None
    cache = quality_cache()
    variant = ALL[name]
    best = harness.best_config(cache, variant, False, None)
    if best is None:
        return None, None
    records = [cache.get(harness.budget_task(variant, "grid", s, best[0], 1.0)) for s in seeds]
    if any(r is None for r in records):
        return best, None
    return best, [harness._final(r) for r in records if r is not None]


def moonshot_check(split: str, runs_path: Path = RUNS) -> tuple[bool | None, str]:
    """The Moonshot tier's history clause on one split, from the committed runs: whether
    jobs 2..n of a family (priors from the earlier jobs) beat the Tier-A target at T on
    every measured workload of the split (paired bootstrap interval below zero), and
    the text the report prints. None: no runs recorded for the split."""
    from . import report
    from .workloads import VARIANTS as ALL

    store = read_runs(runs_path)
    code = shown_code(store)
    shown = [v for v in VARIANTS if ALL[v].split == split]
    if code is None or not shown:
        return None, "a job started from its family's stored history beats the target at T"
    beaten, measured = [], []
    codes = []
    for name in shown:
        seeds = list(range(1, seed_count(name, False, None)))
        mine = variant_code(store, name, code, seeds)
        rows = [store.get(run_key(name, "family", s, mine)) for s in seeds]
        _, target = target_finals(name, seeds, False)
        if any(r is None for r in rows) or target is None:
            continue
        finals = [_final(r) for r in rows if r is not None]
        _, _, hi = report.paired_bootstrap([v - t for v, t in zip(finals, target, strict=True)])
        measured.append(name)
        codes.append(mine[:12])
        if hi < 0:
            beaten.append(name)
    if not measured:
        return None, "a job started from its family's stored history beats the target at T"
    text = (
        "a job started from its family's stored history beats the target at T on every "
        f"workload (python -m benchmarks.quality.history, stagelr "
        f"{', '.join(dict.fromkeys(codes))}): on "
        f"{len(beaten)} of {len(measured)}" + (f" ({', '.join(beaten)})" if beaten else "")
    )
    return len(beaten) == len(measured), text


def render(
    variants: list[str],
    store: dict[str, dict[str, Any]],
    code: str,
    quick: bool,
    seeds_override: int | None,
) -> list[str]:
    from . import report
    from .workloads import VARIANTS as ALL

    lines = [
        f"stagelr {code[:12]}, preset default, charged budget T, seeds 1..n-1 paired "
        + ("(n = 2)" if quick else "(n = 10; 5 on charlm, charrnn, charrnn-ft; 3 on charlm-3000)"),
        f"{'variant':<16} {'condition':<9} {'median final':>12} {'search':>13} "
        f"{'used/fell back':>14}  {'- cold':>26}  {'- target':>26}",
    ]
    for split in SPLITS:
        shown = [v for v in variants if ALL[v].split == split]
        if not shown:
            continue
        lines.append(f"-- {split} split")
        for name in shown:
            lines += render_variant(name, store, code, quick, seeds_override, report)
    return lines


def render_variant(
    name: str,
    store: dict[str, dict[str, Any]],
    code: str,
    quick: bool,
    seeds_override: int | None,
    report: Any,
) -> list[str]:
    from .workloads import VARIANTS as ALL

    variant = ALL[name]
    steps = QUICK_STEPS if quick else variant.steps
    seeds = list(range(1, seed_count(name, quick, seeds_override)))
    shown = variant_code(store, name, code, seeds)
    note = [] if shown == code else [f"{'':<16} (runs of stagelr {shown[:12]})"]
    code = shown
    rows_of = {c: [store.get(run_key(name, c, s, code)) for s in seeds] for c in CONDITIONS}
    missing = {c: sum(1 for r in rows if r is None) for c, rows in rows_of.items()}
    if any(missing.values()):
        return [f"{name:<16} pending: {missing} runs missing of seeds 1..{len(seeds)}"]
    best, target = target_finals(name, seeds, quick)
    cold = [_final(r) for r in rows_of["cold"] if r is not None]
    sd = statistics.stdev(cold) if len(cold) > 1 else math.nan
    out = []
    verdicts: list[str] = []
    for condition in CONDITIONS:
        rows = [r for r in rows_of[condition] if r is not None]
        finals = [_final(r) for r in rows]
        search = statistics.median(r["search"] for r in rows)
        used = sum(1 for r in rows if r["use"] == "used")
        fell = sum(1 for r in rows if r["use"] == "fallback")
        line = (
            f"{name:<16} {condition:<9} {statistics.median(finals):>12.4f} "
            f"{search:>6.0f} ({search / steps:>5.1%}) {f'{used}/{fell}':>13}"
        )
        if condition != "cold":
            m, lo, hi = report.paired_bootstrap([v - b for v, b in zip(finals, cold, strict=True)])
            line += f"  {m:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            if condition == "mismatch":
                # the safety clause: a prior that does not fit costs at most one seed-SD
                verdicts.append(f"mismatch - cold {m / sd:+.2f} SD (upper end {hi / sd:+.2f})")
        else:
            line += f"  {'':>26}"
        if target is not None:
            m, lo, hi = report.paired_bootstrap(
                [v - t for v, t in zip(finals, target, strict=True)]
            )
            line += f"  {m:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            if condition == "family":
                # the Moonshot clause: beats = the interval below zero
                verdicts.insert(0, f"family {'beats' if hi < 0 else 'does not beat'} the target")
        diverged = sum(1 for v in finals if not math.isfinite(v))
        if diverged:
            # a diverged job's final loss is infinite: the median counts it, a mean of
            # paired differences that holds it is +inf
            line += f"  ({diverged} diverged)"
        out.append(line)
        if condition == "mismatch":
            unfit = sum(1 for r in rows if r["use"] == "unused" or not all(r["fits"]))
            if unfit:
                out.append(f"{'':<16} ! {unfit} mismatch runs read no prior (fingerprint)")
    tail = f"cold seed-SD {sd:.4f}; priors of the control: {chain_label(name)}"
    if target is not None and best is not None:
        tail = (
            f"target {best[1]:.4f} ({dict(best[0])}; its median on these seeds "
            f"{statistics.median(target):.4f}); " + tail
        )
    else:
        tail = "target: none in the committed cache; " + tail
    out.append(f"{'':<16} {tail}")
    out.append(f"{'':<16} {'; '.join(verdicts)}")
    return out + note


if __name__ == "__main__":
    raise SystemExit(main())
