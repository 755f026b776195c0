"""The HTTP API over core's TTSEngine: `create_app(settings)` builds the FastAPI app; `fishtts serve`
or `python -m server` runs it with uvicorn."""


def create_app(settings=None):
    from .app import create_app as build  # lazy: importing the package must not load torch

    return build(settings)


__all__ = ["create_app"]
