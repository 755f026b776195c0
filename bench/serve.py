"""`python -m bench.serve`: the HTTP API on Ray Serve against the single-process server, same machine.

    python -m bench.serve [--requests 20] [--clients 8] [--seconds 3]

Both run the tiny test models (tests/data/parity) with the same settings (CPU, batch 8, one thread
each). Measured in one run, both servers up at once: added latency per request (one client, the
same seeded request alternately to the direct server and through Serve's proxy to 1 replica; medians)
for a clip of --seconds of audio, and for GET /v1/health (the proxy hop alone); aggregate throughput
(requests/s) with --clients clients for the direct server, Serve with 1 replica and Serve with 2
replicas. Needs the [ray] extra. A table and a JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import soundfile as sf

from tests.paths import ROOT
from tests.server.helpers import Server, free_port, make_workdir

INVOKE = "/v1/models/default/invoke"
SENTENCE = "This is sentence number {}."
MAX_TOKENS = 200  # per sentence; the tiny models stop on their own well before


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="sequential requests per server (latency)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (throughput)")
    parser.add_argument("--per-client", type=int, default=4, help="requests per client (throughput)")
    parser.add_argument("--seconds", type=float, default=3.0, help="audio per request")
    return parser.parse_args(argv)


def post(url: str, text: str, seed: int = 1) -> requests.Response:
    response = requests.post(url + INVOKE, json={"text": text, "max_new_tokens": MAX_TOKENS, "seed": seed}, timeout=300)
    response.raise_for_status()
    return response


def clip_seconds(response: requests.Response) -> float:
    info = sf.info(io.BytesIO(response.content))
    return info.frames / info.samplerate


def text_for(url: str, seconds: float) -> str:
    """Enough sentences (segments, each generated until the model stops) for about `seconds` of audio."""
    for count in range(1, 60):
        text = " ".join(SENTENCE.format(n) for n in range(1, count + 1))
        if clip_seconds(post(url, text)) >= seconds:
            return text
    return text


def health_latency(url: str) -> float:
    start = time.perf_counter()
    requests.get(url + "/v1/health", timeout=60).raise_for_status()
    return time.perf_counter() - start


def latency(url: str, text: str) -> float:
    start = time.perf_counter()
    post(url, text)
    return time.perf_counter() - start


def throughput(url: str, text: str, clients: int, per_client: int) -> float:
    def client(index: int) -> None:
        for n in range(per_client):
            post(url, text, seed=index * 100 + n)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return clients * per_client / (time.perf_counter() - start)


def deploy(workdir: Path, replicas: int) -> None:
    from ray import serve

    from server.ray_app import app

    args = {
        "checkpoints_dir": str(workdir / "checkpoints"),
        "references_dir": str(workdir / "references"),
        "load": f"default={workdir / 'load_default.json'}",
        "device": "cpu",
        "max_batch_size": 8,
        "min_replicas": replicas,
        "max_replicas": replicas,
        "num_cpus": 1,
    }
    serve.run(app(args), name="fishtts", route_prefix="/")


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SystemExit("bench.serve needs Ray Serve: pip install -e '.[ray]'") from None
    workdir = make_workdir(Path(tempfile.mkdtemp(prefix="fishtts-bench-serve-")))
    direct = Server(workdir, "--max-batch-size", "8", "--workers", "8", "--device", "cpu")
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        runtime_env={"env_vars": env},
        logging_level="warning",
        log_to_driver=False,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        proxied = f"http://127.0.0.1:{port}"
        deploy(workdir, 1)
        text = text_for(direct.url, args.seconds)
        seconds = clip_seconds(post(direct.url, text))
        assert post(proxied, text).content == post(direct.url, text).content  # same audio both ways
        for url in (direct.url, proxied):  # warm-up
            for _ in range(3):
                latency(url, text)
        health = [(health_latency(direct.url), health_latency(proxied)) for _ in range(2 * args.requests)]
        pairs = [(latency(direct.url, text), latency(proxied, text)) for _ in range(args.requests)]
        direct_s = statistics.median(d for d, _ in pairs)
        serve_s = statistics.median(s for _, s in pairs)
        added_s = statistics.median(s - d for d, s in pairs)
        rows = {
            "direct": throughput(direct.url, text, args.clients, args.per_client),
            "serve_1_replica": throughput(proxied, text, args.clients, args.per_client),
        }
        deploy(workdir, 2)
        throughput(proxied, text, 2, 1)  # warm the new replica
        rows["serve_2_replicas"] = throughput(proxied, text, args.clients, args.per_client)
    finally:
        serve.shutdown()
        ray.shutdown()
        direct.stop()
    result = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "clip_s": round(seconds, 2),
        "sentences": text.count("."),
        "direct_ms": round(direct_s * 1000, 1),
        "serve_ms": round(serve_s * 1000, 1),
        "added_ms": round(added_s * 1000, 1),
        "added_pct": round(100 * added_s / direct_s, 1),
        "health_direct_ms": round(1000 * statistics.median(d for d, _ in health), 1),
        "health_serve_ms": round(1000 * statistics.median(s for _, s in health), 1),
        "clients": args.clients,
        "requests_per_s": {k: round(v, 2) for k, v in rows.items()},
    }
    print(
        f"clip {seconds:.2f} s ({result['sentences']} sentences), tiny models, {result['cores']} cores, "
        f"medians of {args.requests}"
    )
    print(f"{'':<22}{'latency ms':>12}")
    print(f"{'direct server':<22}{result['direct_ms']:>12}")
    print(f"{'Serve, 1 replica':<22}{result['serve_ms']:>12}   added {result['added_ms']} ms ({result['added_pct']}%)")
    print(f"{'GET /v1/health':<22}{result['health_direct_ms']:>12}   through Serve {result['health_serve_ms']} ms")
    print(f"{'throughput, clients':<22}{args.clients:>12}")
    for name, value in result["requests_per_s"].items():
        print(f"{name:<22}{value:>12} requests/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
