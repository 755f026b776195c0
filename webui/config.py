"""Web UI settings, from the environment (the same names Gradio and the launch script use)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .client import LONG_TIMEOUT


@dataclass
class UISettings:
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    timeout: float = LONG_TIMEOUT  # loading and synthesizing; quick calls use client.SHORT_TIMEOUT

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> UISettings:
        env = os.environ if environ is None else environ
        return cls(
            api_url=env.get("FISHTTS_API_URL") or cls.api_url,
            api_key=env.get("FISHTTS_API_KEY") or None,
            host=env.get("GRADIO_SERVER_NAME") or cls.host,
            port=int(env.get("GRADIO_SERVER_PORT") or cls.port),
            timeout=float(env.get("FISHTTS_API_TIMEOUT") or cls.timeout),
        )
