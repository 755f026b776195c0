"""Read any common audio format as 22050 Hz mono float32, and write wav/flac/ogg/mp3.

Loading mirrors what the original got from `librosa.load(sr=22050, mono=True)`: soundfile
decode to float32, average the channels, then soxr "HQ" resampling (librosa's default).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 22050

# format name -> (libsndfile container, subtype); wav is PCM_16 like the original's soundfile default.
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


class AudioError(ValueError):
    """Audio that cannot be read or written (not audio, empty, unsupported format)."""


UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's length of a stream that does not declare it (FLAC written to a pipe)


def load_audio(source: str | os.PathLike | bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file path or encoded bytes to mono float32 samples at `sample_rate`."""
    audio, source_rate = read_audio(source)
    return audio if source_rate == sample_rate else resample(audio, source_rate, sample_rate)


def read_audio(source: str | os.PathLike | bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes to mono float32 samples at the file's own rate: (samples, rate).
    `max_seconds`: a stream that does not declare its length is read no further than just past it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("audio is empty (0 bytes)")
        name, handle = "audio data", io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.exists() or path.is_dir():
            raise AudioError(f"audio file not found: {path}")
        # a pipe (/dev/stdin, a shell's <(...)) is read whole first: libsndfile seeks in what it reads
        name, handle = path.name, (path if path.is_file() else io.BytesIO(_read_pipe(path)))
    try:
        with sf.SoundFile(handle) as file:
            undeclared = file.frames == UNKNOWN_LENGTH
            max_frames = None if max_seconds is None or not undeclared else int(max_seconds * file.samplerate)
            audio, source_rate = _read_mono(file, max_frames), file.samplerate
    except Exception:  # noqa: BLE001 - libsndfile raises several types; all mean "cannot decode"
        raise AudioError(f"{name} is not a readable audio file (supported: wav, flac, ogg, mp3)") from None
    if audio.size == 0:
        raise AudioError(f"{name} contains no audio samples")
    if not np.isfinite(audio).all():
        raise AudioError(f"{name} contains NaN or infinite samples")
    return audio, int(source_rate)


MAX_PIPE_BYTES = 2**30  # read from a pipe or device at most (/dev/zero had grown to 21 GB and the OOM killer)


def _read_pipe(path: Path) -> bytes:
    with open(path, "rb") as pipe:
        data = pipe.read(MAX_PIPE_BYTES + 1)
    if len(data) > MAX_PIPE_BYTES:
        raise AudioError(f"{path} gave more than {MAX_PIPE_BYTES // 2**20} MiB; is it an endless stream?")
    return data


def _read_mono(file: sf.SoundFile, max_frames: int | None, block: int = 65536) -> np.ndarray:
    """The channels' mean, read block by block to the end (or just past `max_frames`): a file of many channels
    never lies in memory whole (64 channels of 30 s took 1.4 GB). soundfile's own read seeks after each block,
    which libsndfile refuses past the first 65,536 frames of a stream that does not declare its length (FLAC
    written to a pipe), so this calls libsndfile's read directly."""
    from soundfile import _ffi, _snd  # (soundfile's binding to libsndfile)

    blocks, total = [], 0
    out = np.empty((block, file.channels), dtype=np.float32)
    while max_frames is None or total <= max_frames:
        count = _snd.sf_readf_float(file._file, _ffi.cast("float *", _ffi.from_buffer(out)), block)
        blocks.append(out[:count].mean(axis=1, dtype=np.float32) if file.channels > 1 else out[:count, 0].copy())
        total += count
        if count < block:
            break
    if _snd.sf_error(file._file):  # (a file cut short or damaged midway: what soundfile's own read raises on)
        raise AudioError(_ffi.string(_snd.sf_strerror(file._file)).decode("utf-8", "replace"))
    return np.concatenate(blocks)


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """soxr HQ, then zero-pad / trim to ceil(N * target / source) samples as librosa does."""
    out = soxr.resample(audio, source_rate, target_rate, quality="HQ")
    n = int(np.ceil(audio.shape[-1] * (float(target_rate) / source_rate)))
    return out[:n] if out.shape[-1] >= n else np.pad(out, (0, n - out.shape[-1]))


def input_samples(audio, field: str) -> np.ndarray:
    """Samples a caller gives as an array: floating point (integer PCM would be read 32767x too loud), mono (dims
    of size 1 dropped), non-empty and finite; as contiguous float32."""
    audio = np.asarray(audio)
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"{field}: samples must be floating point in [-1, 1], got {audio.dtype} (scale integer PCM)")
    audio = _mono_samples(audio, field)
    if not np.isfinite(audio).all():
        raise AudioError(f"{field}: the clip contains NaN or infinite samples")
    return np.ascontiguousarray(audio)


