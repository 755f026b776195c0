"""The voice store under requests that overlap: codes made from a voice's clip belong to that voice
alone, and renames and deletes of one voice at once leave one outcome, never a 500 or two copies."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from server.voices import MAX_NAME_TRIES, VOICE_ID, VoiceExists, VoiceNotFound, VoiceStore

OWN, OTHER = "fish-speech-v0.2", "openaudio-s1-mini"


def save(store: VoiceStore, voice_id: str, value: int) -> dict:
    return store.create(
        name=voice_id,
        transcript=f"clip {value}",
        codes=np.full((4, 5), value, np.int64),
        audio=np.full(2205, value / 100, np.float32),
        sample_rate=22050,
        model="default",
        family=OWN,
        voice_id=voice_id,
    )


def test_codes_made_for_a_voice_deleted_and_saved_anew_stay_out_of_the_new_one(tmp_path):
    store = VoiceStore(tmp_path)
    old = save(store, "me", 1)
    with store.pinned("me", old["created_at"]) as voice:  # a request encoding the old clip for another family
        clip = voice.clip()
        store.delete("me")
        new = save(store, "me", 2)
        voice.keep_codes(OTHER, np.full((10, 5), 7, np.int64))
    assert store.codes("me", OTHER) is None  # made again from the new clip when asked
    with store.pinned("me", new["created_at"]) as voice:
        assert voice.clip() != clip and voice.codes()[0, 0] == 2
    with pytest.raises(VoiceNotFound):  # the request that read the old voice's transcript gets no codes
        with store.pinned("me", old["created_at"]):
            pass


def test_codes_kept_through_a_pinned_voice_are_its_own(tmp_path):
    store = VoiceStore(tmp_path)
    meta = save(store, "me", 1)
    with store.pinned("me", meta["created_at"]) as voice:
        assert voice.codes(OTHER) is None
        voice.keep_codes(OTHER, np.full((10, 5), 7, np.int64))
    assert (store.codes("me", OTHER) == 7).all() and (store.codes("me") == 1).all()
    assert not [p.name for p in (tmp_path / "voices" / "me").iterdir() if p.name.startswith(".")]


def test_another_familys_codes_that_link_out_of_the_folder_are_not_read_nor_written_through(tmp_path):
    store = VoiceStore(tmp_path / "refs")
    meta = save(store, "me", 1)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.full((10, 5), 9, np.int64))
    (tmp_path / "refs" / "voices" / "me" / f"codes.{OTHER}.npy").symlink_to(outside)
    with store.pinned("me", meta["created_at"]) as voice:
        assert voice.codes(OTHER) is None
        voice.keep_codes(OTHER, np.full((10, 5), 7, np.int64))
    assert (np.load(outside) == 9).all() and (store.codes("me", OTHER) == 7).all()


def test_a_name_whose_numbered_ids_are_all_taken_still_gets_an_id(tmp_path):
    """Every name without Latin letters or digits slugs to `voice`: past `voice-1000`, a random suffix."""
    store = VoiceStore(tmp_path)
    for n in range(1, MAX_NAME_TRIES + 1):  # the numbered ids, taken (as a folder takes them)
        (tmp_path / "voices" / ("voice" if n == 1 else f"voice-{n}")).mkdir()
    clip = {"audio": np.zeros(2205, np.float32), "sample_rate": 22050, "model": "m", "family": OWN}
    ids = {store.create(name=name, transcript="t", codes=np.zeros((4, 5), np.int64), **clip)["id"] for name in "一二"}
    assert len(ids) == 2 and all(VOICE_ID.match(voice_id) and voice_id.startswith("voice-") for voice_id in ids)
    assert {voice["id"] for voice in store.list()} == ids


def rename_and_delete_at_once(store: VoiceStore, voice_id: str, new_ids: list[str]) -> dict[str, str]:
    """Each rename of `voice_id` and one delete of it, started together: what each call ended in."""
    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(len(new_ids) + 1)

    def rename(new_id: str) -> None:
        barrier.wait()
        try:
            store.rename(voice_id, new_id)
            outcomes[new_id] = "renamed"
        except (VoiceNotFound, VoiceExists) as exc:
            outcomes[new_id] = type(exc).__name__

    def delete() -> None:
        barrier.wait()
        try:
            store.delete(voice_id)
            outcomes["delete"] = "deleted"
        except VoiceNotFound:
            outcomes["delete"] = "VoiceNotFound"

    threads = [threading.Thread(target=rename, args=(new_id,)) for new_id in new_ids]
    threads.append(threading.Thread(target=delete))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_renames_and_a_delete_of_one_voice_at_once_have_one_outcome(tmp_path):
    store = VoiceStore(tmp_path)
    for trial in range(10):
        save(store, "src", trial)
        outcomes = rename_and_delete_at_once(store, "src", [f"new{trial}-{i}" for i in range(6)])
        assert len(outcomes) == 7  # every call ended in a known outcome (an OSError would be missing)
        renamed = [name for name, outcome in outcomes.items() if outcome == "renamed"]
        assert sum(o in ("renamed", "deleted") for o in outcomes.values()) == 1, outcomes
        ids = {v["id"] for v in store.list()}
        assert ids == set(renamed), (ids, outcomes)
        for voice_id in ids:
            assert (store.codes(voice_id) == trial).all()
            store.delete(voice_id)


@pytest.mark.parametrize(
    "edit",
    [
        lambda meta: meta.pop("created_at"),
        lambda meta: meta.update(created_at="yesterday"),
        lambda meta: meta.update(frames="40"),
        lambda meta: meta.update(duration_s=True),
        lambda meta: meta.pop("transcript"),
    ],
)
def test_a_voice_json_edited_by_hand_is_skipped_not_a_broken_listing(tmp_path, edit):
    """Like any unreadable voice: out of the listing (which sorts on created_at), unknown by id; the
    response model would have refused it with a 500 for every listing."""
    store = VoiceStore(tmp_path)
    save(store, "good", 1)
    save(store, "edited", 2)
    path = tmp_path / "voices" / "edited" / "voice.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    assert [voice["id"] for voice in store.list()] == ["good"]
    with pytest.raises(VoiceNotFound):
        store.get("edited")
    assert store.get("good")["transcript"] == "clip 1"
