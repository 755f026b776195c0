"""`fishtts serve` and `python -m server`: run the HTTP API with uvicorn.

Options are generated from `Settings`, each with its `FISHTTS_*` environment variable.
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, fields
from pathlib import Path

import click

from .settings import Settings, env_name


def settings_options(func):
    """One click option per Settings field (bools as --x/--no-x), read from FISHTTS_<FIELD> too."""
    for f in reversed(fields(Settings)):
        default = f.default if f.default is not MISSING else None
        flag = "--" + f.name.replace("_", "-")
        common = dict(help=f.metadata["help"], envvar=env_name(f.name), show_envvar=True, **f.metadata["click"])
        if isinstance(default, bool):
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=default, show_default=True, **common)
        elif isinstance(default, tuple):
            option = click.option(flag, f.name, default=default, **common)
        elif isinstance(default, Path):
            option = click.option(
                flag,
                f.name,
                type=click.Path(path_type=Path, file_okay=False),
                default=default,
                show_default=True,
                **common,
            )
        elif isinstance(default, (int, float)):
            option = click.option(flag, f.name, type=type(default), default=default, show_default=True, **common)
        else:
            option = click.option(flag, f.name, default=default, show_default=default is not None, **common)
        func = option(func)
    return func


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@settings_options
def serve(**options):
    """Serve the HTTP API (the original's routes, saved voices, OpenAI-compatible speech; docs at /docs)."""
    import uvicorn

    try:
        settings = Settings(**options)
        host, port = settings.host_port
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app import create_app, parse_load_spec  # torch and the models load only when serving
    from .head_deadline import head_deadline_protocol

    for spec in settings.load:  # a typo in --load should stop the start, not surface later in /v1/health
        try:
            parse_load_spec(spec)
        except (ValueError, OSError) as exc:
            raise click.BadParameter(str(exc), param_hint="--load") from None
    try:
        app = create_app(settings)
    except OSError as exc:  # e.g. an uncreatable --references-dir
        click.echo(
            f"Error: cannot create {exc.filename or 'the references folder'}: {exc.strerror or exc} (--references-dir)",
            err=True,
        )
        raise SystemExit(2) from None
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logging.getLogger("fishtts.server").warning(
            "listening on %s without --api-key: anyone who can reach this port can use the server", host
        )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        http=head_deadline_protocol(settings.body_timeout),
    )


def main() -> None:
    serve(prog_name="python -m server")
