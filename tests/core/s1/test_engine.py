"""S1-mini behind the engine's door: the same TTSEngine calls as v0.2 give the original's prompts and frames,
run through the batch scheduler, and stream audio equal to the one-shot decode."""

from __future__ import annotations

import numpy as np
import pytest

from core.engine import S1_FAMILY, Cancelled, SynthesisRequest, TTSEngine
from core.lm.sampling import SamplingParams
from core.request import Reference
from core.s1.codec.chunks import ENCODE_CHUNK_FRAMES
from tests.helpers import frames_beside

from .support import (
    GENERATION_CASES,
    MAX_NEW_FRAMES,
    REF_TEXT,
    S1_CHECKPOINT,
    TARGET_TEXT,
    assert_close,
    dual_ar_cases,
)


@pytest.fixture(scope="module")
def engine():
    engine = TTSEngine.load_s1(S1_CHECKPOINT, device="cpu", max_batch_size=4)
    yield engine
    engine.close()


def case_request(name: str, **changes) -> SynthesisRequest:
    seed, temperature, top_p, penalty = GENERATION_CASES[name]
    fields = dict(
        text=TARGET_TEXT,
        transcript=REF_TEXT,
        reference=Reference("reference", codes=dual_ar_cases()["ref_codes"]),
        sampling=SamplingParams(temperature=temperature, top_p=top_p, repetition_penalty=penalty),
        max_frames=MAX_NEW_FRAMES,
        seed=seed,
    )
    return SynthesisRequest(**{**fields, **changes})


def test_info_describes_the_s1_folder(engine):
    info = engine.info
    codec_rows = dual_ar_cases()["ref_codes"].shape[0]
    assert (info.family, info.phonemes, info.num_codebooks) == (S1_FAMILY, False, codec_rows)
    codec = engine.family.codec  # the golden folder's small codec (the real one: 44,100 Hz, 2048 samples a frame)
    assert info.sample_rate == codec.sample_rate and info.frame_rate == pytest.approx(
        codec.sample_rate / codec.frame_length
    )
    assert info.quantize == "none" and info.precision == "float32" and info.context > MAX_NEW_FRAMES
    # float32 linears take the autotuned decode paths too (core/lm/paths.py), so they are reported, with the
    # slow stack's prompt attention (core/lm/prefill_attention.py)
    assert set(info.lm_paths) == {"float32"}
    assert set(info.lm_paths["float32"]) == {"decode", "batch_decode", "prefill", "prefill_attention"}


def test_the_prompt_is_the_originals(engine):
    np.testing.assert_array_equal(engine.encode_prompt(case_request("greedy")).numpy(), dual_ar_cases()["prompt"])


def test_concurrent_generations_through_the_scheduler_give_the_originals_codes(engine):
    """Every golden case at once (the scheduler batches them); the budget-run cases keep their last frame,
    which the original dropped (a documented fix), so the golden codes are ours minus the last column."""
    import threading

    cases, results = dual_ar_cases(), {}

    def run(name: str) -> None:
        results[name] = engine.generate_codes(case_request(name))[0]

    threads = [threading.Thread(target=run, args=(name,)) for name in GENERATION_CASES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for name in GENERATION_CASES:
        golden = cases[f"gen_{name}_codes"]
        stopped = cases[f"gen_{name}_tokens"].shape[1] < MAX_NEW_FRAMES
        ours = results[name] if stopped else results[name][:, :-1]
        np.testing.assert_array_equal(ours, golden, err_msg=name)


def test_streamed_audio_is_the_one_shot_decode_of_the_codes(engine):
    request = case_request("sample_seed42_cli")
    codes = engine.generate_codes(request)[0]
    stream = engine.stream(request)
    chunks = list(stream)
    assert len(chunks) > 1 and stream.sample_rate == engine.info.sample_rate
    audio = np.concatenate(chunks)
    assert audio.size == codes.shape[1] * engine.family.codec.frame_length
    assert_close(audio, engine.family.decode(codes))  # (the codec in one piece)
    assert_close(engine.decode_codes(codes), audio)
    np.testing.assert_array_equal(engine.synthesize(request), audio)


def test_reference_audio_is_encoded_by_the_s1_codec(engine):
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(engine.info.sample_rate)).astype(np.float32)
    codes = engine.encode_reference(audio)
    assert codes.shape == (engine.info.num_codebooks, -(-audio.size // engine.family.codec.frame_length))
    np.testing.assert_array_equal(codes, engine.family.encode(audio))  # (chunked: the one-piece codes)
    request = case_request("greedy", reference=Reference("reference", audio=audio), max_frames=4)
    assert engine.generate_codes(request)[0].shape[0] == engine.info.num_codebooks


def test_a_long_reference_encodes_in_chunks_between_the_generation_steps(engine):
    """A new voice's clip was encoded in one scheduler task: on the official codec about 19 s for a 30 s
    clip, with every generation on the model standing still."""
    rng = np.random.default_rng(1)
    frames = 24 * ENCODE_CHUNK_FRAMES
    audio = (0.1 * rng.standard_normal(frames * engine.family.codec.frame_length)).astype(np.float32)
    request = case_request("greedy", max_frames=40)
    codes, generated = frames_beside(engine, lambda: engine.encode_reference(audio), request)
    assert generated >= 20  # 24 chunks, a step before each (one task: the prefill and a step, 2 frames)
    np.testing.assert_array_equal(codes, engine.family.encode(audio))


def test_a_reference_of_one_sample_encodes_to_one_frame(engine):
    """(It was refused as "expected non-empty finite mono samples": the sample squeezed to a 0-d array.)"""
    codes = engine.encode_reference(np.array([0.1], dtype=np.float32))
    assert codes.shape == (engine.info.num_codebooks, 1)
    np.testing.assert_array_equal(codes, engine.encode_reference(np.array([0.1, 0.0], dtype=np.float32)))


def test_a_reference_encode_stops_between_chunks_when_told(engine):
    audio = np.zeros(8 * ENCODE_CHUNK_FRAMES * engine.family.codec.frame_length, dtype=np.float32)
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 2

    with pytest.raises(Cancelled):
        engine.encode_reference(audio, stop)
    assert len(asked) == 3  # asked before each chunk: two ran, the third was not started


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        (SamplingParams(top_k=5), "top_k"),
        (SamplingParams(temperature=3.0), "temperature"),
        (SamplingParams(repetition_penalty=2.5), "repetition_penalty"),
    ],
)
def test_sampling_outside_s1s_rules_is_refused_naming_the_field(engine, sampling, message):
    with pytest.raises(ValueError, match=f"^{message}:"):
        engine.generate_codes(case_request("greedy", sampling=sampling))


