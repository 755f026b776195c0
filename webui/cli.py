"""`fishtts webui` / `python -m webui`: serve the web UI (the HTTP API must be running; see launch.sh)."""

from __future__ import annotations

import os

import click

from .config import UISettings

DEFAULTS = UISettings()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--host",
    envvar="GRADIO_SERVER_NAME",
    default=DEFAULTS.host,
    show_default=True,
    show_envvar=True,
    help="Address the UI listens on (0.0.0.0 exposes it to the network).",
)
@click.option(
    "--port",
    envvar="GRADIO_SERVER_PORT",
    type=click.IntRange(1, 65535),
    default=DEFAULTS.port,
    show_default=True,
    show_envvar=True,
    help="Port the UI listens on.",
)
@click.option(
    "--api-url",
    envvar="FISHTTS_API_URL",
    default=DEFAULTS.api_url,
    show_default=True,
    show_envvar=True,
    help="The fishtts HTTP API (fishtts serve).",
)
@click.option(
    "--api-key",
    envvar="FISHTTS_API_KEY",
    default=None,
    show_envvar=True,
    help="Sent as 'Authorization: Bearer KEY' when the API was started with --api-key.",
)
@click.option(
    "--timeout",
    envvar="FISHTTS_API_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.timeout,
    show_default=True,
    show_envvar=True,
    help="Seconds to wait for a model load or a synthesis.",
)
def webui(host: str, port: int, api_url: str, api_key: str | None, timeout: float):
    """Serve the web UI (Chinese and English) for the fishtts HTTP API."""
    if ":" in host:  # (Gradio builds its own URL from the host: an IPv6 literal breaks it)
        raise click.BadParameter(
            "the web UI cannot listen on an IPv6 address; use 0.0.0.0 or 127.0.0.1", param_hint="--host"
        )
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # self-hosted: no calls home
    from .app import build_app, launch  # Gradio loads only when serving

    settings = UISettings(api_url=api_url, api_key=api_key or None, host=host, port=port, timeout=timeout)
    try:
        launch(build_app(settings), settings)
    except OSError as exc:  # a port in use, or an address this machine does not have
        raise click.ClickException(f"cannot serve the web UI on {host}:{port}: {exc}") from None


def main() -> None:
    webui(prog_name="python -m webui")
