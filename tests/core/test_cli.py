"""The command line end to end on tiny checkpoints: the original's four-step flow, `tts`, `g2p`
and clear errors (a message and a non-zero exit, never a traceback)."""

from __future__ import annotations

import fractions
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers import assert_same_pcm, run_cli
from tests.paths import PYTHONPATH


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoints):
    return tiny_checkpoints


def vqgan_args(ckpt):
    return ["--checkpoint-path", ckpt["vqgan"], "--config-name", ckpt["vqgan_config"], "--device", "cpu"]


def lm_args(ckpt):
    return [
        "--checkpoint-path",
        ckpt["lm"],
        "--config-name",
        ckpt["lm_config"],
        "--tokenizer",
        ckpt["tokenizer"],
        "--device",
        "cpu",
    ]


def test_four_step_flow_writes_the_original_files(ckpt, speech_wav, tmp_path):
    # 1. encode the reference clip -> fake.npy [4, T] int64 + fake.wav reconstruction
    result = run_cli(["vqgan", "-i", speech_wav, *vqgan_args(ckpt)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ref_codes = np.load(tmp_path / "fake.npy")
    n_samples = sf.info(speech_wav).frames
    assert ref_codes.dtype == np.int64 and ref_codes.shape == (4, -(-(n_samples // 256) // 4))
    assert ref_codes.min() >= 0 and ref_codes.max() < 160
    info = sf.info(tmp_path / "fake.wav")
    assert info.samplerate == 22050 and info.channels == 1 and info.frames == ref_codes.shape[1] * 1024

    # 2. generate two samples in that voice -> codes_0.npy, codes_1.npy
    result = run_cli(
        [
            "generate",
            "--text",
            "Hello there.",
            "--prompt-text",
            "This is a short reference clip.",
            "--prompt-tokens",
            "fake.npy",
            "--num-samples",
            "2",
            "--max-new-tokens",
            "12",
            "--no-g2p",
            *lm_args(ckpt),
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "tokens/s" in result.stderr
    samples = [np.load(tmp_path / f"codes_{i}.npy") for i in range(2)]
    for codes in samples:
        assert codes.dtype == np.int64 and codes.ndim == 2 and codes.shape[0] == 4
        assert 1 <= codes.shape[1] <= 11
        assert codes.min() >= 0 and codes.max() < 160  # the code mask keeps them decodable

    # 3. decode generated codes -> speech, honouring -o
    result = run_cli(["vqgan", "-i", "codes_0.npy", "-o", "speech.wav", *vqgan_args(ckpt)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    audio, sr = sf.read(tmp_path / "speech.wav")
    assert sr == 22050 and audio.shape == (samples[0].shape[1] * 1024,)
    assert np.abs(audio).max() > 0


def test_generate_without_prompt_tokens_writes_int32_codes(ckpt, tmp_path):
    result = run_cli(["generate", "--text", "你好", "--no-g2p", "--max_new_tokens", "6", *lm_args(ckpt)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    codes = np.load(tmp_path / "codes_0.npy")
    assert codes.dtype == np.int32 and codes.shape[0] == 4


def test_max_new_tokens_one_does_not_crash(ckpt, tmp_path):
    result = run_cli(["generate", "--text", "hi", "--no-g2p", "--max-new-tokens", "1", *lm_args(ckpt)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "codes_0.npy").shape == (4, 0)


@pytest.mark.parametrize("with_reference", [False, True])
@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_tts_speaks_in_one_step(ckpt, speech_wav, tmp_path, with_reference, suffix):
    out = tmp_path / f"out{suffix}"
    reference = (
        ["--reference-audio", speech_wav, "--reference-text", "This is a short reference clip."]
        if with_reference
        else []
    )
    result = run_cli(
        [
            "tts",
            "--text",
            "Good morning.",
            *reference,
            "-o",
            out,
            "--max-new-tokens",
            "10",
            "--no-g2p",
            "--llama-checkpoint-path",
            ckpt["lm"],
            "--llama-config-name",
            ckpt["lm_config"],
            "--vqgan-checkpoint-path",
            ckpt["vqgan"],
            "--vqgan-config-name",
            ckpt["vqgan_config"],
            "--tokenizer",
            ckpt["tokenizer"],
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    audio, sr = sf.read(out)
    assert sr == 22050 and audio.ndim == 1 and audio.size % 1024 == 0 and audio.size > 0
    assert "real-time factor" in result.stderr


def test_tts_reads_its_reference_from_a_pipe(ckpt, speech_wav, tmp_path):
    """README: `--reference-audio` may be a pipe. A look at its header before reading it had taken the header
    away (the file then "not readable"; a FIFO whose writer had gone waited for good)."""
    models = ["--llama-checkpoint-path", ckpt["lm"], "--llama-config-name", ckpt["lm_config"], "--no-g2p"]
    models += ["--vqgan-checkpoint-path", ckpt["vqgan"], "--vqgan-config-name", ckpt["vqgan_config"]]
    models += ["--tokenizer", ckpt["tokenizer"], "--device", "cpu", "--max-new-tokens", "10"]
    args = ["tts", "--text", "Good morning.", "--reference-text", "A short reference clip.", *models]
    from_file = run_cli([*args, "--reference-audio", speech_wav, "-o", "file.wav"], cwd=tmp_path)
    assert from_file.returncode == 0, from_file.stderr
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "HF_HUB_OFFLINE": "1"}
    piped = subprocess.run(
        [sys.executable, "-m", "fishtts", *map(str, args), "--reference-audio", "/dev/stdin", "-o", "pipe.wav"],
        cwd=tmp_path,
        env=env,
        input=speech_wav.read_bytes(),  # (through a pipe: subprocess feeds it)
        capture_output=True,
        timeout=300,
    )
    assert piped.returncode == 0, piped.stderr.decode(errors="replace")
    np.testing.assert_array_equal(sf.read(tmp_path / "pipe.wav")[0], sf.read(tmp_path / "file.wav")[0])


def test_tts_stream_writes_the_same_audio_as_it_comes_and_reports_the_first_audio(ckpt, tmp_path):
    import io
    import os
    import subprocess
    import sys

    command = [
        "tts",
        "--text",
        "Good morning. How are you today? Fine, thanks.",
        "--max-new-tokens",
        "30",
        "--no-g2p",
        "--seed",
        "5",
        "--llama-checkpoint-path",
        ckpt["lm"],
        "--llama-config-name",
        ckpt["lm_config"],
        "--vqgan-checkpoint-path",
        ckpt["vqgan"],
        "--vqgan-config-name",
        ckpt["vqgan_config"],
        "--tokenizer",
        ckpt["tokenizer"],
        "--device",
        "cpu",
    ]
    whole = run_cli([*command, "-o", tmp_path / "whole.wav"])
    streamed = run_cli([*command, "--stream", "-o", tmp_path / "streamed.wav"])
    assert whole.returncode == 0 and streamed.returncode == 0, streamed.stderr
    assert "first audio after" in streamed.stderr and "first audio" not in whole.stderr
    expected, _ = sf.read(tmp_path / "whole.wav", dtype="int16")
    assert_same_pcm(sf.read(tmp_path / "streamed.wav", dtype="int16")[0], expected)

    # `-o -`: a WAV stream on stdout, its length fields "unknown", the same samples
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, HF_HUB_OFFLINE="1")
    to_stdout = subprocess.run(
        [sys.executable, "-m", "core", *map(str, command), "--stream", "-o", "-"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert to_stdout.returncode == 0, to_stdout.stderr.decode()
    assert to_stdout.stdout[:4] == b"RIFF" and to_stdout.stdout[4:8] == b"\xff\xff\xff\xff"
    assert_same_pcm(sf.read(io.BytesIO(to_stdout.stdout), dtype="int16")[0], expected)


def test_g2p_prints_segments_as_json():
    result = run_cli(["g2p", "你好, world!"])
    assert result.returncode == 0, result.stderr
    segments = json.loads(result.stdout)
    assert [s["language"] for s in segments] == ["ZH", "EN"]
    assert segments[0]["phones"][:4] == ["n", "i2", "h", "ao3"]


def test_g2p_with_stdout_closed_fails(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fishtts", "g2p", "hello"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(1),  # (as `>&-` in a shell: it had printed nothing and exited 0)
    )
    assert done.returncode == 1 and "stdout is closed" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_while_the_cli_imports_is_no_traceback(tmp_path):
    """(its imports take ~1.7 s on 2 vCPUs: a Ctrl-C then printed a KeyboardInterrupt traceback)"""
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "fishtts", "--help"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.4)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err and "interrupted" in err, (out, err)


def test_python_m_fishtts_and_console_script_are_the_same_cli():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    via_module = run_cli(["--help"])
    assert via_module.returncode == 0
    for command in ("download", "vqgan", "generate", "tts", "g2p", "serve", "webui"):
        assert command in via_module.stdout
    beside_python = Path(sys.executable).parent / "fishtts"
    script = str(beside_python) if beside_python.exists() else shutil.which("fishtts")
    if script is None:
        pytest.skip("fishtts console script not on PATH (package not installed)")
    if "fishtts.__main__" not in Path(script).read_text(errors="replace"):
        pytest.skip(f"the installed console script {script} predates this tree (core.cli); reinstall to compare")
    via_script = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert via_script.stdout.replace("fishtts", "") == via_module.stdout.replace("fishtts", "")


def _bad_inputs(ckpt, tmp_path):
    (tmp_path / "noise.wav").write_bytes(b"RIFF....WAVEfmt this is not audio")
    np.save(tmp_path / "codes3d.npy", np.zeros((1, 4, 5), dtype=np.int64))
    np.save(tmp_path / "float_codes.npy", np.zeros((4, 5), dtype=np.float32))
    np.save(tmp_path / "out_of_range.npy", np.full((4, 5), 170, dtype=np.int64))
    np.save(tmp_path / "good.npy", np.zeros((4, 5), dtype=np.int64))
    (tmp_path / "not_weights.pth").write_bytes(b"nope")
    (tmp_path / "notes.txt").write_text("hello")
    np.save(tmp_path / "three_codebooks.npy", np.zeros((3, 5), dtype=np.int64))
    np.save(tmp_path / "negative.npy", np.full((4, 5), -1, dtype=np.int64))
    np.save(tmp_path / "past_the_lm.npy", np.full((4, 5), 167, dtype=np.int64))  # the LM reads 0..165
    with open(tmp_path / "archive.npy", "wb") as handle:
        np.savez(handle, codes=np.zeros((4, 5), dtype=np.int64))
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "a-folder.wav").mkdir()
    torch.save({"weight": torch.ones(2), "ratio": fractions.Fraction(1, 2)}, tmp_path / "objects.pth")
    sf.write(tmp_path / "ten_minutes.wav", np.zeros(600, dtype=np.float32), 1)  # 600 samples at 1 Hz
    sf.write(tmp_path / "silence.wav", np.zeros(22050, dtype=np.float32), 22050)

    def prompt_tokens(name: str) -> list:
        return ["generate", "--text", "hi", "--prompt-text", "x", "--prompt-tokens", name, *lm_args(ckpt)]

    models = ["--llama-checkpoint-path", ckpt["lm"], "--llama-config-name", ckpt["lm_config"]]
    models += ["--vqgan-checkpoint-path", ckpt["vqgan"], "--vqgan-config-name", ckpt["vqgan_config"]]
    models += ["--tokenizer", ckpt["tokenizer"], "--device", "cpu"]

    return {
        # (generate loads no VQGAN: the codes are checked against the LM)
        "prompt-tokens-three-codebooks": (prompt_tokens("three_codebooks.npy"), "codes must have shape [4, T]"),
        "prompt-tokens-negative": (prompt_tokens("negative.npy"), "values 0 or more"),
        "prompt-tokens-past-the-lm": (prompt_tokens("past_the_lm.npy"), "the LM's codebooks"),
        "prompt-tokens-npz": (prompt_tokens("archive.npy"), "not a .npy array"),
        "prompt-tokens-empty-file": (prompt_tokens("empty.npy"), "not a .npy array"),
        "missing-vqgan-checkpoint": (
            ["vqgan", "-i", "good.npy", "--checkpoint-path", "missing.pth", "--device", "cpu"],
            "not found",
        ),
        "missing-lm-checkpoint": (
            [
                "generate",
                "--text",
                "hi",
                "--checkpoint-path",
                "missing.pth",
                "--config-name",
                ckpt["lm_config"],
                "--tokenizer",
                ckpt["tokenizer"],
                "--device",
                "cpu",
            ],
            "not found",
        ),
        "non-audio-file": (["vqgan", "-i", "noise.wav", *vqgan_args(ckpt)], "audio"),
        # (refused by its header, before 10 minutes are resampled and encoded for a prompt that cannot fit)
        "reference-past-the-context": (
            ["tts", "--text", "hi", "--reference-audio", "ten_minutes.wav", "--reference-text", "x", *models],
            "what the model's context holds",
        ),
        "silent-reference": (
            ["tts", "--text", "hi", "--reference-audio", "silence.wav", "--reference-text", "x", *models],
            "the reference clip is silent",
        ),
        "unknown-suffix": (["vqgan", "-i", "notes.txt", *vqgan_args(ckpt)], "unknown input type"),
        "codes-wrong-shape": (["vqgan", "-i", "codes3d.npy", *vqgan_args(ckpt)], "codes must be"),
        "codes-not-integers": (["vqgan", "-i", "float_codes.npy", *vqgan_args(ckpt)], "codes must be"),
        "codes-out-of-range": (["vqgan", "-i", "out_of_range.npy", *vqgan_args(ckpt)], "range"),
        "empty-text": (["generate", "--text", "  ", *lm_args(ckpt)], "text is empty"),
        "emoji-only-text": (["generate", "--text", "😀🎉", *lm_args(ckpt)], "nothing to speak"),
        "seed-past-torch": (["generate", "--text", "hi", "--seed", "9" * 20, *lm_args(ckpt)], "not in the range"),
        # (torch's own text for it advises weights_only=False)
        "checkpoint-of-objects": (
            ["generate", "--text", "hi", "--checkpoint-path", "objects.pth", *lm_args(ckpt)[2:]],
            "objects besides tensors (fractions.Fraction)",
        ),
        "not-a-checkpoint": (
            [
                "generate",
                "--text",
                "hi",
                "--checkpoint-path",
                "not_weights.pth",
                "--config-name",
                ckpt["lm_config"],
                "--tokenizer",
                ckpt["tokenizer"],
                "--device",
                "cpu",
            ],
            "not a loadable weights file",
        ),
        "checkpoint-config-mismatch": (
            [
                "generate",
                "--text",
                "hi",
                "--checkpoint-path",
                ckpt["lm"],
                "--tokenizer",
                ckpt["tokenizer"],
                "--device",
                "cpu",
            ],
            "does not fit",
        ),
        "unknown-config": (
            [
                "generate",
                "--text",
                "hi",
                "--checkpoint-path",
                ckpt["lm"],
                "--config-name",
                "nope",
                "--tokenizer",
                ckpt["tokenizer"],
                "--device",
                "cpu",
            ],
            "unknown LM config",
        ),
        "prompt-tokens-wrong-shape": (
            ["generate", "--text", "hi", "--prompt-text", "x", "--prompt-tokens", "codes3d.npy", *lm_args(ckpt)],
            "codes must be",
        ),
        "bad-top-p": (["generate", "--text", "hi", "--top-p", "1.5", *lm_args(ckpt)], "top-p"),
        "cuda-missing": (
            [
                "generate",
                "--text",
                "hi",
                "--checkpoint-path",
                ckpt["lm"],
                "--config-name",
                ckpt["lm_config"],
                "--tokenizer",
                ckpt["tokenizer"],
                "--device",
                "cuda:7",
            ],
            "CUDA",
        ),
        "reference-without-text": (["tts", "--text", "hi", "--reference-audio", "noise.wav"], "go together"),
        # the output is checked before the models load (their missing files would be the message otherwise),
        # not found unwritable after a whole synthesis
        "tts-output-in-a-missing-folder": (
            ["tts", "--text", "hi", "-o", "missing/out.wav", "--llama-checkpoint-path", "missing.pth"],
            "missing is not an existing folder",
        ),
        "vqgan-output-that-is-a-folder": (
            ["vqgan", "-i", "good.npy", "-o", "a-folder.wav", "--checkpoint-path", "missing.pth"],
            "a-folder.wav is a folder",
        ),
        "generate-output-folder-under-a-file": (  # (it had failed after the whole generation)
            ["generate", "--text", "hi", "--output-dir", "notes.txt/sub", "--checkpoint-path", "missing.pth"],
            "cannot make the output folder notes.txt/sub",
        ),
    }


def test_bad_input_gets_a_clear_message_and_nonzero_exit(ckpt, tmp_path):
    failures = []
    for name, (args, message) in _bad_inputs(ckpt, tmp_path).items():
        result = run_cli(args, cwd=tmp_path)
        if result.returncode == 0 or "Traceback" in result.stderr or message.lower() not in result.stderr.lower():
            failures.append(f"{name}: rc={result.returncode} stderr={result.stderr[-400:]!r}")
    assert not failures, "\n".join(failures)


def test_the_official_files_are_looked_for_in_fishtts_checkpoints_dir(tmp_path):
    from tests.server.helpers import make_workdir

    folder = make_workdir(tmp_path / "work") / "checkpoints"  # the tiny models under the official names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    configs = ["--llama-config-name", folder / "llama.json", "--vqgan-config-name", folder / "vqgan_config.json"]
    args = ["tts", "--text", "hi", "-o", "out.wav", *configs, "--max-new-tokens", "8", "--no-g2p", "--device", "cpu"]
    result = run_cli(args, cwd=elsewhere, env={"FISHTTS_CHECKPOINTS_DIR": str(folder)})
    assert result.returncode == 0, result.stderr
    assert sf.info(elsewhere / "out.wav").frames > 0  # the LM, the VQGAN and the tokenizer all found there
    result = run_cli(args, cwd=elsewhere, env={"FISHTTS_CHECKPOINTS_DIR": ""})  # unset: ./checkpoints
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "checkpoints/text2semantic-400m-v0.2-4k.pth" in result.stderr


def test_vqgan_checks_the_output_suffix_before_writing_the_codes_beside_it(ckpt, speech_wav, tmp_path):
    (tmp_path / "out.npy").write_text("precious")
    result = run_cli(["vqgan", "-i", speech_wav, "-o", "out.txt", *vqgan_args(ckpt)], cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "audio format" in result.stderr
    assert (tmp_path / "out.npy").read_text() == "precious"


def test_tts_to_a_closed_stdout_says_so(ckpt, tmp_path):
    models = ["--llama-checkpoint-path", ckpt["lm"], "--llama-config-name", ckpt["lm_config"]]
    models += ["--vqgan-checkpoint-path", ckpt["vqgan"], "--vqgan-config-name", ckpt["vqgan_config"]]
    args = ["tts", "--text", "hi", "-o", "-", *models, "--tokenizer", ckpt["tokenizer"], "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "fishtts", *map(str, args)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": PYTHONPATH, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.close(1),  # (as `>&-` in a shell)
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr and "stdout is closed" in done.stderr


def test_tts_to_stdout_that_stops_reading_fails_even_unbuffered(ckpt, tmp_path):
    """With PYTHONUNBUFFERED (many container images), stdout's buffer is a raw file that takes only what
    the pipe has room for: the rest of the audio was dropped, and the CLI said it saved it all."""
    models = ["--llama-checkpoint-path", ckpt["lm"], "--llama-config-name", ckpt["lm_config"]]
    models += ["--vqgan-checkpoint-path", ckpt["vqgan"], "--vqgan-config-name", ckpt["vqgan_config"]]
    text = "This is a sentence that makes more audio than a pipe holds."
    args = ["tts", "--text", text, "--max-new-tokens", "60", "--seed", "1", "-o", "-", *models]
    process = subprocess.Popen(
        [sys.executable, "-m", "fishtts", *map(str, args), "--tokenizer", ckpt["tokenizer"], "--device", "cpu"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": PYTHONPATH, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout.read(100)[:4] == b"RIFF"
    process.stdout.close()  # the reader goes away, as `| head -c 100`
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and b"Broken pipe" in stderr and b"Saved" not in stderr, stderr[-400:]


@pytest.mark.parametrize("flag, compile", [("--compile", True), ("--no-compile", False)])
def test_tts_passes_compile_to_an_s1_model(tmp_path, monkeypatch, flag, compile):
    """`tts --model FOLDER --compile` captures S1-mini's decode on CUDA, as the server's `compile` does (it had
    been dropped silently). The loader is a stand-in that records what it was asked for."""
    from click.testing import CliRunner

    from core.cli import main
    from core.engine import TTSEngine

    asked = {}

    def load_s1(folder, **options):
        asked.update(options)
        raise SystemExit(3)  # (nothing to load: what the CLI asked for is what is checked)

    monkeypatch.setattr(TTSEngine, "load_s1", load_s1)
    args = ["tts", "--model", str(tmp_path), "--text", "hi", "-o", str(tmp_path / "out.wav"), flag]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output
    assert asked["compile"] is compile


def test_generate_help_shows_no_s1_defaults_it_has_no_model_for():
    """`generate` reads v0.2 checkpoints only (no --model): its help gives v0.2's sampling defaults alone (it had
    said "0.8 with --model", and `--model` is not one of its options)."""
    from click.testing import CliRunner

    from core.cli import main

    generate, tts = (CliRunner().invoke(main, [name, "--help"]).output for name in ("generate", "tts"))
    assert "--model" not in generate
    assert "[default: 0.5]" in generate and "[default: 0.7]" in generate and "[default: 1.5]" in generate
    assert "0.8 with --model" in tts  # (tts takes --model)
