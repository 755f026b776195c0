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


def finished_pid() -> str:
    """The id of a process that has ended."""
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return finished.stdout.strip()


def test_only_writes_of_dead_processes_are_swept(tmp_path):
    host = socket.gethostname()
    live = tmp_path / f".tmp-{host}-{os.getpid()}-abc"
    dead = tmp_path / f".tmp-{host}-{finished_pid()}-abc"
    elsewhere = tmp_path / ".tmp-another-host-1-abc"
    legacy = tmp_path / ".tmp-0123abcd"
    for folder in (live, dead, elsewhere, legacy):
        folder.mkdir()
    assert [_abandoned(f) for f in (live, dead, elsewhere, legacy)] == [False, True, False, True]
    old = 2 * 3600
    os.utime(elsewhere, (elsewhere.stat().st_atime - old, elsewhere.stat().st_mtime - old))
    assert _abandoned(elsewhere)


def test_codes_files_a_dead_writer_left_in_a_voice_are_swept_at_start(tmp_path):
    """`keep_codes` writes `.codes.<family>.npy.tmp-...` beside a voice's files: those of a dead process
    (or an older version) go at start; a live writer's, the voice's own files and a link's target stay."""
    store = VoiceStore(tmp_path / "refs")
    clip = {"audio": np.zeros(22050, np.float32), "sample_rate": 22050, "model": "m", "family": "fish-speech-v0.2"}
    meta = store.create(name="x", transcript="t", codes=np.zeros((4, 5), np.int64), voice_id="me", **clip)
    with store.pinned("me", meta["created_at"]) as voice:
        voice.keep_codes("openaudio-s1-mini", np.ones((10, 5), np.int64))
    folder = tmp_path / "refs" / "voices" / "me"
    temporary = ".codes.openaudio-s1-mini.npy.tmp-"
    stray = [f"{temporary}{socket.gethostname()}-{finished_pid()}-abc", f"{temporary}0123abcd"]
    live = f"{temporary}{socket.gethostname()}-{os.getpid()}-abc"
    outside = tmp_path / "outside"
    outside.mkdir()
    for path in [*(folder / name for name in [*stray, live]), outside / stray[0]]:
        path.write_bytes(b"\x93NUMPY partial")
    (tmp_path / "refs" / "voices" / "linked").symlink_to(outside, target_is_directory=True)
    kept = sorted(p.name for p in folder.iterdir() if p.name not in stray)

    VoiceStore(tmp_path / "refs")  # a process starting on the folder
    assert sorted(p.name for p in folder.iterdir()) == kept
    assert (outside / stray[0]).exists()
    assert (store.codes("me", "openaudio-s1-mini") == 1).all()
