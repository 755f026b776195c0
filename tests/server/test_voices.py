"""Saved voices over HTTP: create, list, use, delete, and survive a restart and a kill -9 mid-write."""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter

import numpy as np
import requests

from core.audio import encode_audio
from server.voices import VoiceStore
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
    size = len(clip.content)
    for asked, (start, stop) in {"bytes=100-199": (100, 200), "bytes=-10": (size - 10, size)}.items():
        part = requests.get(server.url + "/v1/references/alice/audio", headers={"Range": asked})
        assert part.status_code == 206 and part.content == clip.content[start:stop]
        assert part.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}"
    past_end = requests.get(server.url + "/v1/references/alice/audio", headers={"Range": f"bytes={size}-"})
    assert_json_error(past_end, 416)
    assert past_end.headers["content-range"] == f"bytes */{size}"
    for asked in ("bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000):  # (Python's int() refuses 4,300+ digits)
        whole = requests.get(server.url + "/v1/references/alice/audio", headers={"Range": asked})
        assert whole.status_code == 200 and whole.content == clip.content

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


def multipart(boundary: str, fields: dict[str, bytes], clip: bytes) -> bytes:
    """A multipart body written by hand: each text field's bytes as given (requests would encode str fields)."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + clip
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_text_fields_that_are_not_utf8_are_refused_not_saved_garbled(server):
    """(Starlette read a multipart field that is not UTF-8 as Latin-1 and a urlencoded one with U+FFFD: the
    voice was saved with "hello ÿþ" or a transcript missing letters, and a 201)"""
    clip, url = audio_bytes(tone(1.0)), server.url + "/v1/references"
    latin1 = {"name": "Zoë".encode("latin-1"), "transcript": "café au lait".encode("latin-1")}
    sent = multipart("xYz", latin1, clip)
    refused = requests.post(url, data=sent, headers={"Content-Type": "multipart/form-data; boundary=xYz"})
    assert "not valid utf-8" in assert_json_error(refused, 422)["message"]
    clip64 = base64.b64encode(clip).decode()
    broken = "name=Zo%EB&transcript=hi&audio=" + requests.utils.quote(clip64, safe="")
    refused = requests.post(url, data=broken, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert assert_json_error(refused, 422)["message"].startswith("body: not valid utf-8")
    assert "Zo" not in str(requests.get(url).json())  # nothing was saved

    named = requests.post(
        url, data=sent, headers={"Content-Type": "multipart/form-data; boundary=xYz; charset=latin-1"}
    )
    utf8 = {"name": "Zoë 小明".encode(), "transcript": "café au lait, 你好".encode()}
    as_utf8 = requests.post(
        url, data=multipart("b0", utf8, clip), headers={"Content-Type": "multipart/form-data; boundary=b0"}
    )
    encoded = requests.post(url, data={"name": "Zoë", "transcript": "hé", "audio": clip64})  # (urlencoded, UTF-8)
    saved = [(r.json()["name"], r.json()["transcript"]) for r in (named, as_utf8, encoded)]
    assert saved == [("Zoë", "café au lait"), ("Zoë 小明", "café au lait, 你好"), ("Zoë", "hé")]


def test_a_silent_clip_is_refused_and_a_quiet_one_kept(server):
    """(a silent clip was saved as a voice without a word: the model had nothing to clone)"""
    silence = base64.b64encode(audio_bytes(np.zeros(2 * 22050, np.float32))).decode()
    refused = assert_json_error(create_voice(server.url, name="Mute", audio=silence), 422)
    assert refused["message"].startswith("audio: the reference clip is silent"), refused
    assert "Mute" not in str(requests.get(server.url + "/v1/references").json())
    quiet = base64.b64encode(audio_bytes(tone(2.0) / 0.45 * 10 ** (-55 / 20))).decode()  # its peak at -55 dBFS
    kept = create_voice(server.url, name="Whisper", audio=quiet)
    assert kept.status_code == 201, kept.text
    requests.delete(server.url + "/v1/references/" + kept.json()["id"])


def test_existing_id_is_a_conflict(server):
    assert create_voice(server.url, id="carol").status_code == 201
    assert_json_error(create_voice(server.url, id="carol"), 409)


def test_a_clip_downloaded_while_its_voice_changes_is_whole_or_a_404(server, workdir):
    """Downloads of a voice's clip while it is saved, renamed away and back, and deleted (by another
    process on the folder, as replicas share it): each is one whole clip, or a 404, never a 500 or a cut."""
    store = VoiceStore(workdir / "references")
    seconds, rate = 10, 48_000  # ~1 MB: many chunks of a response to delete the file between
    clips = [np.full(seconds * rate, value, np.float32) for value in (0.1, 0.2)]
    wavs = {encode_audio(clip, rate, "wav") for clip in clips}  # the files the store writes
    stop, outcomes = threading.Event(), []

    def download():
        while not stop.is_set():
            try:
                response = requests.get(server.url + "/v1/references/racy/audio", timeout=30)
            except requests.RequestException as exc:
                outcomes.append(type(exc).__name__)
                continue
            if response.status_code == 200:
                outcomes.append(200 if response.content in wavs else "not one whole clip")
            elif response.headers["content-type"].startswith("application/json"):
                outcomes.append(response.status_code)
            else:
                outcomes.append(f"{response.status_code} not JSON")

    downloaders = [threading.Thread(target=download) for _ in range(3)]
    for thread in downloaders:
        thread.start()
    try:
        for i in range(30):
            store.create(
                name="racy",
                transcript="t",
                codes=np.zeros((4, 50), np.int64),
                audio=clips[i % 2],
                sample_rate=rate,
                model="m",
                family="fish-speech-v0.2",
                voice_id="racy",
            )
            store.rename("racy", "racy-away")
            store.rename("racy-away", "racy")
            store.delete("racy")
    finally:
        stop.set()
        for thread in downloaders:
            thread.join()
    assert set(outcomes) == {200, 404}, Counter(outcomes)


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
