"""The `stagelr` command: serve, migrate, token, demo (and more; see `stagelr --help`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# One BLAS/OpenMP thread per process: two threads on a busy 2-core machine made GP fits
# 7-20x slower (DESIGN 4.4). Must be set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from .settings import Settings

    overrides = {
        key: value
        for key, value in {
            "database_url": getattr(args, "database_url", None),
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "workers": getattr(args, "workers", None),
        }.items()
        if value is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SystemExit(f"stagelr: bad setting: {exc}") from None


def _workers(text: str) -> int | str:
    """``--workers``: a number of processes, or `auto`."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a number of processes or `auto`"
        ) from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"{value}: give 1 to 256 processes, or `auto`")
    return value


def _cmd_serve(args: argparse.Namespace) -> int:
    from .errors import SchemaOutdatedError
    from .server import serve
    from .store import Store

    settings = _settings(args)
    if args.migrate:
        settings = settings.model_copy(update={"auto_migrate": True})
    # Refuse an old schema here, with one clear line, before uvicorn starts.
    store = Store(settings.resolved_database_url)
    try:
        if settings.auto_migrate:
            store.migrate()
        store.check_schema()
    except SchemaOutdatedError as exc:
        print(f"stagelr serve: {exc.message}", file=sys.stderr)
        return 2
    finally:
        store.close()
    serve(settings)
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from .store import Store

    settings = _settings(args)
    store = Store(settings.resolved_database_url)
    try:
        revision = store.migrate()
    finally:
        store.close()
    print(f"stagelr: {store.safe_url} is at schema revision {revision}")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from .errors import StagelrError
    from .store import Store
    from .tokens import Tokens

    settings = _settings(args)
    store = Store(settings.resolved_database_url)
    try:
        store.check_schema()
        tokens = Tokens(store)
        if args.token_command == "create":
            record, secret = tokens.create(args.project, args.name)
            print(secret)
            print(
                f"stagelr: token {record.id} ({record.prefix}...) for project "
                f"{record.project!r}; it is shown only now, store it safely",
                file=sys.stderr,
            )
        elif args.token_command == "list":
            for t in tokens.list_tokens(args.project):
                state = "revoked" if t.revoked_at else "active"
                used = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "-"
                print(f"{t.id}\t{t.project}\t{t.name}\t{t.prefix}...\t{state}\tlast used {used}")
        else:
            record = tokens.revoke(args.id)
            print(f"stagelr: token {record.id} of project {record.project!r} is revoked")
    except StagelrError as exc:
        print(f"stagelr token: {exc.message}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if not args.local and not args.url:
        print("stagelr demo: give --url URL of a running server, or --local", file=sys.stderr)
        return 2
    if args.serve and not args.local:
        print("stagelr demo: --serve keeps a --local server up; give --local", file=sys.stderr)
        return 2
    return run_demo(args, _settings(args))


def _selection(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from stagelr.models import StudyStatus

    from .replay.batch import StudySelection

    return StudySelection(
        ids=tuple(args.id or ()),
        name=args.name,
        project=args.project,
        status=None if args.status is None else StudyStatus(args.status),
        all_=args.all,
        family=args.family,
    )


def _guarded(command: str, run) -> int:  # type: ignore[no-untyped-def]
    """Run a store command; a domain or database error is one line and exit status 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from .errors import StagelrError

    try:
        return int(run())
    except StagelrError as exc:
        print(f"stagelr {command}: {exc.message}", file=sys.stderr)
    except SQLAlchemyError as exc:
        print(f"stagelr {command}: the database does not answer: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"stagelr {command}: {exc}", file=sys.stderr)
    return 2


def _cmd_replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .replay import WITHOUT_PRIORS, parse_overrides
    from .replay.console import run_replay

    def run() -> int:
        overrides = None
        if args.replay == "what-if":
            overrides = parse_overrides(args.set)
            if args.without_priors:
                overrides.update(WITHOUT_PRIORS)
        return run_replay(
            _settings(args).resolved_database_url,
            _selection(args),
            overrides,
            workers=args.workers,
            report=Path(args.report) if args.report else None,
            csv_path=Path(args.csv) if args.csv else None,
            show=args.show,
            progress=not args.no_progress,
        )

    return _guarded("replay", run)


def _cmd_export(args: argparse.Namespace) -> int:
    from .exchange import run_export

    return _guarded(
        "export",
        lambda: run_export(_settings(args).resolved_database_url, _selection(args), args.output),
    )


def _cmd_import(args: argparse.Namespace) -> int:
    from .exchange import run_import

    return _guarded("import", lambda: run_import(_settings(args).resolved_database_url, args.file))


def _cmd_schedule(args: argparse.Namespace) -> int:
    from .schedule import run_schedule_export

    return _guarded(
        "schedule",
        lambda: run_schedule_export(
            _settings(args).resolved_database_url,
            args.study,
            args.project,
            args.output,
            args.format,
        ),
    )


def _cmd_housekeeping(args: argparse.Namespace) -> int:
    from .housekeeping import run_housekeeping

    return _guarded(
        args.command,
        lambda: run_housekeeping(
            _settings(args).resolved_database_url,
            args.command,
            args.study,
            args.project,
            yes=args.yes,
        ),
    )


def _add_selection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which studies (every filter given must hold)")
    group.add_argument("--id", type=int, action="append", help="a study id (repeatable)")
    group.add_argument("--name", help="a study name pattern (glob: 'resnet-*')")
    group.add_argument("--project", help="a project")
    group.add_argument(
        "--status", choices=["running", "completed", "failed", "stopped"], help="a study status"
    )
    group.add_argument("--family", help="a family (studies whose config names it)")
    group.add_argument("--all", action="store_true", help="every study")
    parser.add_argument("--database-url", help="SQLAlchemy URL (STAGELR_DATABASE_URL)")


def _add_replay_parsers(sub) -> None:  # type: ignore[no-untyped-def]
    replay = sub.add_parser("replay", help="run the tuner again over stored studies (no training)")
    modes = replay.add_subparsers(dest="replay", required=True)
    for mode, text in (
        ("verify", "every recorded decision must come out the same (exit 1 if not)"),
        ("what-if", "the same studies under another config (--set key=value ...)"),
    ):
        parser = modes.add_parser(mode, help=text)
        _add_selection(parser)
        if mode == "what-if":
            parser.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="a config field to change, e.g. --set k=6 --set acquisition=lcb",
            )
            parser.add_argument(
                "--without-priors",
                action="store_true",
                help="replay as if the studies had named no priors (a full first search)",
            )
        parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
        parser.add_argument("--report", help="write the JSON report here")
        parser.add_argument("--csv", help="write the CSV report (a row per stage) here")
        parser.add_argument("--show", type=int, default=20, help="rows of detail shown (20)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.set_defaults(func=_cmd_replay)

    export = sub.add_parser("export", help="write studies as JSON lines (see docs/replay.md)")
    _add_selection(export)
    export.add_argument("--output", "-o", default="-", help="the file (default: stdout)")
    export.set_defaults(func=_cmd_export)

    imp = sub.add_parser("import", help="load studies from a `stagelr export` file")
    imp.add_argument("file", help="the JSON lines file")
    imp.add_argument("--database-url", help="SQLAlchemy URL (STAGELR_DATABASE_URL)")
    imp.set_defaults(func=_cmd_import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stagelr", description="Online learning-rate tuning service (AutoLRS-style BO)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server (uvicorn)")
    serve.add_argument("--host", help="bind address (STAGELR_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (STAGELR_PORT, default 8321)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (STAGELR_DATABASE_URL)")
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="server processes sharing the port and the database (STAGELR_WORKERS, "
        "default 1); `auto`: one per CPU",
    )
    serve.add_argument(
        "--migrate", action="store_true", help="upgrade the schema first if it is old"
    )
    serve.set_defaults(func=_cmd_serve)

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument("--database-url", help="SQLAlchemy URL (STAGELR_DATABASE_URL)")
    migrate.set_defaults(func=_cmd_migrate)

    token = sub.add_parser("token", help="create, list or revoke project tokens (auth)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create", help="make a token for a project; prints it once (only a hash is kept)"
    )
    create.add_argument("--project", required=True, help="the project the token opens")
    create.add_argument("--name", default="default", help="a label to tell tokens apart")
    listing = token_sub.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--project", help="only this project's tokens")
    revoke = token_sub.add_parser("revoke", help="revoke a token by id (see `token list`)")
    revoke.add_argument("id", type=int, help="the token's id")
    for p in (create, listing, revoke):
        p.add_argument("--database-url", help="SQLAlchemy URL (STAGELR_DATABASE_URL)")
    token.set_defaults(func=_cmd_token)

    demo = sub.add_parser("demo", help="train a small MLP on the digits set under stagelr")
    where = demo.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running stagelr server, e.g. http://127.0.0.1:8321")
    where.add_argument(
        "--local", action="store_true", help="start a server in-process on a free port"
    )
    demo.add_argument(
        "--database-url", help="with --local: the store (default: SQLite in STAGELR_DATA_DIR)"
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="with --local: keep the server up after training (on --port, default 8321), "
        "to look at the study in the dashboard; Ctrl-C stops it",
    )
    demo.add_argument("--port", type=int, help="with --local --serve: the port (8321)")
    demo.add_argument("--study", default=None, help="study name (default: a new one)")
    demo.add_argument("--preset", default="default", choices=["default", "autolrs"])
    demo.add_argument("--total-steps", type=int, default=2400, help="training steps")
    demo.add_argument("--tau0", type=int, default=150, help="first stage length")
    demo.add_argument("--tau-max", type=int, default=600, help="longest stage")
    demo.add_argument("--k", type=int, default=8, help="candidates per stage")
    demo.add_argument(
        "--explore-ratio",
        type=float,
        default=0.1,
        help="a candidate's steps as a fraction of its stage (the demo's stages are short: "
        "at the default preset's 0.025 a 150-step stage would rank LRs on 4 steps)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    _add_replay_parsers(sub)

    schedule = sub.add_parser(
        "schedule",
        help="write a study's LR schedule (its kept trajectory) to train with again, "
        "without the service (stagelr.torch.ScheduleLR reads it)",
    )
    schedule.add_argument("study", help="the study's id or name")
    schedule.add_argument("--project", help="the study's project (when its name is not unique)")
    schedule.add_argument("--output", "-o", default="-", help="the file (default: stdout)")
    schedule.add_argument(
        "--format",
        choices=["json", "csv"],
        default="json",
        help="json: the piecewise schedule with its provenance (default); csv: step,lr,stage,kind",
    )
    schedule.add_argument("--database-url", help="SQLAlchemy URL (STAGELR_DATABASE_URL)")
    schedule.set_defaults(func=_cmd_schedule)

    for action, text in (
        ("archive", "take a study out of the list, keeping its history (replay, export)"),
        ("unarchive", "bring an archived study back into the list"),
        ("delete", "delete a study and its whole history, for good"),
    ):
        house = sub.add_parser(action, help=text)
        house.add_argument("study", help="the study's id or name")
        house.add_argument("--project", help="the study's project (when its name is not unique)")
        house.add_argument("--yes", "-y", action="store_true", help="do not ask first")
        house.add_argument("--database-url", help="SQLAlchemy URL (STAGELR_DATABASE_URL)")
        house.set_defaults(func=_cmd_housekeeping)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
