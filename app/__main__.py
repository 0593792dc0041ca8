"""`python -m app [serve|migrate|verify|rebuild|parked]`: serve (migrating first, the default),
only migrate, compare the read model with the write side's truth (exit 1 on any difference),
rebuild the read model from the event log (with the projectors stopped), or list, retry and
skip the events the projector parked."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from app.plumbing import logs
from app.plumbing.migrate import MigrationError, migrate
from app.plumbing.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    from app.operations import parked

    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    for name in ("serve", "migrate", "verify", "rebuild"):
        commands.add_parser(name)
    parked.add_arguments(commands.add_parser("parked", help="events the projector parked"))
    args = parser.parse_args(argv)
    args.command = args.command or "serve"
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "verify":
        from app.operations import verify

        return verify.main(settings)
    if args.command == "rebuild":
        from app.operations import rebuild

        return rebuild.run(settings)
    if args.command == "parked":
        return parked.main(settings, args)
    try:
        applied = asyncio.run(migrate(settings.database_url))
    except MigrationError as exc:
        print(f"migration error: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("app").info("migrations applied: %s", ", ".join(applied) or "none")
    if args.command == "migrate":
        return 0
    return serve(settings)


def serve(settings: Settings) -> int:
    import uvicorn

    from app.main import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers propagate to ours (text or JSON lines)
        timeout_graceful_shutdown=10,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
