"""The `stagelr` command: serve, migrate, demo."""

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
