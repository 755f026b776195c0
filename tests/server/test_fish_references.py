"""The original S1 server's reference routes (/v1/references/add, list, delete, update) over saved voices:
the official client's multipart upload, msgpack and JSON bodies, msgpack or JSON answers, voices usable by
`reference_id`, renames that keep the codes, and 4xx JSON for what the store refuses."""

from __future__ import annotations

import base64

import msgpack
import numpy as np
import pytest

from tests.server.helpers import assert_json_error, audio_bytes, make_workdir, tone

CLIP = audio_bytes(tone(1.5))
FAST = {"max_new_tokens": 8, "seed": 4}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("work-fish-refs"))


def packed(client, method: str, path: str, body: dict, **kwargs):
    headers = {"content-type": "application/msgpack"}
    return client.request(method, path, content=msgpack.packb(body), headers=headers, **kwargs)


def unpacked(response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/msgpack"
    return msgpack.unpackb(response.content)


def listed(client) -> list[str]:
    return unpacked(client.get("/v1/references/list"))["reference_ids"]


def test_add_list_use_rename_delete(client, workdir):
    # the official client's upload: multipart with the clip as a file part
    added = client.post("/v1/references/add", data={"id": "alice", "text": "a tone"}, files={"audio": ("a.wav", CLIP)})
    assert unpacked(added) == {"success": True, "message": "Reference added successfully", "reference_id": "alice"}
    unpacked(packed(client, "POST", "/v1/references/add", {"id": "bob", "audio": CLIP, "text": "a tone"}))
    as_json = {"id": "carol", "audio": base64.b64encode(CLIP).decode(), "text": "a tone"}
    assert client.post("/v1/references/add?format=json", json=as_json).json()["reference_id"] == "carol"
    assert listed(client) == ["alice", "bob", "carol"]
    json_list = client.get("/v1/references/list", headers={"accept": "application/json"})
    assert json_list.json() == {"success": True, "reference_ids": ["alice", "bob", "carol"], "message": "Success"}
    assert client.get("/v1/references/alice").json()["transcript"] == "a tone"  # a saved voice like any other

    speak = {"text": "In Alice's voice.", "reference_id": "alice", **FAST}
    before = client.post("/v1/tts", json=speak)
    assert before.status_code == 200, before.text
    codes = np.load(workdir / "references" / "voices" / "alice" / "codes.npy")

    renamed = unpacked(
        packed(client, "POST", "/v1/references/update", {"old_reference_id": "alice", "new_reference_id": "ann"})
    )
    assert renamed["old_reference_id"] == "alice" and renamed["new_reference_id"] == "ann"
    assert listed(client) == ["ann", "bob", "carol"]
    np.testing.assert_array_equal(np.load(workdir / "references" / "voices" / "ann" / "codes.npy"), codes)
    assert client.post("/v1/tts", json={**speak, "reference_id": "ann"}).content == before.content
    assert_json_error(client.post("/v1/tts", json=speak), 404)

    deleted = unpacked(packed(client, "DELETE", "/v1/references/delete", {"reference_id": "bob"}))
    assert deleted["reference_id"] == "bob" and listed(client) == ["ann", "carol"]
    assert not any(p.name.startswith(".") for p in (workdir / "references" / "voices").iterdir())


@pytest.mark.parametrize(
    "method, path, body, status, said",
    [
        ("POST", "/v1/references/add", {"id": "carol2", "text": "x"}, 422, "audio"),
        ("POST", "/v1/references/add", {"id": "My Voice", "audio": CLIP, "text": "x"}, 422, "id"),
        ("POST", "/v1/references/add", {"id": "list", "audio": CLIP, "text": "x"}, 422, "reserved"),
        ("POST", "/v1/references/add", {"id": "dave", "audio": CLIP, "text": "  "}, 422, "text"),
        ("POST", "/v1/references/add", {"id": "dave", "audio": b"not audio", "text": "x"}, 422, "audio"),
        ("DELETE", "/v1/references/delete", {"reference_id": "nobody"}, 404, "nobody"),
        ("POST", "/v1/references/update", {"old_reference_id": "nobody", "new_reference_id": "x"}, 404, "nobody"),
        ("POST", "/v1/references/update", {"old_reference_id": "erin", "new_reference_id": "frank"}, 409, "frank"),
        (
            "POST",
            "/v1/references/update",
            {"old_reference_id": "erin", "new_reference_id": "delete"},
            422,
            "new_reference_id:",
        ),
        ("POST", "/v1/references/add", {"id": "erin", "audio": CLIP, "text": "again"}, 409, "erin"),
    ],
)
def test_what_the_store_refuses_is_a_json_error(client, method, path, body, status, said):
    for voice in ("erin", "frank"):
        if voice not in listed(client):
            unpacked(packed(client, "POST", "/v1/references/add", {"id": voice, "audio": CLIP, "text": "x"}))
    answer = packed(client, method, path, body)
    assert_json_error(answer, status)
    assert said in answer.text
    assert {"erin", "frank"} <= set(listed(client))  # nothing was lost


def test_a_voice_named_like_a_route_gets_another_id(client):
    clip = base64.b64encode(CLIP).decode()
    made = client.post("/v1/references", json={"name": "List", "transcript": "x", "audio": clip})
    assert made.status_code == 201 and made.json()["id"] == "list-2"
    assert_json_error(
        client.post("/v1/references", json={"name": "x", "id": "update", "transcript": "x", "audio": clip}), 422
    )
    assert client.get("/v1/references/list-2").json()["name"] == "List"


def test_a_voices_folder_that_takes_no_writes_is_a_507_saying_so(client, monkeypatch):
    """(A read-only references folder, bind-mounted as such, or a full disk: every save, rename and delete
    was an internal error.) The OS's refusal is injected where the store writes: tests run as root here,
    whom file modes do not stop."""
    import errno

    import server.voices as voices

    unpacked(packed(client, "POST", "/v1/references/add", {"id": "kept", "audio": CLIP, "text": "a tone"}))

    def refused(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(voices, "_write_synced", refused)
    monkeypatch.setattr(voices.os, "rename", refused)
    answers = [
        packed(client, "POST", "/v1/references/add", {"id": "new", "audio": CLIP, "text": "a tone"}),
        packed(client, "POST", "/v1/references/update", {"old_reference_id": "kept", "new_reference_id": "moved"}),
        packed(client, "DELETE", "/v1/references/delete", {"reference_id": "kept"}),
    ]
    for answer in answers:
        assert "voices folder cannot be written (read-only file system)" in assert_json_error(answer, 507)["message"]
    monkeypatch.undo()
    assert "kept" in listed(client) and "new" not in listed(client) and "moved" not in listed(client)
