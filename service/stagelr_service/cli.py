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
        }.items()
        if value is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SystemExit(f"stagelr: bad setting: {exc}") from None


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
    return run_demo(args, _settings(args))


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
    demo.add_argument("--study", default=None, help="study name (default: a new one)")
    demo.add_argument("--preset", default="default", choices=["default", "autolrs"])
    demo.add_argument("--total-steps", type=int, default=2400, help="training steps")
    demo.add_argument("--tau0", type=int, default=150, help="first stage length")
    demo.add_argument("--tau-max", type=int, default=600, help="longest stage")
    demo.add_argument("--k", type=int, default=8, help="candidates per stage")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