def _mono_samples(audio, field: str | None = None) -> np.ndarray:
    """`audio` as 1-D float32 (dims of size 1 dropped; one sample stays an array), non-empty."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 and sum(size > 1 for size in audio.shape) <= 1:
        audio = audio.reshape(-1)
    if audio.ndim != 1 or audio.size == 0:
        where = f"{field}: " if field else ""
        raise AudioError(f"{where}expected non-empty mono samples, got shape {np.shape(audio)}")
    return audio


def _output_samples(audio: np.ndarray) -> np.ndarray:
    """Samples as written out: clipped to [-1, 1], so integer subtypes never wrap around; NaN as silence and
    infinities as full scale, since LAME aborts the process on a NaN (every request with it)."""
    samples = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(samples).all():
        logging.getLogger(__name__).warning(
            "audio with %d non-finite samples: written as silence / full scale", (~np.isfinite(samples)).sum()
        )
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(samples, -1.0, 1.0)


def audio_format(format: str) -> tuple[str, str]:
    """(container, subtype) for a format name or suffix; AudioError for others."""
    fmt = format.lower().lstrip(".")
    if fmt not in FORMATS:
        raise AudioError(f"unsupported audio format {format!r}: use one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


class AudioWriter:
    """Mono float chunks in [-1, 1] to a file path or binary buffer as wav (PCM_16), flac, ogg or mp3,
    written as they come (so a growing file can already be played)."""

    BLOCK = 65536  # one huge Vorbis write (> ~2M frames) segfaults libsndfile

    def __init__(self, target, format: str, sample_rate: int = SAMPLE_RATE):
        container, subtype = audio_format(format)
        self.path = target if isinstance(target, (str, os.PathLike)) else None
        # A regular file is written through our own writes, which see every failure: libsndfile's Vorbis and
        # MP3 encoders drop those of some pages (a full disk left an ogg or mp3 cut short, and no error).
        self.sink = _CheckedFile(target) if self.path is not None and _regular_or_new(target) else None
        try:
            self.file = sf.SoundFile(self.sink or target, "w", sample_rate, 1, format=container, subtype=subtype)
        except Exception as exc:  # noqa: BLE001
            if self.sink is not None:
                self.sink.close()
            raise AudioError(f"cannot write {format} at {sample_rate} Hz: {exc}") from None

    def write(self, audio: np.ndarray) -> None:
        samples = _output_samples(_mono_samples(audio))
        try:
            for start in range(0, samples.size, self.BLOCK):
                self.file.write(samples[start : start + self.BLOCK])
        except (sf.LibsndfileError, AssertionError) as exc:  # (soundfile asserts a short write away)
            raise self._failed(exc) from None
        self._check_sink()

    def close(self) -> None:
        try:
            self.file.close()
        except sf.LibsndfileError as exc:
            raise self._failed(exc) from None
        finally:
            if self.sink is not None:
                self.sink.close()
        self._check_sink()

    def _check_sink(self) -> None:
        if self.sink is not None and self.sink.error is not None:
            raise self._failed(self.sink.error)

    def _failed(self, exc: Exception) -> AudioError:
        """The error to raise, once the file is let go (its writer would otherwise write on at exit)."""
        if self.sink is not None:
            exc = self.sink.error or exc
            with contextlib.suppress(Exception):
                self.file.close()
            self.sink.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{exc} (is the disk full?)"
        return AudioError(f"cannot write {self.path or 'the audio'}: {reason}")


def _regular_or_new(path) -> bool:
    return not os.path.exists(path) or os.path.isfile(path)


class _CheckedFile:
    """A file for libsndfile's virtual I/O that writes all it is given or remembers why it could not."""

    def __init__(self, path):
        self.file = open(path, "wb", buffering=0)  # noqa: SIM115 - (closed by AudioWriter.close)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view, written = memoryview(data), 0
        while view and self.error is None:
            try:
                n = self.file.write(view)  # (a full disk: a short write, then ENOSPC)
            except OSError as exc:
                self.error = exc
                break
            written, view = written + n, view[n:]
        return written

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    def close(self) -> None:
        self.file.close()


