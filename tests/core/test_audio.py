"""Audio I/O: any format in, 22050 Hz mono float32 out; wav/flac/ogg/mp3 out; clear errors."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest
import soundfile as sf

from core import audio
from core.audio import SAMPLE_RATE, UNKNOWN_LENGTH, AudioError, encode_audio, load_audio, write_audio


def tone(seconds: float = 1.0, sr: int = SAMPLE_RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def test_wav_round_trip_is_pcm16_exact_to_one_lsb():
    audio = tone()
    data = encode_audio(audio, SAMPLE_RATE, "wav")
    assert sf.info(io.BytesIO(data)).subtype == "PCM_16"
    back = load_audio(data)
    assert back.dtype == np.float32 and back.shape == audio.shape
    assert np.abs(back - audio).max() <= 1 / 32767


def test_flac_round_trip_is_lossless_at_16_bit():
    audio = tone()
    back = load_audio(encode_audio(audio, SAMPLE_RATE, "flac"))
    assert back.shape == audio.shape and np.abs(back - audio).max() <= 1 / 32767


def flac_of_undeclared_length(audio: np.ndarray) -> bytes:
    """A FLAC whose STREAMINFO leaves the total sample count 0, "unknown": what ffmpeg writes to a pipe."""
    data = bytearray(encode_audio(audio, SAMPLE_RATE, "flac"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    data[8 + 13] &= 0xF0  # its 36-bit sample count: the low 4 bits of byte 13 and bytes 14-17
    data[8 + 14 : 8 + 18] = bytes(4)
    return bytes(data)


def test_a_flac_that_does_not_declare_its_length_is_read_whole():
    """(libsndfile reports 2**63 - 1 frames, and soundfile's read failed past 65,536 of them: 'not a
    readable audio file', or a reference 4e14 s long)"""
    audio = tone(4.0)
    data = flac_of_undeclared_length(audio)
    assert sf.info(io.BytesIO(data)).frames == UNKNOWN_LENGTH
    assert np.array_equal(load_audio(data), load_audio(encode_audio(audio, SAMPLE_RATE, "flac")))


def test_a_reference_of_undeclared_length_is_read_only_just_past_the_limit(monkeypatch):
    from core.reference import read_reference_audio
    from core.request import Reference

    data = flac_of_undeclared_length(tone(30.0))
    read = []
    monkeypatch.setattr(audio, "_read_mono", lambda f, n, _read=audio._read_mono: read.append(n) or _read(f, n))
    with pytest.raises(ValueError, match=r"reference_audio: the reference clip is [0-9.]+ s long; the limit is 2 s"):
        read_reference_audio(Reference("reference_audio", audio=data, max_seconds=2.0), SAMPLE_RATE)
    assert read == [2 * SAMPLE_RATE]


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_lossy_round_trip_keeps_the_signal(fmt):
    audio = tone()
    data = encode_audio(audio, SAMPLE_RATE, fmt)
    back = load_audio(data)
    assert back.dtype == np.float32
    assert abs(len(back) - len(audio)) <= 2048  # encoder delay / frame padding
    # mp3 has an encoder delay: compare against the best-aligned shift.
    best = max(correlation(back[s:], audio) for s in range(0, 2048, 1))
    assert best > 0.95


def test_write_audio_picks_the_format_from_the_suffix(tmp_path):
    audio = tone(0.5)
    for fmt, container in [("wav", "WAV"), ("flac", "FLAC"), ("ogg", "OGG"), ("mp3", "MP3")]:
        path = write_audio(tmp_path / f"out.{fmt.upper()}", audio, SAMPLE_RATE)
        assert sf.info(str(path)).format == container
        assert len(load_audio(path)) > 0


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(freq=440.0), tone(freq=660.0)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


def test_many_channels_are_mixed_block_by_block_exactly(tmp_path):
    """The channels' mean is taken as each block is read: the [frames, channels] array never lies in memory
    whole (a small Ogg file of 64 channels held 1.4 GB), and the samples are the whole array's mean, bit
    for bit."""
    import tracemalloc

    channels = np.random.default_rng(0).uniform(-0.5, 0.5, size=(200_000, 24)).astype(np.float32)
    path = tmp_path / "wide.wav"
    sf.write(path, channels, 48000, subtype="FLOAT")
    tracemalloc.start()
    try:
        samples, rate = audio.read_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rate == 48000
    assert np.array_equal(samples, channels.mean(axis=1, dtype=np.float32))
    assert peak < channels.nbytes / 2  # (19 MB whole; the mono samples 0.8 MB and one 6 MB block)


def test_replacing_a_file_follows_its_link_and_keeps_its_permissions(tmp_path):
    """(the link itself had been replaced by a new file, and a private 0600 file had become 0644)"""
    from core.audio import replace_file

    (tmp_path / "real.wav").write_bytes(b"old")
    os.chmod(tmp_path / "real.wav", 0o600)
    (tmp_path / "link.wav").symlink_to("real.wav")
    replace_file(tmp_path / "link.wav", b"new")
    assert (tmp_path / "link.wav").is_symlink() and (tmp_path / "real.wav").read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(tmp_path / "real.wav").st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.wav", "real.wav"]


def test_an_endless_pipe_is_refused_not_read_until_memory_runs_out(monkeypatch):
    monkeypatch.setattr(audio, "MAX_PIPE_BYTES", 2**20)
    with pytest.raises(AudioError, match="gave more than 1 MiB; is it an endless stream"):
        audio.read_audio("/dev/zero")


def test_a_flac_cut_short_is_refused_not_read_as_a_shorter_clip():
    """(libsndfile's read returns what it decoded before the damage and flags the error: the block reader must
    look, as soundfile's own read does)"""
    data = encode_audio(tone(5.0), SAMPLE_RATE, "flac")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(data[: len(data) // 2])


def test_a_reference_wider_than_the_decode_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    from core.reference import MAX_DECODED_RATE, read_reference_audio
    from core.request import Reference

    path = tmp_path / "wide.ogg"
    sf.write(path, np.zeros((4800, 64), np.float32), 48000, format="OGG", subtype="VORBIS")
    assert 64 * 48000 > MAX_DECODED_RATE
    monkeypatch.setattr(audio, "_read_mono", lambda *args: pytest.fail("decoded"))
    with pytest.raises(ValueError, match=r"clip: the clip has 64 channels at 48000 Hz, over the 1,536,000 samples"):
        read_reference_audio(Reference("clip", audio=path.read_bytes(), max_seconds=30.0), SAMPLE_RATE)


@pytest.mark.parametrize("rate, n", [(16000, 16001), (44100, 44100), (48000, 12345), (8000, 1000)])
def test_resampling_gives_librosa_length(tmp_path, rate, n):
    path = tmp_path / "in.wav"
    sf.write(path, tone(n / rate, rate, 300.0)[:n], rate, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert len(audio) == int(np.ceil(n * SAMPLE_RATE / rate))


def test_resampled_tone_keeps_its_pitch(tmp_path):
    path = tmp_path / "in.flac"
    sf.write(path, tone(1.0, 44100, 1000.0), 44100)
    audio = load_audio(path)
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(audio)
    assert abs(peak_hz - 1000.0) < 2.0


def test_other_target_rate_is_honoured():
    assert len(load_audio(encode_audio(tone(1.0), SAMPLE_RATE, "wav"), sample_rate=16000)) == 16000


@pytest.mark.parametrize("data", [b"this is not audio at all" * 10, b"RIFF\x00\x00\x00\x00WAVEjunk", b"\x00" * 1000])
def test_garbage_bytes_raise_audio_error(data):
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(data)


def test_empty_inputs_raise_audio_error(tmp_path):
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"")
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(path)


def test_a_pipe_is_read_like_a_file(tmp_path):
    """(`--reference-audio <(ffmpeg ...)` or /dev/stdin: "audio file not found: /dev/fd/63")"""
    import os
    import threading

    clip = tone(2.0)
    pipe = tmp_path / "pipe.wav"
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_bytes, args=(encode_audio(clip, SAMPLE_RATE, "wav"),))
    writer.start()
    back = load_audio(pipe)
    writer.join(10)
    assert back.shape == clip.shape and np.abs(back - clip).max() <= 1 / 32767


def test_missing_file_raises_audio_error(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


def test_unsupported_output_format_raises_audio_error(tmp_path):
    with pytest.raises(AudioError, match="unsupported audio format"):
        encode_audio(tone(0.1), SAMPLE_RATE, "aac")
    with pytest.raises(AudioError, match="suffix"):
        write_audio(tmp_path / "out.m4a", tone(0.1), SAMPLE_RATE)
    with pytest.raises(AudioError, match="mono"):
        encode_audio(np.zeros((2, 100), np.float32), SAMPLE_RATE, "wav")


def test_out_of_range_samples_are_clipped_not_wrapped():
    back = load_audio(encode_audio(np.array([1.5, -1.5, 0.25] * 100, np.float32), SAMPLE_RATE, "wav"))
    assert back[0] > 0.99 and back[1] < -0.99


NON_FINITE = """
import io, sys
import numpy as np, soundfile as sf
from core.audio import encode_output
x = (0.5 * np.sin(np.arange(4410) / 10)).astype(np.float32)
x[100], x[200], x[300] = np.nan, np.inf, -np.inf
data = encode_output(x, sys.argv[1], 22050)
if sys.argv[1] == "pcm":
    print(np.frombuffer(data, "<i2")[[100, 200, 300]].tolist())
else:
    y, rate = sf.read(io.BytesIO(data))
    print(bool(np.isfinite(y).all()), rate)
"""


@pytest.mark.parametrize("fmt", ["mp3", "flac", "ogg", "wav", "pcm"])
def test_non_finite_samples_are_written_as_silence_or_full_scale(fmt):
    """In a child process: LAME aborted the process on a NaN (a server, with every request in it)."""
    import subprocess
    import sys

    from tests.paths import process_env

    done = subprocess.run(
        [sys.executable, "-c", NON_FINITE, fmt], capture_output=True, text=True, timeout=120, env=process_env()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "[0, 32767, -32768]" if fmt == "pcm" else "True 22050"
    assert done.stdout.strip() == expected and "non-finite" in done.stderr


def test_long_ogg_output_does_not_crash_the_encoder():
    """libsndfile's Vorbis encoder segfaulted on one >2M-frame write; we write in blocks."""
    t = np.arange(120 * 22050, dtype=np.float32) / 22050
    data = encode_audio(0.3 * np.sin(2 * np.pi * 220 * t), 22050, "ogg")
    decoded, rate = sf.read(io.BytesIO(data))
    assert rate == 22050 and decoded.shape == t.shape


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    """The CLI's outputs are written beside and renamed over the old file: a full disk (here: the rename
    failing as ENOSPC would) keeps what the user had."""
    target = tmp_path / "keep.wav"
    target.write_bytes(b"the user's file")

    def full_disk(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        audio.write_audio(target, np.zeros(2205, dtype=np.float32))
    assert target.read_bytes() == b"the user's file" and sorted(tmp_path.iterdir()) == [target]
    monkeypatch.undo()
    audio.write_audio(target, np.zeros(2205, dtype=np.float32))
    assert sf.info(target).frames == 2205 and sorted(tmp_path.iterdir()) == [target]


WRITE_IN_CHUNKS = """
import resource, signal, sys
import numpy as np
from core.audio import AudioWriter
path, fmt, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
if limit:  # (a file-size limit stands in for a full disk: writes past it fail with EFBIG)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
noise = (np.random.default_rng(0).standard_normal(5 * 22050) * 0.2).astype(np.float32)
writer = AudioWriter(path, fmt, 22050)
for start in range(0, noise.size, 8192):
    writer.write(noise[start : start + 8192])
writer.close()
"""


@pytest.mark.parametrize("fmt", ["ogg", "flac", "wav", "mp3"])
def test_a_file_written_in_chunks_onto_a_full_disk_is_an_error(tmp_path, fmt):
    """libsndfile's Vorbis writer drops the errors of its last pages: a streamed ogg on a full disk was cut
    short with no error (and the CLI said "Saved")."""
    import subprocess
    import sys

    from tests.paths import PYTHONPATH

    def write(limit: int) -> subprocess.CompletedProcess:
        path = tmp_path / f"out-{limit}.{fmt}"
        argv = [sys.executable, "-c", WRITE_IN_CHUNKS, str(path), fmt, str(limit)]
        return subprocess.run(argv, env={**os.environ, "PYTHONPATH": PYTHONPATH}, capture_output=True, text=True)

    whole = write(0)
    assert whole.returncode == 0, whole.stderr
    size = (tmp_path / f"out-0.{fmt}").stat().st_size
    cut = write(size - 600)  # (within the last pages, which an ogg writes as it closes)
    assert cut.returncode != 0 and "AudioError" in cut.stderr, cut.stderr[-500:]
