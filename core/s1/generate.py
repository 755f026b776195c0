"""Dual-AR generation (SPEC §6): prefill, then one frame per step until `<|im_end|>` or the budget.

A frame is a column `[slow token, code_0, ..., code_{N-1}]`: the slow transformer samples the token
(code_0 is its semantic index), the fast transformer samples codes 1..N-1 one after another from its
first 1024 logits. Kept as the original (the checkpoints were tuned with this sampler):
* the slow token's repetition-penalty history is column 0 of the 16-frame window (one frame's token
  and codes used as vocabulary ids), not the token history; early windows hold zeros; the prefill
  frame is never in the history and the prefill step uses no penalty;
* fast codes 1..N-1 are sampled from the first 1024 logits; code k's history is row k + 1 of the window.
Fixed here (see QUIRKS in the package docstring): a non-semantic slow token (including ids above the
semantic block, which crash the original) gives code_0 = 0; `<|im_end|>` from the prefill step stops
too; the returned codes drop the last frame only when it is the `<|im_end|>` frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..lm.generate import budget_new_frames
from .config import FAST_LOGIT_LIMIT
from .lm import DualARTransformer
from .sampling import WINDOW, SamplingSettings, SamplingTensors, sample_rows, sample_rows_fast


@dataclass
class GenerationResult:
    frames: Tensor  # [1 + N, F] every generated column (the last is <|im_end|> when stopped)
    codes: Tensor  # [N, F'] codes for the codec: rows 1.. of the frames, without the <|im_end|> frame
    stopped: bool  # ended on <|im_end|> (else the frame budget ran out)


def semantic_code(model: DualARTransformer, token: Tensor) -> Tensor:
    """code_0 of a slow token: its index in the semantic block, 0 for any other id."""
    is_semantic = (token >= model.semantic_begin_id) & (token <= model.semantic_end_id)
    return torch.where(is_semantic, token - model.semantic_begin_id, torch.zeros_like(token))


def sample_frames(
    model: DualARTransformer,
    logits: Tensor,
    hidden: Tensor,
    params: list[SamplingTensors],
    windows: list[Tensor | None],
    generators: list[torch.Generator | None],
    rows: Tensor | None = None,
    fast_step: Callable[[Tensor, int], Tensor] | None = None,
) -> Tensor:
    """Slow-step outputs (logits [B, vocab], hidden [B, fast_dim]) → the frames [R, 1 + N] of `rows` (an
    index [R] on the device; default: all B), which sample in order with the given settings, windows and
    generators.

    Each row samples with its own settings, penalty window and generator, in the original's order
    (token, then codes 1..N-1); the fast stack runs all B rows together (`fast_step(x, position)`,
    default `model.forward_fast`), rows not sampled feeding it code 0. A quantized model's frames are not
    bit-exact anyway: its draws take one C++ call each (`sample_rows_fast`), with the same rule.
    """
    fast_step = fast_step or model.forward_fast
    sample = sample_rows_fast if model.quantized else sample_rows
    settings = SamplingTensors.rows(params).to(logits.dtype)
    # the rows' windows stacked once a frame, [R, 1 + N, W]: all rows have one (decode steps) or none (a prefill)
    if len({w is None for w in windows}) > 1:
        raise ValueError("sample_frames: rows with and without penalty windows in one step")
    stacked = None if windows[0] is None else torch.stack(windows)

    def draw(row_logits: Tensor, previous: Tensor | None) -> Tensor:
        chosen = row_logits if rows is None else row_logits[rows]
        drawn = sample(chosen, settings, previous, generators)
        if rows is None:
            return drawn
        return drawn.new_zeros(row_logits.size(0)).index_copy_(0, rows, drawn)

    token = draw(logits, None if stacked is None else stacked[:, :, 0])  # (column 0: the quirk above)
    model.clear_fast_cache()
    fast_step(hidden, 0)  # fills the fast cache at position 0; its logits are not used
    code = semantic_code(model, token)
    columns = [token, code]
    limit = min(FAST_LOGIT_LIMIT, model.config.codebook_size)
    for k in range(1, model.config.num_codebooks):
        fast_logits = fast_step(model.fast_embeddings(code), k)[:, :limit]
        code = draw(fast_logits, None if stacked is None else stacked[:, k + 1])
        columns.append(code)
    frames = torch.stack(columns, dim=1)
    return frames if rows is None else frames[rows]


def decode_frame(
    model: DualARTransformer,
    columns: Tensor,
    input_pos: Tensor,
    params: SamplingTensors,
    window: Tensor | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Slow step over `columns` [1, 1 + N, S] at `input_pos`, then the fast steps → the new frame [1 + N]."""
    logits, hidden = model.forward_slow(columns, input_pos)
    return sample_frames(model, logits, hidden, [params], [window], [generator])[0]


def penalty_window(history: Tensor, step: int) -> Tensor:
    """The original's window for loop step `step`: columns [0, 16) early (zeros not yet written), then the 16
    frames before the step."""
    return history[:, :WINDOW] if step < WINDOW else history[:, step - WINDOW : step]


def frame_budget(model: DualARTransformer, prompt_length: int, max_new_frames: int) -> int:
    """v0.2's rule and message ("prompt of 2984 positions does not fit max_seq_len 2560" said nothing of the
    text, though S1-mini reads a long text whole)."""
    return budget_new_frames(prompt_length, max(max_new_frames, 0), model.config.max_seq_len)


@torch.inference_mode()
def generate(
    model: DualARTransformer,
    prompt: Tensor,
    im_end_id: int,
    settings: SamplingSettings | None = None,
    max_new_frames: int = 0,
    generator: torch.Generator | None = None,
    on_frame: Callable[[Tensor], None] | None = None,
) -> GenerationResult:
    """Continue `prompt` [1 + N, L]; `max_new_frames` 0 means up to max_seq_len (the original's default).

    `on_frame` sees every new frame [1 + N] as it is made (streaming, progress, timing)."""
    settings = settings or SamplingSettings()
    device = model.norm.weight.device
    n = model.config.num_codebooks
    if prompt.dim() != 2 or prompt.size(0) != n + 1:
        raise ValueError(f"prompt must be [{n + 1}, L], got {tuple(prompt.shape)}")
    length = prompt.size(1)
    budget = frame_budget(model, length, max_new_frames)
    model.setup_caches(1, length + budget)  # grows only; the original always holds max_seq_len positions
    params = settings.as_tensors(device)
    prompt = prompt.to(device=device, dtype=torch.int)
    frame = decode_frame(model, prompt[None], torch.arange(length, device=device), params, None, generator)
    frames = [frame]
    if on_frame is not None:
        on_frame(frame)
    history = torch.zeros((n + 1, max(WINDOW, budget)), dtype=torch.int, device=device)
    stopped = bool(frame[0] == im_end_id)
    for i in range(budget - 1):
        if stopped:
            break
        window = penalty_window(history, i)
        position = torch.tensor([length + i], device=device)
        frame = decode_frame(model, frame.view(1, n + 1, 1), position, params, window, generator)
        history[:, i] = frame
        frames.append(frame)
        if on_frame is not None:
            on_frame(frame)
        stopped = bool(frame[0] == im_end_id)
    all_frames = torch.stack(frames, dim=1).cpu()
    codes = all_frames[1:, :-1] if stopped else all_frames[1:]
    return GenerationResult(frames=all_frames, codes=codes.clone(), stopped=stopped)
