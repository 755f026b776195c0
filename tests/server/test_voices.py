"""Saved voices over HTTP: create, list, use, delete, and survive a restart and a kill -9 mid-write."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import requests

from tests.server.helpers import FAST, Server, assert_json_error, audio_bytes, read_wav, tone


def create_voice(url: str, **fields) -> requests.Response:
    body = {"name": "Alice", "transcript": "hello there", "audio": base64.b64encode(audio_bytes(tone(2.0))).decode()}
    return requests.post(url + "/v1/references", json={**body, **fields}, timeout=60)


def test_create_list_get_use_delete(server):
    created = create_voice(server.url, id="alice")
    assert created.status_code == 201, created.text
    voice = created.json()
    assert voice["id"] == "alice" and voice["transcript"] == "hello there" and voice["frames"] > 0
    assert abs(voice["duration_s"] - 2.0) < 0.01 and voice["model"] == "default"

    listed = requests.get(server.url + "/v1/references").json()["references"]
    assert [v["id"] for v in listed] == ["alice"]
    assert requests.get(server.url + "/v1/references/alice").json() == voice
    clip = requests.get(server.url + "/v1/references/alice/audio")
    assert clip.status_code == 200 and read_wav(clip.content)[0].size == 2 * 22050
    head = requests.head(server.url + "/v1/references/alice/audio")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(clip.content))
    assert requests.head(server.url + "/v1/references/nobody/audio").status_code == 404

    used = requests.post(server.url + "/v1/models/default/invoke", json={"text": "hi", "reference_id": "alice", **FAST})
    assert used.status_code == 200 and read_wav(used.content)[0].size > 0

    assert requests.delete(server.url + "/v1/references/alice").json() == {"message": "Reference deleted."}
    assert_json_error(requests.get(server.url + "/v1/references/alice"), 404)
    assert_json_error(
        requests.post(server.url + "/v1/models/default/invoke", json={"text": "hi", "reference_id": "alice", **FAST}),
        404,
    )
    assert_json_error(requests.delete(server.url + "/v1/references/alice"), 404)


def test_multipart_create_and_ids_from_names(server):
    files = {"audio": ("clip.ogg", audio_bytes(tone(1.5), fmt="OGG", subtype="VORBIS"), "audio/ogg")}
    first = requests.post(server.url + "/v1/references", data={"name": "Bob Smith", "transcript": "hi"}, files=files)
    second = requests.post(server.url + "/v1/references", data={"name": "Bob Smith", "transcript": "hi"}, files=files)
    assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
    assert (first.json()["id"], second.json()["id"]) == ("bob-smith", "bob-smith-2")
    chinese = create_voice(server.url, name="小明")
    assert chinese.status_code == 201 and chinese.json()["id"].startswith("voice")


def test_existing_id_is_a_conflict(server):
    assert create_voice(server.url, id="carol").status_code == 201
    assert_json_error(create_voice(server.url, id="carol"), 409)


def test_voices_survive_a_restart(server, workdir):
    assert create_voice(server.url, id="dave", transcript="persisted").status_code == 201
    before = requests.get(server.url + "/v1/references").json()["references"]
    server.stop()
    restarted = Server(workdir)
    try:
        after = requests.get(restarted.url + "/v1/references").json()["references"]
        assert after == before
        used = requests.post(
            restarted.url + "/v1/models/default/invoke", json={"text": "hi", "reference_id": "dave", **FAST}
        )
        assert used.status_code == 200, used.text
    finally:
        restarted.stop()


def test_kill_9_during_writes_leaves_only_complete_voices(workdir):
    """Voices written while the server is killed are either complete or absent; leftovers are swept."""
    voices_dir = workdir / "references" / "voices"
    (voices_dir / ".tmp-interrupted").mkdir()
    (voices_dir / ".tmp-interrupted" / "codes.npy").write_bytes(b"\x93NUMPY partial")
    victim = Server(workdir)
    stop = threading.Event()

    def keep_creating():
        n = 0
        while not stop.is_set():
            try:
                create_voice(victim.url, id=f"burst-{n}")
            except requests.RequestException:
                return
            n += 1

    writer = threading.Thread(target=keep_creating)
    writer.start()
    time.sleep(1.5)
    victim.kill9()
    stop.set()
    writer.join(timeout=30)

    survivor = Server(workdir, load=False)
    try:
        voices = requests.get(survivor.url + "/v1/references").json()["references"]
        assert any(v["id"].startswith("burst-") for v in voices)
        for voice in voices:
            folder = voices_dir / voice["id"]
            assert np.load(folder / "codes.npy").shape == (4, voice["frames"])
            assert read_wav((folder / "audio.wav").read_bytes())[0].size > 0
        assert not [p for p in voices_dir.iterdir() if p.name.startswith(".")]
    finally:
        survivor.stop()


def test_bad_voice_requests(workdir):
    srv = Server(workdir, load=False)
    try:
        assert_json_error(requests.post(srv.url + "/v1/references", json={"name": "x", "transcript": "y"}), 422)
        assert_json_error(create_voice(srv.url, audio="###"), 422)
        assert_json_error(create_voice(srv.url, id="Bad/Id"), 422)
        assert_json_error(create_voice(srv.url, name="   "), 422)
        assert_json_error(create_voice(srv.url), 404)  # no model loaded: nothing can encode the clip
        assert_json_error(requests.get(srv.url + "/v1/references/NOT_VALID"), 422)
    finally:
        srv.stop()


def test_voice_folders_that_link_outside_are_not_voices(workdir, tmp_path):
    """A link in the voices folder leading out of it is skipped in listings (logged once), unknown by id
    (so its audio is never served) and never followed by a delete; so is a voice whose clip is such a link."""
    server = Server(workdir)  # its own: earlier tests restart and kill servers on this folder
    try:
        assert create_voice(server.url, id="original").status_code == 201
        voices = server.workdir / "references" / "voices"
        outside = tmp_path / "outside"
        outside.mkdir()
        for name in ("voice.json", "codes.npy", "audio.wav"):
            data = (voices / "original" / name).read_bytes()
            (outside / name).write_bytes(data.replace(b'"original"', b'"linked"') if name == "voice.json" else data)
        (voices / "linked").symlink_to(outside, target_is_directory=True)
        (voices / "clip-out").mkdir()
        for name in ("voice.json", "codes.npy"):
            data = (voices / "original" / name).read_bytes()
            (voices / "clip-out" / name).write_bytes(data.replace(b'"original"', b'"clip-out"'))
        (voices / "clip-out" / "audio.wav").symlink_to(outside / "audio.wav")

        for _ in range(2):
            listed = {v["id"] for v in requests.get(server.url + "/v1/references", timeout=30).json()["references"]}
            assert "original" in listed and "linked" not in listed and "clip-out" not in listed
        for voice_id in ("linked", "clip-out"):
            assert_json_error(requests.get(server.url + f"/v1/references/{voice_id}/audio", timeout=30), 404)
            assert_json_error(requests.delete(server.url + f"/v1/references/{voice_id}", timeout=30), 404)
        assert_json_error(requests.get(server.url + "/v1/references/linked", timeout=30), 404)
        assert_json_error(
            requests.post(
                server.url + "/v1/models/default/invoke",
                json={"text": "hi", "reference_id": "linked", **FAST},
                timeout=30,
            ),
            404,
        )
        assert sorted(p.name for p in outside.iterdir()) == ["audio.wav", "codes.npy", "voice.json"]  # untouched
        assert (voices / "linked").is_symlink()
        assert server.output().count("skipping voice linked") == 1
    finally:
        server.stop()
