"""`python -m app [serve|migrate|verify|rebuild|parked|token]`: serve (migrating first, the
default), only migrate, compare the read model with the write side's truth (exit 1 on any
difference), rebuild the read model from the event log into a new generation and switch to
it while the service serves (or in place, `--offline`), list,
retry and skip the events the projector parked, or print a signed bearer token for local use."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from app.plumbing import access, collector, logs
from app.plumbing.migrate import MigrationError, migrate
from app.plumbing.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    from app.operations import parked

    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    from app.operations import rebuild

    for name in ("serve", "migrate", "verify"):
        commands.add_parser(name)
    rebuild.add_arguments(commands.add_parser("rebuild", help="a new read model, online"))
    parked.add_arguments(commands.add_parser("parked", help="events the projector parked"))
    _add_token_arguments(commands.add_parser("token", help="print an HS256 bearer token"))
    args = parser.parse_args(argv)
    args.command = args.command or "serve"
    try:
        settings = Settings.from_env()
        access.AccessControl.of(settings)  # AUTH_* refused like any bad setting, before anything
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":  # prints the token only: no logging set up
        return token(settings, args)
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "verify":
        from app.operations import verify

        return verify.main(settings)
    if args.command == "rebuild":
        collector.settle(rebuild.YOUNG_EVERY)  # a batch job: see there
        return rebuild.main(settings, args)
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


def _add_token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sub", required=True, help="the subject: a customer's customer id")
    parser.add_argument("--role", required=True, choices=access.ROLES)
    parser.add_argument(
        "--ttl", type=_positive, default=3600, help="seconds it stays valid (default 3600)"
    )


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds >= 1, got {raw!r}")
    return int(raw)


def token(settings: Settings, args: argparse.Namespace) -> int:
    """Print a token signed with AUTH_JWT_SECRET, carrying AUTH_JWT_ISSUER and
    AUTH_JWT_AUDIENCE when they are set, so this service accepts it."""
    if not settings.auth_jwt_secret:
        print("configuration error: signing a token needs AUTH_JWT_SECRET", file=sys.stderr)
        return 2
    try:
        signed = access.mint_token(
            settings.auth_jwt_secret,
            args.sub,
            args.role,
            args.ttl,
            issuer=settings.auth_jwt_issuer,
            audience=settings.auth_jwt_audience,
        )
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(signed)
    return 0


def serve(settings: Settings) -> int:
    import uvicorn

    from app.main import create_app
    from app.plumbing import tracing

    if settings.tracing:
        tracing.setup()
    uvicorn.run(
        create_app(settings, settle_gc=True),
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
