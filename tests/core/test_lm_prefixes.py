"""A voice's prompt prefix kept between v0.2 requests (core/lm/prefixes.py through core/lm/generate.py's
`prefill_many`): a kept prefix gives the frames and caches a fresh one does, packed prompts start past their
prefixes, the two pieces stay within the format's tolerance of one, float32 prefills each prompt whole
(golden parity), and the engine finds the prefix (the tokens a prompt shares with its transcript read alone)
and reuses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.engine import TTSEngine
from core.frontend import prompt_head
from core.lm import SamplingParams, Sequence, load_lm, prefill_many
from core.lm.prefixes import MIN_PREFIX, PrefixCache
from core.request import Reference, SynthesisRequest
from tests.core.test_lm_paths import ACTIVATION_ROUNDING, relative_error
from tests.core.test_lm_prefill_many import caches, filled, packed_tolerance
from tests.paths import PARITY

CONFIG = str(PARITY / "llama_config.json")
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, top_k=None, repetition_penalty=1.2)
PREFIX = 24  # shared leading text positions (a transcript's)
QUANTIZED = ["int8", "int4"]


@pytest.fixture(scope="module")
def models():
    return {
        fmt: load_lm(PARITY / "llama_state_dict.pt", CONFIG, quantize=q)
        for fmt, q in [("float32", None)] + [(f, f) for f in QUANTIZED]
    }


def voice_prompt(text_length: int, seed: int) -> torch.Tensor:
    """PREFIX positions every prompt shares, then text of its own and reference codes (as a cloned voice's)."""
    shared, own = torch.Generator().manual_seed(0), torch.Generator().manual_seed(seed)
    codes = 20
    x = torch.zeros(5, PREFIX + text_length + codes, dtype=torch.int)
    x[0, :PREFIX] = torch.randint(3, 800, (PREFIX,), generator=shared)
    x[0, PREFIX : PREFIX + text_length] = torch.randint(3, 800, (text_length,), generator=own)
    x[1:, PREFIX + text_length :] = torch.randint(2, 160, (4, codes), generator=own)
    return x


def job(x: torch.Tensor, slot: int, seed: int, prefix: int = PREFIX) -> tuple[list[Sequence], list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [Sequence(x, 10, SAMPLED, 2, generator, 160, prefix_length=prefix)], [slot]


def run(model, jobs, prefixes: PrefixCache | None, fresh: bool = True) -> list[torch.Tensor]:
    if fresh:
        model.clear_caches()
        model.setup_caches(4, 128)
    with torch.inference_mode():
        assert prefill_many(model, jobs, prefixes) == [None] * len(jobs)
    return caches(model)


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_a_kept_prefix_gives_the_frames_and_caches_of_a_fresh_one(models, fmt):
    """The same prompt and seed after its prefix was kept (copied in, not computed) starts exactly as the
    first time: a prompt's frames do not depend on what the cache held."""
    model, prefixes, x = models[fmt], PrefixCache(), voice_prompt(10, 1)
    first = job(x, 0, seed=5)
    before = run(model, [first], prefixes)
    again = job(x, 2, seed=5)
    after = run(model, [again], prefixes, fresh=False)
    assert (prefixes.misses, prefixes.hits, len(prefixes.entries)) == (1, 1, 1)
    assert torch.equal(first[0][0].last, again[0][0].last)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(filled(a, 0, x.shape[1]), filled(b, 2, x.shape[1]))


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_prompts_packed_past_their_prefixes_start_as_each_alone(models, fmt, monkeypatch):
    """One packed call takes each prompt from where its kept prefix ends (two of them kept from an earlier
    request, one new): the first frames of each prompt prefilled alone, the caches within packing's rounding."""
    model = models[fmt]
    prompts = [voice_prompt(n, seed) for seed, n in enumerate([10, 3, 17], start=1)]
    alone = []
    for slot, x in enumerate(prompts):
        made = [job(x, slot, seed=slot)]
        run(model, made, PrefixCache())
        alone.append((made[0][0][0].last, caches(model)))
    prefixes = PrefixCache()
    run(model, [job(prompts[0], 3, seed=9)], prefixes)  # keeps the shared prefix
    packed_forward, calls = type(model).prefill_many, []
    monkeypatch.setattr(
        type(model), "prefill_many", lambda m, p, s, starts: calls.append(starts) or packed_forward(m, p, s, starts)
    )
    together = [job(x, slot, seed=slot) for slot, x in enumerate(prompts)]
    after = run(model, together, prefixes, fresh=False)
    assert calls == [[PREFIX] * 3] and prefixes.hits == 3
    for slot, ((sequences, _), (last, cache)) in enumerate(zip(together, alone, strict=True)):
        assert torch.equal(sequences[0].last, last), slot
        for a, b in zip(cache, after, strict=True):
            length = prompts[slot].shape[1]
            assert relative_error(filled(b, slot, length), filled(a, slot, length)) < packed_tolerance(fmt), slot


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_two_pieces_stay_within_the_formats_tolerance_of_one(models, fmt):
    """The rest of a prompt attends over its prefix's keys and values as the (bfloat16) cache holds them, as
    decode steps do; one piece attends over them unrounded. Either way the greedy choices agree."""
    model, x = models[fmt], voice_prompt(10, 1)[None]
    model.clear_caches()
    model.setup_caches(2, 128)
    with torch.inference_mode():
        whole = model.prefill(x, 0)
        model.prefill_cache(x[..., :PREFIX], 1)
        split = model.prefill(x[..., PREFIX:], 1, PREFIX)
    tolerance = packed_tolerance(fmt) + ACTIVATION_ROUNDING["bfloat16"]
    for a, b in [(split.token_logits, whole.token_logits), (split.codebook_logits, whole.codebook_logits)]:
        assert relative_error(a, b) < tolerance
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_float32_prefills_each_prompt_whole(models):
    """float32 keeps golden parity: no prefix is kept or used, the caches are those of the plain prefill."""
    model, prefixes, x = models["float32"], PrefixCache(), voice_prompt(10, 1)
    plain = run(model, [job(x, 0, seed=5, prefix=0)], None)
    kept = job(x, 0, seed=5)
    with_prefixes = run(model, [kept], prefixes)
    assert not prefixes.entries and prefixes.misses == prefixes.hits == 0
    for a, b in zip(plain, with_prefixes, strict=True):
        assert torch.equal(filled(a, 0, x.shape[1]), filled(b, 0, x.shape[1]))


def test_a_prefix_shorter_than_the_minimum_is_not_kept(models):
    prefixes = PrefixCache()
    run(models["int8"], [job(voice_prompt(10, 1), 0, seed=5, prefix=MIN_PREFIX - 1)], prefixes)
    assert not prefixes.entries and prefixes.misses == 0


# -- the engine: where a prompt's prefix ends, and its reuse ---------------------------------------

TRANSCRIPT = "This is the transcript of the reference clip, a calm and even voice."
CODES = np.random.default_rng(0).integers(0, 160, (4, 30))


@pytest.fixture(scope="module")
def engine(tiny_checkpoints):
    engine = TTSEngine.load(
        lm_checkpoint=tiny_checkpoints["lm"],
        lm_config=str(tiny_checkpoints["lm_config"]),
        tokenizer=tiny_checkpoints["tokenizer"],
        vqgan_checkpoint=None,
        device="cpu",
        quantize="int8",
        max_batch_size=2,
    )
    yield engine
    engine.close()


def voice_request(text: str, transcript: str | None = TRANSCRIPT, **changes) -> SynthesisRequest:
    return SynthesisRequest(
        text=text,
        transcript=transcript,
        reference=Reference("codes", codes=CODES),
        max_frames=6,
        seed=3,
        order="en",
        **changes,
    )


@pytest.mark.parametrize("use_g2p", [True, False])
def test_the_prefix_is_what_the_prompt_shares_with_its_transcript_read_alone(engine, use_g2p):
    request = voice_request("Something new to say.", use_g2p=use_g2p)
    prompt = engine.encode_prompt(request)
    (sequence,) = engine._sequences(request, prompt, 1, 3, False)
    head = engine.family.tokenizer.encode(prompt_head(TRANSCRIPT, use_g2p=use_g2p, order="en"))
    assert MIN_PREFIX <= sequence.prefix_length <= len(head)
    assert prompt[0, : sequence.prefix_length].tolist() == head[: sequence.prefix_length]
    assert sequence.prefix_length >= len(head) - 1  # at most the transcript's last token runs on into the text
    (no_voice,) = engine._sequences(
        voice_request("Hello.", None), engine.encode_prompt(voice_request("Hi.", None)), 1, 3, False
    )
    assert no_voice.prefix_length == 0


def test_the_engine_prefills_a_voices_prefix_once(engine):
    """The second request in the same voice copies its prefix (and gets the first one's codes for the same
    text and seed); another text in that voice too."""
    prefixes = engine.scheduler.stepper.prefixes
    hits, misses = prefixes.hits, prefixes.misses
    first = engine.generate_codes(voice_request("The first thing to say today."))
    again = engine.generate_codes(voice_request("The first thing to say today."))
    engine.generate_codes(voice_request("Another thing entirely."))
    assert (prefixes.misses - misses, prefixes.hits - hits) == (1, 2)
    np.testing.assert_array_equal(first[0], again[0])
