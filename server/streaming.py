"""Streamed synthesis responses: chunked transfer of a WAV (or raw PCM) whose first bytes leave as soon
as the first audio chunk is decoded.

The first chunk is awaited before the response starts, so a request that fails early (a bad reference,
text the front end rejects, a full queue) still gets its JSON error. A client that disconnects makes
Starlette cancel the body iterator, which cancels the generation (the model's slots free at its next step).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import numpy as np
from starlette.responses import StreamingResponse

from .context import ServerContext
from .errors import ApiError
from .synthesis import CONTENT_TYPES, STREAM_FORMATS, SynthesisJob, encoded_stream, start_stream

log = logging.getLogger("fishtts.server")


def check_stream_format(output_format: str, field: str) -> None:
    if output_format not in STREAM_FORMATS:
        raise ApiError(422, f"{field}: streaming sends {' or '.join(STREAM_FORMATS)}; {output_format!r} cannot be "
                            "streamed (ask for it without streaming).", param=field)


async def streamed_synthesis(ctx: ServerContext, model: str, job: SynthesisJob,
                             headers: dict[str, str] | None = None) -> StreamingResponse:
    limit, hidden = ctx.settings.max_reference_seconds, ctx.replacements()
    chunks = await ctx.stream_with_model(model, lambda engine: start_stream(engine, job, limit, hidden))
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise ApiError(422, "the model produced no audio for this text (try a larger max_new_tokens)") from None
    except BaseException:
        await chunks.aclose()
        raise
    return StreamingResponse(encoded_stream(_logged(first, chunks), job.output_format),
                             media_type=CONTENT_TYPES[job.output_format],
                             headers={"Cache-Control": "no-store", **(headers or {})})


async def _logged(first: np.ndarray, rest: AsyncIterator[np.ndarray]) -> AsyncIterator[np.ndarray]:
    """The chunks, first included; an error after the headers went out can only end the stream early."""
    try:
        yield first
        async for chunk in rest:
            yield chunk
    except Exception:  # noqa: BLE001 - the status line is sent; log and close
        log.exception("a streamed synthesis failed midway; the response ends early")
    finally:
        await rest.aclose()
