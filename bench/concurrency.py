"""Concurrent requests: N clients at once, batched by the scheduler, against the same N one after another.

Each request generates a fixed number of frames for its own text (stops ignored) through
`TTSEngine.generate_codes`, from its own thread, as the server's workers do. Reported per N:
aggregate tokens/s and the median per-request latency, batched and serialized.
"""

from __future__ import annotations

import statistics
import threading
import time

from core.engine import TTSEngine
from core.request import SynthesisRequest

TEXT = "Request number {} asks for its own sentence, with its own seed and its own length."


def _latencies(engine: TTSEngine, requests: list[SynthesisRequest], together: bool) -> tuple[float, list[float]]:
    """(wall seconds, per-request seconds from the common start)."""
    done = [0.0] * len(requests)
    start = time.perf_counter()

    def run(i: int) -> None:
        engine.generate_codes(requests[i], ignore_stop=True)
        done[i] = time.perf_counter() - start

    run_requests(run, len(requests), together)
    return time.perf_counter() - start, done


def run_requests(run, count: int, together: bool) -> None:
    """`run(i)` for each request: all at once on threads, or one after another."""
    if together:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for i in range(count):
            run(i)


def bench_concurrency(engine: TTSEngine, sizes: tuple[int, ...], frames: int, runs: int) -> list[dict]:
    rows = []
    alone = None
    for n in sizes:
        requests = [
            SynthesisRequest(text=TEXT.format(i), use_g2p=False, max_frames=frames + 1, seed=i) for i in range(n)
        ]
        _latencies(engine, requests[:1], True)  # warm-up
        batched = [_latencies(engine, requests, True) for _ in range(runs)]
        serial = [_latencies(engine, requests, False) for _ in range(runs)]
        wall = statistics.median(w for w, _ in batched)
        p50 = statistics.median(statistics.median(d) for _, d in batched)
        serial_wall = statistics.median(w for w, _ in serial)
        if n == 1:
            alone = p50
        rows.append(
            dict(
                requests=n,
                frames=frames,
                tokens_per_s=round(n * frames / wall, 1),
                serialized_tokens_per_s=round(n * frames / serial_wall, 1),
                p50_s=round(p50, 3),
                serialized_p50_s=round(statistics.median(statistics.median(d) for _, d in serial), 3),
                p50_vs_alone=round(p50 / alone, 2) if alone else None,
            )
        )
    one = rows[0]["tokens_per_s"]
    for row in rows:
        row["aggregate_vs_one"] = round(row["tokens_per_s"] / one, 2)
    return rows
