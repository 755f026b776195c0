"""Saved voices on disk: `<references-dir>/voices/<id>/{voice.json, codes.npy, audio.wav}`.

`codes.npy` holds the codes of the model family the voice was saved with (`family` in voice.json;
voices saved before it was recorded are Fish Speech v0.2's), `audio.wav` the clip at its upload's
own rate (up to MAX_CLIP_RATE; voices saved before kept the model's rate). A model of another family
encodes the clip once and keeps its codes beside them (`codes.<family>.npy`, written to a temporary
name and renamed into place): from the upload's rate, S1-mini's 44.1 kHz codec hears the band above
v0.2's 11 kHz that a 22.05 kHz copy would have lost.

A voice is written into a hidden temporary folder, every file fsynced, then the folder is renamed
into place (atomic on POSIX) and the parent fsynced: after a crash or `kill -9` a voice either
exists completely or not at all. Deletion renames it away first for the same reason. Leftover
temporary folders (and codes files) are swept at start. Ids are a fixed safe alphabet, so they are never paths.

Several processes may share the folder (Ray Serve replicas, on one disk or NFS): the rename itself
claims the id (it fails when a voice of that name exists), so two saves never overwrite each other;
nothing is cached, so a voice saved by one process is seen by the others at once; only temporary
folders of dead processes (or, from other hosts, old enough to be abandoned) are swept, never another
process's write in progress.

Only what lies inside the voices folder is a voice: an entry that is a link leading out of it (or
whose files are) is skipped in listings (logged once) and unknown by id; deleting renames the link
itself, never what it points to.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from core.audio import encode_audio, resample
from core.engine import FAMILY

log = logging.getLogger("fishtts.server")

VOICE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # a fixed safe alphabet: ids are never paths
VOICE_ID = re.compile(VOICE_ID_PATTERN)
META, CODES, AUDIO = "voice.json", "codes.npy", "audio.wav"
LEGACY_FAMILY = FAMILY  # voices saved before the family was recorded hold Fish Speech v0.2 codes
ABANDONED_AFTER_S = 3600  # a temporary folder or file this old belongs to no write in progress
MAX_NAME_TRIES = 1000  # `slug-2` up to this; then `slug-<random>` (taken numbers are looked at one by one)
# the original fish-speech server's reference routes (/v1/references/add, ...) sit where a voice's id would
RESERVED_IDS = frozenset({"add", "list", "delete", "update"})
# voice.json's fields besides `id` and their JSON types (`save` writes them all; `family` defaults above)
META_FIELDS = {
    "name": (str,),
    "transcript": (str,),
    "duration_s": (float, int),
    "frames": (int,),
    "model": (str,),
    "family": (str,),
    "created_at": (float, int),
}
FAMILY_NAME = r"[a-z0-9][a-z0-9_.-]*"  # a model family's name, as `codes.<family>.npy` holds it
# `keep_codes`' file being written (`_temporary_name(".codes.<family>.npy")`; older versions: `.tmp-<random>`)
KEPT_CODES_TEMPORARY = re.compile(rf"\.codes\.{FAMILY_NAME}\.npy\.tmp-.+")
MAX_CLIP_RATE = 48_000  # a saved clip keeps its upload's rate up to this (above: more bytes, no codec hears it)


class VoiceNotFound(KeyError):
    pass


class VoiceExists(KeyError):
    pass


class VoicesUnwritable(RuntimeError):
    """The voices folder cannot be written (read-only, no permission, no room): nothing was changed."""


_STORAGE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def _storage_errors(action: str):
    """A write method whose failure for want of a writable folder is VoicesUnwritable (a clear answer, not
    an internal error): a read-only references folder is a deployment's choice, a full disk happens."""

    def wrap(method):
        @functools.wraps(method)
        def checked(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except OSError as exc:
                if exc.errno not in _STORAGE_ERRNOS:
                    raise
                reason = os.strerror(exc.errno).lower()
                raise VoicesUnwritable(f"Cannot {action}: the voices folder cannot be written ({reason}).") from None

        return checked

    return wrap


class VoiceStore:
    def __init__(self, references_dir: Path):
        self.folder = Path(references_dir) / "voices"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.root = self.folder.resolve()
        self._reported: set[str] = set()  # entries already logged as leading outside
        # this process's saves, renames and deletes one at a time (a rename deletes under it); reads need
        # no lock (renames are atomic)
        self._lock = threading.RLock()
        self._sweep()

    # -- reading ------------------------------------------------------------------------------

    def list(self) -> list[dict]:
        voices = []
        for entry in sorted(self.folder.iterdir()):
            if entry.name.startswith(".") or not VOICE_ID.match(entry.name):
                continue
            if not self._inside(entry, META, CODES, AUDIO):
                if entry.name not in self._reported:
                    self._reported.add(entry.name)
                    log.warning("skipping voice %s: it is a link leading outside %s", entry.name, self.folder)
                continue
            try:
                voices.append(self._read_meta(entry))
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable voice %s: %s", entry.name, exc)
        return sorted(voices, key=lambda v: v["created_at"])

    def get(self, voice_id: str) -> dict:
        folder = self._folder(voice_id, META)
        try:
            return self._read_meta(folder)
        except (OSError, ValueError):
            raise VoiceNotFound(voice_id) from None

    def codes(self, voice_id: str, family: str | None = None) -> np.ndarray | None:
        """The voice's codes for model family `family` (default: its own); None when that family's
        have not been made yet (`PinnedVoice.keep_codes` stores them)."""
        with self.pinned(voice_id) as voice:
            return voice.codes(family)

    @contextlib.contextmanager
    def pinned(self, voice_id: str, created_at: float | None = None) -> Iterator[PinnedVoice]:
        """The voice as it is now, its folder held open (see PinnedVoice); with `created_at`, only the voice
        a request read before (one deleted and saved anew under the same id meanwhile: VoiceNotFound)."""
        folder = self._folder(voice_id, META, CODES, AUDIO)
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            raise VoiceNotFound(voice_id) from None
        try:
            try:
                meta = self._check_meta(json.loads(_read_at(fd, META)), voice_id)
            except (OSError, ValueError):
                raise VoiceNotFound(voice_id) from None
            if created_at is not None and meta.get("created_at") != created_at:
                raise VoiceNotFound(voice_id)
            yield PinnedVoice(voice_id, meta, fd, lambda name: self._inside(folder, name))
        finally:
            os.close(fd)

    def clip(self, voice_id: str) -> bytes:
        """The voice's clip (a WAV file), read whole under its pin: one clip complete, even while the voice is
        deleted, renamed or saved anew."""
        with self.pinned(voice_id) as voice:
            return voice.clip()

    # -- writing ------------------------------------------------------------------------------

    @_storage_errors("save the voice")
    def create(
        self,
        *,
        name: str,
        transcript: str,
        codes: np.ndarray,
        audio: np.ndarray,
        sample_rate: int,
        model: str,
        family: str,
        voice_id: str | None = None,
    ) -> dict:
        """A voice of `family`'s `codes`, made from the clip `audio` (mono, at `sample_rate`) by model `model`."""
        if sample_rate > MAX_CLIP_RATE:
            audio, sample_rate = resample(audio, sample_rate, MAX_CLIP_RATE), MAX_CLIP_RATE
        staging = self._staging()
        try:
            _write_synced(staging / CODES, _npy_bytes(codes))
            _write_synced(staging / AUDIO, encode_audio(audio, sample_rate, "wav"))
            fields = {
                "name": name,
                "transcript": transcript,
                "duration_s": round(audio.size / sample_rate, 3),
                "frames": int(codes.shape[1]),
                "model": model,
                "family": family,
                "created_at": time.time(),
            }
            with self._lock:
                for candidate in self._candidates(voice_id, name):
                    meta = {"id": candidate, **fields}
                    _write_synced(staging / META, _meta_bytes(meta))
                    if self._claim(staging, candidate):
                        return meta
            raise VoiceExists(voice_id)  # (only an id asked for ends the candidates: a name's never do)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    @_storage_errors("rename the voice")
    def rename(self, voice_id: str, new_id: str) -> dict:
        """Give a voice another id. The files are linked into a new folder under `new_id` (claimed by the
        rename, as a save), then the old one is deleted: a crash in between leaves both, never neither.
        Under the lock, so of this process's renames and deletes of one voice at once one wins, and the
        others find it gone."""
        check_new_id(new_id)
        staging = self._staging()
        try:
            with self._lock:
                source = self._folder(voice_id, META, CODES, AUDIO)
                meta = {**self.get(voice_id), "id": new_id}
                try:
                    for entry in source.iterdir():
                        if entry.name != META and not entry.name.startswith(".") and _plain_file(entry):
                            _link_or_copy(entry, staging / entry.name)  # files are replaced, never written in place
                except FileNotFoundError:  # deleted by another process meanwhile
                    raise VoiceNotFound(voice_id) from None
                _write_synced(staging / META, _meta_bytes(meta))
                if not self._claim(staging, new_id):
                    raise VoiceExists(new_id)
                try:
                    self.delete(voice_id)
                except VoiceNotFound:
                    pass  # deleted meanwhile by another process: the new id holds the voice
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return meta

    @_storage_errors("delete the voice")
    def delete(self, voice_id: str) -> None:
        folder = self._folder(voice_id, META, CODES, AUDIO)  # a link out of the folder is no voice to delete
        trash = self.folder / f".trash-{uuid.uuid4().hex}"
        with self._lock:
            try:
                os.rename(folder, trash)
            except FileNotFoundError:
                raise VoiceNotFound(voice_id) from None
            _fsync_dir(self.folder)
        shutil.rmtree(trash, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------

    def _staging(self) -> Path:
        """A new hidden folder to write a voice into before it is published."""
        staging = self.folder / _temporary_name()
        staging.mkdir()
        return staging

    def _claim(self, staging: Path, voice_id: str) -> bool:
        """Publish the written folder as `voice_id`; False when the id is taken (the rename fails then)."""
        _fsync_dir(staging)
        try:
            os.rename(staging, self.folder / voice_id)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                return False
            raise
        _fsync_dir(self.folder)
        return True

    def _folder(self, voice_id: str, *files: str) -> Path:
        """The voice's folder, if the id is valid and it and `files` lie inside the voices folder."""
        if not VOICE_ID.match(voice_id or "") or not self._inside(self.folder / voice_id, *files):
            raise VoiceNotFound(voice_id)
        return self.folder / voice_id

    def _inside(self, folder: Path, *files: str) -> bool:
        """The folder and its files, links resolved, lie in the voices folder (missing ones are fine)."""
        for path in (folder, *(folder / name for name in files)):
            try:
                resolved = path.resolve()
            except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13): not a voice
                return False
            if resolved.parent != self.root and resolved.parent.parent != self.root:
                return False
        return True

    def _candidates(self, wanted: str | None, name: str) -> Iterator[str]:
        """The id asked for, or the name's slug then `slug-2`, `slug-3`, ... (skipping ids seen taken), then
        random suffixes without end: a name always gets an id (all names without Latin letters slug alike)."""
        if wanted is not None:
            check_new_id(wanted)
            yield wanted
            return
        base = slugify(name)
        for n in range(1, MAX_NAME_TRIES + 1):
            candidate = base if n == 1 else f"{base[:58]}-{n}"
            if candidate not in RESERVED_IDS and not (self.folder / candidate).exists():
                yield candidate
        while True:
            yield f"{base}-{uuid.uuid4().hex[:8]}"

    def _read_meta(self, folder: Path) -> dict:
        return self._check_meta(json.loads((folder / META).read_text(encoding="utf-8")), folder.name)

    @staticmethod
    def _check_meta(meta, voice_id: str) -> dict:
        """voice.json as `save` writes it; one edited by hand or written by another tool is unreadable (a
        listing skips it) rather than a listing's 500."""
        if not isinstance(meta, dict) or meta.get("id") != voice_id:
            raise ValueError("metadata does not match its folder")
        meta.setdefault("family", LEGACY_FAMILY)
        for name, types in META_FIELDS.items():
            if not isinstance(meta.get(name), types) or isinstance(meta[name], bool):
                raise ValueError(f"metadata field {name!r} is missing or not a {types[0].__name__}")
        return meta

    def _sweep(self) -> None:
        """Remove what an interrupted write or delete left behind (trash at once: it is unpublished), and
        the temporary codes files `keep_codes` left in voices' folders (never through a link)."""
        for entry in self.folder.iterdir():
            if entry.name.startswith(".trash-") or (entry.name.startswith(".tmp-") and _abandoned(entry)):
                shutil.rmtree(entry, ignore_errors=True)
            elif VOICE_ID.match(entry.name) and entry.is_dir() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    for file in entry.iterdir():
                        if KEPT_CODES_TEMPORARY.fullmatch(file.name) and _abandoned(file):
                            file.unlink()


class PinnedVoice:
    """One saved voice, its folder held open (`VoiceStore.pinned`): what is read and kept through it is that
    voice's even if its id is deleted or saved anew meanwhile. Codes made from its clip then land in the
    deleted folder and go with it; looked up by id again, they would have joined the newer voice."""

    def __init__(self, voice_id: str, meta: dict, folder_fd: int, inside: Callable[[str], bool]):
        """`inside(name)`: the folder's file `name` lies in the voices folder (its own three were checked)."""
        self.voice_id, self.meta, self._fd, self._inside = voice_id, meta, folder_fd, inside

    def codes(self, family: str | None = None) -> np.ndarray | None:
        """Its codes for `family` (default: its own); None where another family's are not made yet."""
        own = family is None or family == self.meta["family"]
        name = CODES if own else family_codes_name(family)
        if not own and not self._inside(name):
            return None  # a link leading out: made again from the clip (and kept over the link, not through it)
        try:
            return np.load(io.BytesIO(_read_at(self._fd, name)), allow_pickle=False)
        except (OSError, ValueError):
            if own:
                raise VoiceNotFound(self.voice_id) from None
            return None  # not made yet, or unreadable: made again from the clip

    def clip(self) -> bytes:
        try:
            return _read_at(self._fd, AUDIO)
        except OSError:
            raise VoiceNotFound(self.voice_id) from None

    def keep_codes(self, family: str, codes: np.ndarray) -> None:
        """Store the codes another family's model made from the clip (written beside, then renamed over)."""
        name = family_codes_name(family)
        staging = _temporary_name(f".{name}")
        try:
            _write_synced(staging, _npy_bytes(codes), dir_fd=self._fd)
            # readers see the old file or the new one, never a part
            os.replace(staging, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            os.fsync(self._fd)
        except OSError as exc:  # (a deleted voice's folder may be gone already)
            log.info("the %s codes of voice %s were not kept: %s", family, self.voice_id, exc)
            with contextlib.suppress(OSError):
                os.unlink(staging, dir_fd=self._fd)


def _temporary_name(prefix: str = "") -> str:
    """`<prefix>.tmp-<host>-<pid>-<random>`: what is written before it is renamed into place (a voice's
    folder, a voice's `.codes.<family>.npy`) is named by its writer, so a sweep can tell it is gone."""
    return f"{prefix}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"


def _abandoned(staging: Path) -> bool:
    """A temporary folder or file whose writer is gone: a dead process of this host, a name without its
    writer (older versions), or any one older than an hour (a write takes seconds)."""
    host, _, pid = staging.name.partition(".tmp-")[2].rpartition("-")[0].rpartition("-")
    try:
        if not pid.isdigit() or time.time() - staging.stat().st_mtime > ABANDONED_AFTER_S:
            return True
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive but not ours to signal, or the folder is gone
        return False
    return False


def family_codes_name(family: str) -> str:
    """Where a voice keeps the codes of a family other than its own (family names are the engine's, not a client's)."""
    if not re.fullmatch(FAMILY_NAME, family):
        raise ValueError(f"invalid model family {family!r}")
    return f"codes.{family}.npy"


def check_new_id(voice_id: str, field: str = "id") -> None:
    """An id a voice may take (ValueError naming the client's `field`: 422)."""
    if not VOICE_ID.match(voice_id):
        raise ValueError(f"{field}: {voice_id!r} is not a voice id (lower-case letters, digits, '-' and '_', up to 64)")
    if voice_id in RESERVED_IDS:
        raise ValueError(f"{field}: {voice_id!r} is reserved (a route of the original server's /v1/references)")


def _meta_bytes(meta: dict) -> bytes:
    return json.dumps(meta, ensure_ascii=False, indent=1).encode()


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:48]
    return slug or "voice"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _write_synced(path: Path | str, data: bytes, dir_fd: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    with open(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _read_at(dir_fd: int, name: str) -> bytes:
    with open(os.open(name, os.O_RDONLY, dir_fd=dir_fd), "rb") as handle:
        return handle.read()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
