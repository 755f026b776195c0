"""One voices folder shared by several processes (Ray Serve replicas, or servers on one NFS mount):
saves at the same moment never overwrite or lose a voice, and a starting process never sweeps away
another one's write in progress."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from server.voices import VoiceExists, VoiceStore, _abandoned

SAVES = 15
PROCESSES = 3


def save_voices(references: str, writer: int) -> tuple[list[str], list[str | None]]:
    store = VoiceStore(references)  # sweeps at start, while the other processes are writing
    clip = {"audio": np.zeros(22050, np.float32), "sample_rate": 22050, "model": "m", "family": "fish-speech-v0.2"}
    auto_ids, claimed = [], []
    for i in range(SAVES):
        codes = np.full((4, 5), writer * 100 + i, np.int64)
        auto_ids.append(store.create(name="Twin", transcript=f"{writer}-{i}", codes=codes, **clip)["id"])
        try:
            store.create(name="x", transcript=f"{writer}", codes=codes, voice_id=f"one-{i}", **clip)
            claimed.append(f"one-{i}")
        except VoiceExists:
            claimed.append(None)
    return auto_ids, claimed


def test_processes_saving_at_once_each_keep_their_voice(tmp_path):
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(save_voices, [str(tmp_path)] * PROCESSES, range(PROCESSES)))
    store = VoiceStore(tmp_path)
    auto_ids = [voice_id for ids, _ in results for voice_id in ids]
    assert len(set(auto_ids)) == PROCESSES * SAVES
    for writer, (ids, _) in enumerate(results):
        for i, voice_id in enumerate(ids):
            assert store.get(voice_id)["transcript"] == f"{writer}-{i}"
            assert (store.codes(voice_id) == writer * 100 + i).all()
    for i in range(SAVES):  # each explicit id went to exactly one process, whose voice it holds
        winners = [writer for writer, (_, claimed) in enumerate(results) if claimed[i] is not None]
        assert len(winners) == 1 and store.get(f"one-{i}")["transcript"] == str(winners[0])
    assert not [p for p in (tmp_path / "voices").iterdir() if p.name.startswith(".")]


def test_only_writes_of_dead_processes_are_swept(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    host = socket.gethostname()
    live = tmp_path / f".tmp-{host}-{os.getpid()}-abc"
    dead = tmp_path / f".tmp-{host}-{finished.stdout.strip()}-abc"
    elsewhere = tmp_path / ".tmp-another-host-1-abc"
    legacy = tmp_path / ".tmp-0123abcd"
    for folder in (live, dead, elsewhere, legacy):
        folder.mkdir()
    assert [_abandoned(f) for f in (live, dead, elsewhere, legacy)] == [False, True, False, True]
    old = 2 * 3600
    os.utime(elsewhere, (elsewhere.stat().st_atime - old, elsewhere.stat().st_mtime - old))
    assert _abandoned(elsewhere)
