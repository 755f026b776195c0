"""Autoregressive generation of semantic frames: one prefill, then one cached step per frame.

A frame is a column [1 + num_codebooks] = (text token, codebook values in the LM's 0..167 space).
Rules of the original (SPEC-generation §5.2-5.3): the prefill frame never ends generation (codebook
entries 0 and 1 masked, its text token not checked for EOS); later steps mask only entry 0 and stop
on EOS in the text row or the end value 1 in any codebook; the repetition penalty uses each
codebook's last 16 decode-loop frames and never touches the text row.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .model import ForwardResult, Transformer
from .sampling import SamplingParams, sample

REPETITION_WINDOW = 16
CODEBOOK_PAD = 0  # codebook value that embeds as nothing
CODEBOOK_END = 1  # codebook value that ends the audio
CODE_OFFSET = 2  # LM codebook value = VQ index + 2
FAST_TOP_P_CANDIDATES = 256  # `fast_sampling`: look for the text token's nucleus among the top 256 first


def budget_new_frames(prompt_len: int, max_new_tokens: int, max_seq_len: int) -> int:
    """The original's rule: 0 means "fill the context"; never run past the context."""
    if prompt_len >= max_seq_len:
        raise ValueError(f"the prompt is {prompt_len} tokens; the model's context is {max_seq_len}")
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    room = max_seq_len - prompt_len
    return room if max_new_tokens == 0 else min(max_new_tokens, room)


def sample_frame(out: ForwardResult, params: SamplingParams, window: Tensor | None, first: bool,
                 code_limit: int | None, generator: torch.Generator | None, fast_sampling: bool = False) -> Tensor:
    """Sample [B, 1 + C] from the last position's logits."""
    candidates = FAST_TOP_P_CANDIDATES if fast_sampling else None
    token = sample(out.token_logits[:, -1].float(), params, None, generator, candidates)
    codebook_logits = out.codebook_logits[:, -1].to(torch.float32, copy=True)  # [B, C, V]; masked in place
    batch, num_codebooks, size = codebook_logits.shape
    codebook_logits[..., : CODEBOOK_END + 1 if first else CODEBOOK_PAD + 1] = float("-inf")
    if code_limit is not None:
        # Values the VQGAN cannot decode (its codebooks are smaller than the LM's heads).
        codebook_logits[..., code_limit + CODE_OFFSET :] = float("-inf")
    previous = None if window is None else window.reshape(batch * num_codebooks, -1)
    codes = sample(codebook_logits.reshape(batch * num_codebooks, size), params, previous, generator)
    return torch.cat([token[:, None], codes.view(batch, num_codebooks)], dim=1)


def generate_frames(
    model: Transformer,
    prompt: Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    params: SamplingParams,
    num_samples: int = 1,
    code_limit: int | None = None,
    generator: torch.Generator | None = None,
    static_cache: bool = False,
    ignore_stop: bool = False,
    fast_sampling: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield `(frames [B, 1 + C], finished [B] bool)` per step for `num_samples` rows of one prompt.

    A row is finished after the frame that stopped it; the caller keeps frames up to that one.
    `static_cache=True` attends over the whole cache with a mask (fixed shapes for CUDA graphs);
    otherwise only the filled prefix is read (much less memory traffic on CPU).
    `ignore_stop` runs the whole budget (benchmarks: random weights stop at random points).
    `fast_sampling` finds the text nucleus with a top-k instead of a full sort (apply_top_p): same
    tokens but for float rounding at the top-p threshold; for paths that are not bit-exact anyway.
    """
    cfg = model.config
    rows, prompt_len = prompt.shape
    if rows != 1 + cfg.num_codebooks:
        raise ValueError(f"prompt must have {1 + cfg.num_codebooks} rows, got {rows}")
    budget = budget_new_frames(prompt_len, max_new_tokens, cfg.max_seq_len)
    device = model.output.weight.device
    model.setup_caches(num_samples, prompt_len + budget)

    x = prompt.to(device).unsqueeze(0)
    # One prefill serves every sample: the batch rows share the prompt's cache entries.
    out = model.forward_generate(x, torch.arange(prompt_len, device=device), last_only=True,
                                 kv_len=None if static_cache else prompt_len)
    if num_samples > 1:
        for layer in model.layers:
            cache = layer.attention.kv_cache
            cache.k_cache[1:num_samples, :, :prompt_len] = cache.k_cache[:1, :, :prompt_len]
            cache.v_cache[1:num_samples, :, :prompt_len] = cache.v_cache[:1, :, :prompt_len]
        out = ForwardResult(*(t.expand(num_samples, *t.shape[1:]) for t in (out.token_logits, out.codebook_logits)))
    frame = sample_frame(out, params, None, True, code_limit, generator, fast_sampling)
    finished = torch.zeros(num_samples, dtype=torch.bool, device=device)
    if budget == 1:
        finished[:] = True
    yield frame, finished.clone()

    decode = getattr(model, "compiled_decode", None) or model.forward_generate
    history = torch.zeros(num_samples, cfg.num_codebooks, max(budget, REPETITION_WINDOW), dtype=torch.int, device=device)
    for step in range(budget - 1):
        start = max(0, step - REPETITION_WINDOW)
        window = history[:, :, start : start + REPETITION_WINDOW]
        pos = prompt_len + step
        out = decode(frame.unsqueeze(-1), torch.tensor([pos], device=device),
                                     kv_len=None if static_cache else pos + 1)
        frame = sample_frame(out, params, window, False, code_limit, generator, fast_sampling)
        history[:, :, step] = frame[:, 1:]
        stopped = (frame[:, 0] == eos_token_id) | (frame[:, 1:] == CODEBOOK_END).any(dim=1)
        if ignore_stop:
            stopped[:] = False
        if step == budget - 2:
            stopped[:] = True
        finished |= stopped
        yield frame, finished.clone()
        if bool(finished.all()):
            return


@torch.inference_mode()
def generate(model: Transformer, prompt: Tensor, *, num_samples: int = 1, progress=None, **options) -> list[Tensor]:
    """Generated frames per sample, each [1 + C, n] in the prompt's dtype (stop frame included).

    `options` are those of `generate_frames`; `progress`, if given, is called once per step
    (e.g. a tqdm bar's update).
    """
    per_row: list[list[Tensor]] = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for frame, finished in generate_frames(model, prompt, num_samples=num_samples, **options):
        for row in range(num_samples):
            if not done[row]:
                per_row[row].append(frame[row])
                done[row] = bool(finished[row])
        if progress is not None:
            progress()
    return [torch.stack(frames, dim=1).to(prompt.dtype).cpu() for frames in per_row]


def frames_to_codes(frames: Tensor) -> Tensor:
    """VQ codes [C, n - 1] from generated frames: the last frame (stop or budget) is dropped."""
    return frames[1:, :-1] - CODE_OFFSET