def test_a_text_past_the_context_says_to_shorten_it(engine):
    """S1-mini reads a text whole ("prompt of 2984 positions does not fit max_seq_len 2560" said nothing of it)."""
    with pytest.raises(ValueError, match="the model's context is 2560: shorten the text or the reference$"):
        engine.synthesize(SynthesisRequest(text="\u200b" * 990 + "hi", max_frames=2))


def test_a_folder_that_is_not_there_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TTSEngine.load_s1(tmp_path / "missing")


def test_the_cli_speaks_and_codes_with_an_s1_folder(tmp_path):
    """`fishtts tts --model FOLDER` and `fishtts vqgan --model FOLDER` (the S1 codec alone, both ways)."""
    import soundfile as sf

    from tests.helpers import run_cli

    out = tmp_path / "out.wav"
    common = ["--model", S1_CHECKPOINT, "--device", "cpu"]
    result = run_cli(["tts", "--text", TARGET_TEXT, "-o", out, "--max-new-tokens", "6", *common], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(out)
    from core.s1 import load_codec

    codec = load_codec(S1_CHECKPOINT / "codec.pth")
    assert rate == codec.sample_rate and 0 < audio.size <= 6 * codec.frame_length
    assert audio.size % codec.frame_length == 0

    result = run_cli(["vqgan", "-i", out, "-o", tmp_path / "again.wav", *common], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    codes = np.load(tmp_path / "again.npy")
    assert codes.shape == (codec.config.num_codebooks, audio.size // codec.frame_length)
    result = run_cli(["vqgan", "-i", tmp_path / "again.npy", "-o", tmp_path / "decoded.wav", *common], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sf.read(tmp_path / "decoded.wav")[0].size == audio.size

    bad = run_cli(["tts", "--text", "hi", "--top-k", "3", "-o", out, *common], cwd=tmp_path)
    assert bad.returncode != 0 and "top_k" in bad.stderr and "Traceback" not in bad.stderr


def test_ignore_stop_runs_the_whole_budget(engine):
    """The benchmark's fixed frame counts: the greedy case ends on <|im_end|> by itself, not with ignore_stop."""
    request = case_request("greedy")
    assert engine.generate_codes(request)[0].shape[1] < MAX_NEW_FRAMES
    assert engine.generate_codes(request, ignore_stop=True)[0].shape == (
        dual_ar_cases()["ref_codes"].shape[0],
        MAX_NEW_FRAMES,
    )


def test_compile_on_the_cpu_keeps_the_fused_decode():
    """`compile` captures CUDA graphs on a GPU (core/s1/compile.py); on the CPU the fused kernels decode
    either way, and the engine says it is not compiled."""
    engine = TTSEngine.load_s1(S1_CHECKPOINT, device="cpu", compile=True, max_batch_size=2)
    try:
        assert not engine.info.compiled and getattr(engine.lm, "compiled_decode", None) is None
        assert not engine.scheduler.static
    finally:
        engine.close()