def encode_audio(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, format: str = "wav") -> bytes:
    """Encode mono float samples in [-1, 1] as wav (PCM_16), flac, ogg (Vorbis) or mp3 bytes."""
    buffer = io.BytesIO()
    writer = AudioWriter(buffer, format, sample_rate)
    try:
        writer.write(audio)
        writer.close()
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise AudioError(f"cannot encode {format} at {sample_rate} Hz: {exc}") from None
    return buffer.getvalue()


def encode_output(audio: np.ndarray, format: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """`encode_audio`'s formats, plus pcm: OpenAI's raw format (16-bit little-endian mono)."""
    return pcm16_bytes(audio) if format == "pcm" else encode_audio(audio, sample_rate, format)


def pcm16_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Raw 16-bit little-endian mono PCM, converted exactly as the wav format's samples are."""
    samples = _output_samples(np.asarray(audio, dtype=np.float32).reshape(-1))
    if samples.size == 0:
        return b""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", sample_rate, 1, format="RAW", subtype="PCM_16", endian="LITTLE") as out:
        out.write(samples)
    return buffer.getvalue()


def streaming_wav_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length: its size fields are the maximum
    (0xFFFFFFFF), which streaming players read as "until the data ends"."""
    block = 2  # one channel of 16-bit samples
    return (
        b"RIFF"
        + (0xFFFFFFFF).to_bytes(4, "little")
        + b"WAVE"
        + b"fmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + sample_rate.to_bytes(4, "little")
        + (sample_rate * block).to_bytes(4, "little")
        + block.to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + (0xFFFFFFFF).to_bytes(4, "little")
    )


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write samples to `path`, the format chosen by its suffix (.wav/.flac/.ogg/.mp3), replacing it whole."""
    path = Path(path)
    replace_file(path, encode_audio(audio, sample_rate, suffix_format(path)))
    return path


def replace_file(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a file beside `path`, then rename it over `path`: a write that fails (a full disk,
    Ctrl-C) leaves what was at `path` as it was, and no partial file. The partial file's name is its own,
    so two runs writing the same file do not write into one partial file (one of them failed)."""
    path = Path(os.path.realpath(path))  # (a link is followed, as a plain open would: the link stays)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        # (O_EXCL: never another's; mode 0666 less the umask, as a plain open gives)
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(data)
        try:
            os.chmod(partial, os.stat(path).st_mode & 0o7777)  # an existing file keeps its permissions
        except FileNotFoundError:
            pass
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike) -> None:
    """AudioError unless a file can be written at `path`: checked before the work that makes it, not
    after a synthesis of minutes."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path} is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise AudioError(f"cannot write {path}: {folder} is not an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AudioError(f"cannot write {path}: the folder {folder} is not writable")


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` as the bytes of a .npy file (for `replace_file`)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def suffix_format(path: str | os.PathLike) -> str:
    """The audio format a file name asks for (.wav/.flac/.ogg/.mp3); AudioError for others."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise AudioError(f"cannot tell the audio format of {path.name}: use a .wav, .flac, .ogg or .mp3 suffix")
    return fmt
