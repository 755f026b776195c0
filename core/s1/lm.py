"""The Dual-AR text-to-semantic transformer of S1 (SPEC §3) with static KV caches.

The slow transformer runs along time over `[B, 1 + N, S]` columns (token id + N codes) and yields
token logits plus the last block's output (before the final norm), which the fast transformer
turns into the N codes of one frame, one codebook position after another.
Parameter names equal those of `model.pth`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..lm import fused
from ..lm.kernels import attention_kernel_layout
from ..lm.norm import RMSNorm
from ..lm.prefill_attention import causal_attention
from ..lm.quantize import QUANT_MODES, quantize_model, weight_format
from ..lm.rope import apply_rope, rope_table
from .config import DualARConfig, LayerShape, find_multiple
from .layers import Linear, SwiGLU


class KVCache(nn.Module):
    """Keys and values of one layer: [batch, n_kv_heads, length, head_dim], written at given positions.

    `zeroed=False` leaves the memory uninitialised, so a CPU cache's pages are committed only as positions
    are written (a full-context slot of S1-mini is ~1.9 GB in float32): the slow stack only ever reads the
    prefix a slot has written."""

    def __init__(
        self, batch: int, length: int, n_heads: int, head_dim: int, dtype: torch.dtype, device=None, zeroed=True
    ):
        super().__init__()
        shape = (batch, n_heads, length, head_dim)
        make = torch.zeros if zeroed else torch.empty
        self.register_buffer("k_cache", make(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", make(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor, slot: int = 0) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, S, D] at `input_pos` of slots slot .. slot + B - 1; return those slots."""
        rows = slice(slot, slot + k.size(0))
        self.k_cache[rows, :, input_pos] = k
        self.v_cache[rows, :, input_pos] = v
        return self.k_cache[rows], self.v_cache[rows]

    def clear(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()


class Attention(nn.Module):
    def __init__(self, shape: LayerShape, explicit_softmax: bool = False):
        super().__init__()
        self.shape = shape
        self.explicit_softmax = explicit_softmax  # the original's fast stack: plain softmax, not SDPA
        # (read by core/lm/fused.py, whose one C++ call a layer runs a CPU decode step)
        self.n_head, self.n_local_heads = shape.n_head, shape.n_local_heads
        self.kernel_layout = attention_kernel_layout(shape.n_head, shape.n_local_heads, shape.head_dim)
        total = (shape.n_head + 2 * shape.n_local_heads) * shape.head_dim
        self.wqkv = Linear(shape.dim, total, bias=shape.qkv_bias)
        self.wo = Linear(shape.n_head * shape.head_dim, shape.dim, bias=shape.o_bias)
        if shape.qk_norm:
            self.q_norm = nn.RMSNorm(shape.head_dim, eps=shape.norm_eps)
            self.k_norm = nn.RMSNorm(shape.head_dim, eps=shape.norm_eps)
        self.kv_cache: KVCache | None = None

    def project(self, x: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, S, dim] → q [B, n_head, S, D], k and v [B, n_kv_heads, S, D] (normed, rotated)."""
        s = self.shape
        bsz, seqlen, _ = x.shape
        q_size, kv_size = s.n_head * s.head_dim, s.n_local_heads * s.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(bsz, seqlen, s.n_head, s.head_dim)
        k = k.view(bsz, seqlen, s.n_local_heads, s.head_dim)
        v = v.view(bsz, seqlen, s.n_local_heads, s.head_dim)
        if s.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Attention of q over k/v (mask True = visible; None: the queries are the last of the keys'
        positions, each seeing the keys up to its own), then the output projection → [B, S, dim]."""
        s = self.shape
        bsz, _, seqlen, _ = q.shape
        if mask is None:
            y = causal_attention(q, k.to(q.dtype), v.to(q.dtype))
        else:
            repeat = s.n_head // s.n_local_heads
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
            if self.explicit_softmax:
                bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
                weights = torch.softmax(q @ k.transpose(-2, -1) * (1 / math.sqrt(s.head_dim)) + bias, dim=-1)
                y = weights @ v
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).contiguous().view(bsz, seqlen, s.n_head * s.head_dim))

    def forward(
        self, x: Tensor, rope: Tensor, mask: Tensor | None, input_pos: Tensor, kv_length: int, slot: int = 0
    ) -> Tensor:
        q, k, v = self.project(x, rope)
        if self.kv_cache is not None:
            k_all, v_all = self.kv_cache.update(input_pos, k, v, slot)
            k, v = k_all[:, :, :kv_length], v_all[:, :, :kv_length]
        return self.attend(q, k, v, mask)

    def decode_rows(self, x: Tensor, rope: Tensor, slots: list[int], positions: list[int]) -> Tensor:
        """One new position per row (x [B, 1, dim], rope [B, 1, D/2, 2]): row b goes to `positions[b]` of
        cache slot `slots[b]` and attends over that slot's own prefix, so rows never see each other."""
        q, k, v = self.project(x, rope)
        cache, rows = self.kv_cache, []
        for b, (slot, position) in enumerate(zip(slots, positions, strict=True)):
            cache.k_cache[slot, :, position] = k[b, :, 0]
            cache.v_cache[slot, :, position] = v[b, :, 0]
            keys = cache.k_cache[slot : slot + 1, :, : position + 1]
            values = cache.v_cache[slot : slot + 1, :, : position + 1]
            visible = torch.ones((1, 1, 1, position + 1), dtype=torch.bool, device=x.device)
            rows.append(self.attend(q[b : b + 1], keys, values, visible))
        return torch.cat(rows)

    def decode_static(self, x: Tensor, rope: Tensor, positions: Tensor) -> Tensor:
        """One new position per row, row b in cache slot b at `positions[b]` (x [B, 1, dim], rope
        [B, 1, D/2, 2]), attending over the slot's whole cache with a mask: the same shapes every step,
        for CUDA graphs (the cache is zeroed, so the masked positions hold numbers)."""
        q, k, v = self.project(x, rope)
        bsz, head_dim = x.size(0), self.shape.head_dim
        cache, rows = self.kv_cache, torch.arange(bsz, device=x.device)
        cache.k_cache[rows, :, positions] = k[:, :, 0]
        cache.v_cache[rows, :, positions] = v[:, :, 0]
        keys, values = cache.k_cache[:bsz], cache.v_cache[:bsz]
        # Each key head serves n_head / n_local_heads consecutive query heads: grouped in place, since
        # repeating the keys (as the prefill does) would copy the whole cache every layer.
        q = q.reshape(bsz, self.n_local_heads, self.n_head // self.n_local_heads, head_dim)
        scores = (q @ keys.transpose(-1, -2)).float() * (1 / math.sqrt(head_dim))
        visible = torch.arange(keys.size(2), device=x.device) <= positions[:, None]
        weights = torch.softmax(scores.masked_fill(~visible[:, None, None, :], float("-inf")), dim=-1)
        y = weights.to(values.dtype) @ values  # [B, n_local_heads, group, D]
        return self.wo(y.reshape(bsz, 1, self.n_head * head_dim))


class TransformerBlock(nn.Module):
    def __init__(self, shape: LayerShape, explicit_softmax: bool = False):
        super().__init__()
        self.attention = Attention(shape, explicit_softmax)
        self.feed_forward = SwiGLU(shape.dim, shape.intermediate_size)
        self.ffn_norm = RMSNorm(shape.dim, shape.norm_eps)
        self.attention_norm = RMSNorm(shape.dim, shape.norm_eps)

    def forward(
        self, x: Tensor, rope: Tensor, mask: Tensor | None, input_pos: Tensor, kv_length: int, slot: int = 0
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, mask, input_pos, kv_length, slot)
        return h + self.feed_forward(self.ffn_norm(h))

    def decode_rows(self, x: Tensor, rope: Tensor, slots: list[int], positions: list[int]) -> Tensor:
        h = x + self.attention.decode_rows(self.attention_norm(x), rope, slots, positions)
        return h + self.feed_forward(self.ffn_norm(h))

    def decode_static(self, x: Tensor, rope: Tensor, positions: Tensor) -> Tensor:
        h = x + self.attention.decode_static(self.attention_norm(x), rope, positions)
        return h + self.feed_forward(self.ffn_norm(h))


class DualARTransformer(nn.Module):
    def __init__(self, config: DualARConfig, semantic_begin_id: int, semantic_end_id: int):
        super().__init__()
        self.config = config
        self.semantic_begin_id = semantic_begin_id
        self.semantic_end_id = semantic_end_id
        c = config
        self.embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.codebook_embeddings = nn.Embedding(c.codebook_size * c.num_codebooks, c.dim)
        self.layers = nn.ModuleList(TransformerBlock(c.slow_layer()) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        # A tied model reads its logits from the embedding table (no `output` of its own) until quantized.
        self.output = None if c.tie_word_embeddings else Linear(c.dim, c.vocab_size, bias=False)
        self.fast_project_in = Linear(c.dim, c.fast_dim) if c.fast_dim != c.dim else nn.Identity()
        self.fast_embeddings = nn.Embedding(c.codebook_size, c.fast_dim)
        self.fast_layers = nn.ModuleList(
            TransformerBlock(c.fast_layer(), explicit_softmax=True) for _ in range(c.n_fast_layer)
        )
        self.fast_norm = RMSNorm(c.fast_dim, c.norm_eps)
        self.fast_output = Linear(c.fast_dim, c.codebook_size, bias=False)
        self.build_rope_tables()
        self.cache_length = 0
        self.cache_batch = 0
        self.cache_zeroed = False

    def build_rope_tables(self) -> None:
        c, device = self.config, self.norm.weight.device
        self.register_buffer("rope", rope_table(c.max_seq_len, c.head_dim, c.rope_base).to(device), persistent=False)
        fast = rope_table(c.num_codebooks, c.fast_head_dim, c.rope_base).to(device)
        self.register_buffer("fast_rope", fast, persistent=False)

    def quantize(self, mode: str) -> DualARTransformer:
        """Quantize every linear (core/lm/quantize.py) in place. A tied output head becomes a quantized
        copy of the embedding table first; the table itself stays float for the embedding lookups."""
        if self.output is None:
            head = Linear(self.config.dim, self.config.vocab_size, bias=False, device="meta")
            head.weight = self.embeddings.weight  # shared until quantize_model replaces the layer
            self.output = head
        quantize_model(self, mode)
        return self

    @property
    def quantized(self) -> bool:
        """Whether its linears are int8 or int4 (core/lm/quantize.py quantizes every one, the fast head too)."""
        return weight_format(self.fast_output) in QUANT_MODES

    # -- caches -------------------------------------------------------------------------------------
    @property
    def prompt_attention_layout(self) -> tuple[int, int, int]:
        """(query heads, key/value heads, head size) of the slow stack's prompt attention (prefill_attention.py)."""
        shape = self.config.slow_layer()
        return (shape.n_head, shape.n_local_heads, shape.head_dim)

    def setup_caches(self, batch: int = 1, length: int | None = None, zeroed: bool | None = None) -> None:
        """Static caches in the parameter dtype; the slow one holds `length` (default max_seq_len) positions.
        `zeroed` (default: off the CPU) for the static decode, which reads whole caches."""
        c = self.config
        length = min(find_multiple(length or c.max_seq_len, 8), find_multiple(c.max_seq_len, 8))
        dtype, device = self.norm.weight.dtype, self.norm.weight.device
        zeroed = torch.device(device).type != "cpu" if zeroed is None else zeroed
        if self.cache_length >= length and self.cache_batch == batch and (self.cache_zeroed or not zeroed):
            return
        for block in self.layers:
            block.attention.kv_cache = KVCache(batch, length, c.n_local_heads, c.head_dim, dtype, device, zeroed)
        for block in self.fast_layers:
            block.attention.kv_cache = KVCache(
                batch, c.num_codebooks, c.fast_n_local_heads, c.fast_head_dim, dtype, device
            )
        self.cache_length, self.cache_batch, self.cache_zeroed = length, batch, zeroed

    @contextmanager
    def decode_probe(self, rows: int, position: int) -> Iterator[Callable[[], object]]:
        """A decode step of `rows` sequences at `position` (at most the model's last): the slow stack,
        then the fast one over every codebook, over zeroed scratch caches, as a callable: what the
        autotuner times its decode candidates with. The caches in place before are back afterwards."""
        position = min(position, self.config.max_seq_len - 1)
        blocks = (*self.layers, *self.fast_layers)
        saved = [block.attention.kv_cache for block in blocks]
        sizes = self.cache_length, self.cache_batch, self.cache_zeroed
        self.drop_caches()
        try:
            self.setup_caches(rows, position + 1, zeroed=True)
            inp = torch.zeros(rows, 1 + self.config.num_codebooks, 1, dtype=torch.int, device=self.norm.weight.device)

            def step() -> Tensor:
                _, hidden = self.forward_slow_rows(inp, list(range(rows)), [position] * rows)
                for codebook in range(self.config.num_codebooks):
                    logits = self.forward_fast(hidden, codebook)
                return logits  # the last codebook's

            yield step
        finally:
            for block, cache in zip(blocks, saved, strict=True):
                block.attention.kv_cache = cache
            self.cache_length, self.cache_batch, self.cache_zeroed = sizes

    def drop_caches(self) -> None:
        for block in (*self.layers, *self.fast_layers):
            block.attention.kv_cache = None
        self.cache_length = self.cache_batch = 0

    # -- slow transformer ---------------------------------------------------------------------------
    def embed(self, inp: Tensor) -> Tensor:
        """[B, 1 + N, S] → [B, S, dim]: token embedding, plus the codebook sum at semantic positions."""
        c = self.config
        offsets = torch.arange(c.num_codebooks, device=inp.device).view(1, -1, 1) * c.codebook_size
        codes = self.codebook_embeddings(inp[:, 1:].long() + offsets)  # [B, N, S, dim]
        tokens = inp[:, 0]
        is_semantic = (tokens >= self.semantic_begin_id) & (tokens <= self.semantic_end_id)
        vq_sum = codes.sum(dim=1).masked_fill(~is_semantic.unsqueeze(-1), 0)
        x = self.embeddings(tokens.long()) + vq_sum
        if c.scale_codebook_embeddings:
            x = torch.where(is_semantic.unsqueeze(-1), x / math.sqrt(c.num_codebooks + 1), x)
        return x

    def forward_slow(
        self, inp: Tensor, input_pos: Tensor, all_positions: bool = False, slot: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Run the slow stack at `input_pos` (through the KV cache from `slot` on, if set up).

        Returns token logits and the hidden state for the fast stack (projected), both of the last
        position only unless `all_positions` ([B, S, vocab] / [B, S, fast_dim] then).
        """
        x = self.slow_stack(inp, input_pos, slot)
        if not all_positions:
            x = x[:, -1:]
        return self.heads(x, all_positions)

    def slow_stack(self, inp: Tensor, input_pos: Tensor, slot: int = 0) -> Tensor:
        """The last block's output [B, S, dim] at `input_pos`, the keys and values written to the caches from
        `slot` on (if set up); `forward_slow` without the heads (a prompt prefix needs only its cache)."""
        x = self.embed(inp)
        kv_length = int(input_pos[-1]) + 1
        if self.layers[0].attention.kv_cache is None and int(input_pos[0]) != 0:
            raise ValueError("positions after 0 need setup_caches() first")
        if kv_length > self.rope.size(0):
            raise ValueError(f"position {kv_length - 1} is beyond max_seq_len {self.rope.size(0)}")
        stack = fused_stack(self.layers, x) if inp.size(-1) == 1 else None
        if stack is not None:  # one cached position: each layer in one C++ call (rows in slots slot, slot + 1, ..)
            return stack(x, torch.arange(slot, slot + x.size(0)), input_pos.expand(x.size(0)), self.rope)
        positions = torch.arange(kv_length, device=inp.device)
        if inp.device.type == "cpu" and torch.equal(input_pos.long(), positions[-len(input_pos) :]):
            mask = None  # the newest positions, up to the last key (a prompt): causal_attention (a CPU kernel)
        else:
            mask = (positions.view(1, -1) <= input_pos.view(-1, 1)).view(1, 1, len(input_pos), kv_length)
        rope = self.rope[input_pos]
        for block in self.layers:
            x = block(x, rope, mask, input_pos, kv_length, slot)
        return x

    def forward_slow_rows(self, inp: Tensor, slots: list[int], positions: list[int]) -> tuple[Tensor, Tensor]:
        """One new column per row, inp [B, 1 + N, 1]: row b at `positions[b]` of cache slot `slots[b]`
        (cross-request batching). Returns logits [B, vocab] and the fast stack's input [B, fast_dim]."""
        if max(positions) >= self.rope.size(0):
            raise ValueError(f"position {max(positions)} is beyond max_seq_len {self.rope.size(0)}")
        x = self.embed(inp)
        stack = fused_stack(self.layers, x)
        if stack is not None:  # each layer in one C++ call (core/lm/fused.py)
            return self.heads(stack(x, torch.tensor(slots), torch.tensor(positions), self.rope))
        rope = self.rope[torch.tensor(positions, device=inp.device)].unsqueeze(1)
        for block in self.layers:
            x = block.decode_rows(x, rope, slots, positions)
        return self.heads(x)

    def decode_static(self, inp: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """One new column for every cache slot, inp [B, 1 + N, 1] (B = the slots set up), row b at
        `positions[b]` of slot b; rows the caller does not use may hold anything (their slot's cache is
        written at their position). Fixed shapes whatever the positions: what CUDA graphs replay
        (compile.py). Returns logits [B, vocab] and the fast stack's input [B, fast_dim]."""
        x = self.embed(inp)
        rope = self.rope[positions].unsqueeze(1)
        for block in self.layers:
            x = block.decode_static(x, rope, positions)
        return self.heads(x)

    def heads(self, x: Tensor, all_positions: bool = False) -> tuple[Tensor, Tensor]:
        """Token logits and the fast stack's input from the last block's output [B, S, dim] (S = 1 unless
        `all_positions`, which keeps the position axis)."""
        normed = self.norm(x)
        logits = F.linear(normed, self.embeddings.weight) if self.output is None else self.output(normed)
        hidden = self.fast_project_in(x)  # the last block's output, before the final norm
        if not all_positions:
            return logits[:, 0], hidden[:, 0]
        return logits, hidden

    # -- fast transformer ---------------------------------------------------------------------------
    def clear_fast_cache(self) -> None:
        for block in self.fast_layers:
            block.attention.kv_cache.clear()

    def forward_fast(self, x: Tensor, position: int) -> Tensor:
        """One codebook position of the fast stack: x [B, fast_dim] → logits [B, codebook_size]."""
        h = x.view(x.size(0), 1, -1)
        stack = fused_stack(self.fast_layers, h)
        if stack is not None:  # (row b in cache slot b, as below; attending over positions 0..position only
            # is the masked attention below: the masked scores weigh nothing)
            h = stack(h, torch.arange(x.size(0)), torch.full((x.size(0),), position), self.fast_rope)
            return self.fast_output(self.fast_norm(h))[:, 0]
        return self.fast_step(x, torch.tensor([position], device=x.device))

    def fast_step(self, x: Tensor, position: Tensor) -> Tensor:
        """`forward_fast` in torch's ops, the position a tensor [1]: one traced graph serves every position."""
        n = self.config.num_codebooks
        h = x.view(x.size(0), 1, -1)
        # The original attends over the whole N-long cache with a causal mask (zeros past `position`).
        mask = (torch.arange(n, device=x.device) <= position).view(1, 1, 1, n)
        rope = self.fast_rope[position]
        for block in self.fast_layers:
            h = block(h, rope, mask, position, n)
        return self.fast_output(self.fast_norm(h))[:, 0]

    def forward_fast_sequence(self, x: Tensor) -> Tensor:
        """The fast stack over whole frames without a cache: x [B, N, fast_dim] → logits [B, N, codebook_size]."""
        n = x.size(1)
        positions = torch.arange(n, device=x.device)
        mask = (positions.view(1, -1) <= positions.view(-1, 1)).view(1, 1, n, n)
        saved = [block.attention.kv_cache for block in self.fast_layers]
        for block in self.fast_layers:
            block.attention.kv_cache = None
        try:
            h = x
            for block in self.fast_layers:
                h = block(h, self.fast_rope[:n], mask, positions, n)
        finally:
            for block, cache in zip(self.fast_layers, saved, strict=True):
                block.attention.kv_cache = cache
        return self.fast_output(self.fast_norm(h))


def fused_stack(layers: nn.ModuleList, h: Tensor) -> fused.LayerStep | None:
    """A CPU decode step through all `layers` as core/lm/fused.py's C++ call (one a layer where torch.compile
    traces it), or None where any layer would not take them."""
    if layers[0].attention.kv_cache is None:
        return None
    kind = fused.decode_kind(layers[0], h)
    if kind is None:
        return None
    stack = fused.layer_stack(layers, kind)
    if stack is not None:
        return stack
    steps = fused.layer_steps(layers, kind)
    if any(step is None for step in steps):
        return None

    def layer_by_layer(x: Tensor, slots: Tensor, positions: Tensor, rope: Tensor) -> Tensor:
        for step in steps:
            x = step(x, slots, positions, rope)
        return x

    return layer_by_layer
