"""The text2semantic transformer (LLaMA-style, 4 parallel codebook heads) with a static KV cache.

Numerics follow the original on purpose: interleaved RoPE from a bfloat16 cos/sin table with the
rotation computed in float32, RMSNorm in float32, codebook value 0 embedded as zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused
from .config import ModelArgs, find_multiple
from .kernels import KERNEL_CACHE_DTYPES, attention_kernel_layout, uses_cpu_kernels
from .norm import RMSNorm
from .paths import Linear
from .prefill_attention import causal_attention
from .rope import apply_rope, rope_table


@dataclass
class ForwardResult:
    token_logits: Tensor  # [B, S, vocab_size]
    codebook_logits: Tensor  # [B, S, num_codebooks, codebook_size]


class KVCache(nn.Module):
    """Keys and values of one layer for `slots` sequences: [slots, n_kv_heads, seq_len, head_dim].

    On CPU the memory is left uninitialised (pages are committed only as positions get written, and
    only the filled prefix is ever read); the static-shape path reads the whole cache, so it is zeroed.
    """

    def __init__(
        self,
        slots: int,
        seq_len: int,
        n_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device=None,
        zeroed: bool = True,
    ):
        super().__init__()
        shape = (slots, n_heads, seq_len, head_dim)
        make = torch.zeros if zeroed else torch.empty
        self.register_buffer("k_cache", make(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", make(shape, dtype=dtype, device=device), persistent=False)

    def copy_slot(self, source: int, targets: list[int], length: int) -> None:
        """Give the `targets` slots the first `length` positions of `source` (a shared prompt)."""
        index = torch.tensor(targets, device=self.k_cache.device)
        self.k_cache[index, :, :length] = self.k_cache[source : source + 1, :, :length]
        self.v_cache[index, :, :length] = self.v_cache[source : source + 1, :, :length]


class Attention(nn.Module):
    def __init__(self, config: ModelArgs):
        super().__init__()
        self.n_head = config.n_head
        self.n_local_heads = config.n_local_heads
        self.head_dim = config.head_dim
        self.dim = config.dim
        self.wqkv = Linear(config.dim, (config.n_head + 2 * config.n_local_heads) * config.head_dim, bias=False)
        self.wo = Linear(config.dim, config.dim, bias=False)
        self.kv_cache: KVCache | None = None
        self.kernel_layout = attention_kernel_layout(self.n_head, self.n_local_heads, self.head_dim)

    def _qkv(self, x: Tensor, freqs_cis: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, S, dim] -> rotated q [B, H, S, D], k and v [B, Hkv, S, D]."""
        bsz, seqlen, _ = x.shape
        kv_size = self.n_local_heads * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(bsz, seqlen, self.n_head, self.head_dim), freqs_cis)
        k = apply_rope(k.view(bsz, seqlen, self.n_local_heads, self.head_dim), freqs_cis)
        v = v.view(bsz, seqlen, self.n_local_heads, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool = False) -> Tensor:
        k, v = k.to(q.dtype), v.to(q.dtype)  # a bfloat16 cache under float32 compute
        if causal:  # the queries are the last of the keys' positions (a prompt's prefill)
            return causal_attention(q, k, v)
        if self.n_head != self.n_local_heads:
            k = k.repeat_interleave(self.n_head // self.n_local_heads, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_local_heads, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _out(self, y: Tensor) -> Tensor:
        bsz, _, seqlen, _ = y.shape
        return self.wo(y.transpose(1, 2).contiguous().view(bsz, seqlen, self.dim))

    def forward(self, x: Tensor, freqs_cis: Tensor, mask: Tensor) -> Tensor:
        """The whole sequence at once, no cache."""
        q, k, v = self._qkv(x, freqs_cis)
        return self._out(self._attend(q, k, v, mask))

    def prefill(self, x: Tensor, freqs_cis: Tensor, slot: int, start: int) -> Tensor:
        """Positions start .. start + S - 1 of one sequence (x [1, S, dim]) into cache slot `slot`."""
        q, k, v = self._qkv(x, freqs_cis)
        end = start + x.size(1)
        cache = self.kv_cache
        cache.k_cache[slot, :, start:end] = k[0]
        cache.v_cache[slot, :, start:end] = v[0]
        if start == 0:  # the whole prefix is new (and not rounded to a bfloat16 cache's precision)
            keys, values = k, v
        else:
            keys, values = cache.k_cache[slot : slot + 1, :, :end], cache.v_cache[slot : slot + 1, :, :end]
        return self._out(self._attend(q, keys, values, None, causal=True))

    def prefill_packed(
        self, x: Tensor, freqs_cis: Tensor, lengths: list[int], slots: list[int], starts: list[int]
    ) -> Tensor:
        """Several prompts' positions packed end to end (x [1, sum(lengths), dim]): prompt i's positions
        starts[i] .. starts[i] + lengths[i] - 1 into cache slot `slots[i]` (its earlier ones already there).
        The linears see all rows at once (one pass over the weights); each prompt attends only over its own
        keys, causally, exactly as `prefill` alone would."""
        q, k, v = self._qkv(x, freqs_cis)
        cache, outs, row = self.kv_cache, [], 0
        for length, slot, start in zip(lengths, slots, starts, strict=True):
            rows, end = slice(row, row + length), start + length
            keys, values = k[:, :, rows], v[:, :, rows]
            cache.k_cache[slot, :, start:end] = keys[0]
            cache.v_cache[slot, :, start:end] = values[0]
            if start:  # attends over the kept positions too
                keys, values = cache.k_cache[slot : slot + 1, :, :end], cache.v_cache[slot : slot + 1, :, :end]
            outs.append(self._attend(q[:, :, rows], keys, values, None, causal=True))
            row += length
        return self._out(torch.cat(outs, dim=2))

    def decode(self, x: Tensor, rope: Tensor, slots: Tensor, positions: Tensor, static: bool) -> Tensor:
        """One new position per sequence: x [B, 1, dim]; row b is at `positions[b]` in cache slot `slots[b]`.

        `rope` is the whole RoPE table. Each row attends over its own filled prefix, so a row's result
        does not depend on the others. `static` (rows = slots 0..B-1) attends over the whole cache
        with a mask instead: fixed shapes for CUDA graphs.
        """
        cache = self.kv_cache
        bsz = x.size(0)
        if not static and self.kernel_layout and uses_cpu_kernels(x) and cache.k_cache.dtype in KERNEL_CACHE_DTYPES:
            y = torch.ops.fishtts.decode_attention(
                self.wqkv(x.view(bsz, self.dim)),
                cache.k_cache,
                cache.v_cache,
                slots,
                positions,
                rope,
                self.n_head,
                self.n_local_heads,
            )
            return self.wo(y.view(bsz, 1, self.dim))
        q, k, v = self._qkv(x, rope[positions].unsqueeze(1))
        cache.k_cache[slots, :, positions] = k[:, :, 0].to(cache.k_cache.dtype)  # (a bfloat16 cache: int8, int4)
        cache.v_cache[slots, :, positions] = v[:, :, 0].to(cache.v_cache.dtype)
        if static:
            mask = torch.arange(cache.k_cache.size(2), device=x.device) <= positions[:, None]
            y = self._attend(q, cache.k_cache[:bsz], cache.v_cache[:bsz], mask[:, None, None, :])
        else:
            rows = []
            for b, (slot, pos) in enumerate(zip(slots.tolist(), positions.tolist())):
                keys, values = (
                    cache.k_cache[slot : slot + 1, :, : pos + 1],
                    cache.v_cache[slot : slot + 1, :, : pos + 1],
                )
                rows.append(self._attend(q[b : b + 1], keys, values, None))
            y = torch.cat(rows)
        return self._out(y)


class FeedForward(nn.Module):
    def __init__(self, config: ModelArgs):
        super().__init__()
        self.w1 = Linear(config.dim, config.intermediate_size, bias=False)
        self.w3 = Linear(config.dim, config.intermediate_size, bias=False)
        self.w2 = Linear(config.intermediate_size, config.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelArgs):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x: Tensor, attend) -> Tensor:
        """`attend(normed x)` is the attention of the mode at hand (full, prefill or decode)."""
        h = x + attend(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, config: ModelArgs):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.total_vocab, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.output = Linear(config.dim, config.total_vocab, bias=False)
        # Derived tables are not loaded from checkpoints (non-persistent); see init_buffers().
        self.register_buffer("freqs_cis", torch.empty(0), persistent=False)
        self.register_buffer("causal_mask", torch.empty(0, dtype=torch.bool), persistent=False)
        self.register_buffer("embedding_offsets", torch.empty(0, dtype=torch.int), persistent=False)
        self.cache_batch_size = -1
        self.cache_seq_len = -1
        self.cache_zeroed = False
        self.kv_cache_dtype: torch.dtype | None = None  # None: the compute dtype

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute RoPE table and causal mask; needed after building on the meta device."""
        device = device or self.embeddings.weight.device
        n = self.config.max_seq_len
        self.freqs_cis = rope_table(n, self.config.head_dim, self.config.rope_base).to(device)
        self.causal_mask = torch.tril(torch.ones(n, n, dtype=torch.bool, device=device))
        cfg = self.config  # where each row of x starts in the one table: text, then each codebook's block
        starts = [0] + [cfg.vocab_size + i * cfg.codebook_size for i in range(cfg.num_codebooks)]
        self.embedding_offsets = torch.tensor(starts, dtype=torch.int, device=device).view(-1, 1)

    @property
    def prompt_attention_layout(self) -> tuple[int, int, int]:
        """(query heads, key/value heads, head size) of a prompt's attention (prefill_attention.py)."""
        c = self.config
        return (c.n_head, c.n_local_heads, c.head_dim)

    def setup_caches(
        self, slots: int, seq_len: int, dtype: torch.dtype | None = None, zeroed: bool | None = None
    ) -> None:
        """KV caches for `slots` sequences of up to `seq_len` positions (rounded up to a multiple of 8).

        Like the original, caches are only reallocated when a larger one is needed. `zeroed`
        (default: on CUDA) is needed by the static-shape decode, which reads the whole cache.
        """
        device = self.output.weight.device
        zeroed = device.type == "cuda" if zeroed is None else zeroed
        dtype = dtype or self.kv_cache_dtype or self.embeddings.weight.dtype  # (linears may hold int8)
        current = self.layers[0].attention.kv_cache
        if (
            self.cache_seq_len >= seq_len
            and self.cache_batch_size >= slots
            and (self.cache_zeroed or not zeroed)
            and current.k_cache.dtype == dtype
        ):
            return
        seq_len = min(find_multiple(seq_len, 8), max(self.config.max_seq_len, 8))
        for layer in self.layers:
            layer.attention.kv_cache = None  # free the old cache before allocating the new one
            layer.attention.kv_cache = KVCache(
                slots, seq_len, self.config.n_local_heads, self.config.head_dim, dtype, device, zeroed
            )
        self.cache_batch_size, self.cache_seq_len, self.cache_zeroed = slots, seq_len, zeroed

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.cache_batch_size = self.cache_seq_len = -1

    @contextmanager
    def decode_probe(self, rows: int, position: int) -> Iterator[Callable[[], object]]:
        """A decode step of `rows` sequences at `position` (at most the model's last), over zeroed scratch
        caches, as a callable: what the autotuner times its decode candidates with. The caches in place
        before are back afterwards."""
        position = min(position, self.config.max_seq_len - 1)
        saved = [layer.attention.kv_cache for layer in self.layers]
        sizes = self.cache_batch_size, self.cache_seq_len, self.cache_zeroed
        self.clear_caches()
        try:
            self.setup_caches(rows, position + 1, zeroed=True)
            device = self.output.weight.device
            x = torch.zeros(rows, 1 + self.config.num_codebooks, 1, dtype=torch.int, device=device)
            slots = torch.arange(rows, device=device)
            positions = torch.full_like(slots, position)
            yield lambda: self.decode(x, slots, positions)
        finally:
            for layer, cache in zip(self.layers, saved, strict=True):
                layer.attention.kv_cache = cache
            self.cache_batch_size, self.cache_seq_len, self.cache_zeroed = sizes

    def embed(self, x: Tensor) -> Tensor:
        """x [B, 1 + num_codebooks, S] -> [B, S, dim]: text embedding + every codebook's embedding."""
        # All rows in one lookup: as ~25 small ops a decode step (right after its weights streamed through the
        # caches) it took 0.2-0.8 ms of an int4 / int8 step on an AMD EPYC.
        embeds = self.embeddings(x + self.embedding_offsets)  # [B, 1 + num_codebooks, S, dim]
        # The padding value contributes nothing (prompt text columns carry 0 on codebook rows).
        padding = x == self.config.codebook_padding_idx
        padding[:, 0] = False  # (the text row has no padding value)
        return embeds.masked_fill_(padding.unsqueeze(-1), 0).sum(dim=1)

    def _heads(self, x: Tensor) -> ForwardResult:
        logits = self.output(self.norm(x))
        cfg = self.config
        token_logits = logits[..., : cfg.vocab_size]
        codebook_logits = logits[..., cfg.vocab_size :].unflatten(-1, (cfg.num_codebooks, cfg.codebook_size))
        return ForwardResult(token_logits, codebook_logits)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> ForwardResult:
        """Full-sequence forward without cache (x [B, 5, S]); key_padding_mask True = masked key."""
        seq_len = x.size(2)
        h = self.embed(x)
        mask = self.causal_mask[None, None, :seq_len, :seq_len]
        if key_padding_mask is not None:
            mask = mask & key_padding_mask[:, None, None, :].logical_not()
        freqs_cis = self.freqs_cis[:seq_len]
        for layer in self.layers:
            h = layer(h, lambda n, a=layer.attention: a(n, freqs_cis, mask))
        return self._heads(h)

    def _check_cache(self, needed: int) -> None:
        if self.cache_seq_len < needed:
            raise RuntimeError("setup_caches() must be called (with room for the positions) before generating")

    def prefill(self, x: Tensor, slot: int = 0, start: int = 0) -> ForwardResult:
        """Positions start .. start + S - 1 of one sequence, x [1, 1 + C, S], into cache `slot`;
        the heads' output for the last position only (all that sampling needs)."""
        return self._heads(self.prefill_cache(x, slot, start)[:, -1:])

    def prefill_cache(self, x: Tensor, slot: int = 0, start: int = 0) -> Tensor:
        """`prefill` without the heads (a prompt's prefix needs only its keys and values): the last layer's
        output [1, S, dim]."""
        end = start + x.size(2)
        self._check_cache(end)
        h = self.embed(x)
        freqs_cis = self.freqs_cis[start:end]
        for layer in self.layers:
            h = layer(h, lambda n, a=layer.attention: a.prefill(n, freqs_cis, slot, start))
        return h

    def prefill_many(self, prompts: list[Tensor], slots: list[int], starts: list[int] | None = None) -> ForwardResult:
        """Prompts of several sequences (each [1 + C, S_i], any lengths) in one forward, packed end to end
        with no padding, prompt i into cache slot `slots[i]` from position `starts[i]` (default 0; the
        positions before it already in that slot); the heads' output for each prompt's last position,
        [G, 1, ...] in prompt order.

        Why: a quantized model's prefill widens all its weights once per call (bfloat16 / float32
        matmul), so G prompts in one call pay that once. Rows meet only in the linears' matmul, whose
        float rounding may depend on the row count: not bit-exact with `prefill` one by one (float32
        stays one by one, see generate.regroups_prefill)."""
        lengths = [p.size(1) for p in prompts]
        starts = starts or [0] * len(prompts)
        self._check_cache(max(s + n for s, n in zip(starts, lengths, strict=True)))
        h = self.embed(torch.cat(prompts, dim=1).unsqueeze(0))
        freqs_cis = torch.cat([self.freqs_cis[s : s + n] for s, n in zip(starts, lengths, strict=True)])
        for layer in self.layers:
            h = layer(h, lambda n, a=layer.attention: a.prefill_packed(n, freqs_cis, lengths, slots, starts))
        last = torch.tensor(lengths, device=h.device).cumsum(0) - 1
        return self._heads(h[0, last].unsqueeze(1))

    def decode(self, x: Tensor, slots: Tensor, positions: Tensor, static: bool = False) -> ForwardResult:
        """One new frame per sequence: x [B, 1 + C, 1]; row b at `positions[b]` of cache slot `slots[b]`
        (int64 tensors [B]). Rows never see each other: a sequence decodes the same alone or batched."""
        h = self.embed(x)
        kind = None if static else fused.decode_kind(self.layers[0], h)
        stack = None if kind is None else fused.layer_stack(self.layers, kind)
        if stack is not None:  # every layer fusable: all in one C++ call (fused.py)
            return self._heads(stack(h, slots, positions, self.freqs_cis))
        steps = [None] * len(self.layers) if kind is None else fused.layer_steps(self.layers, kind)
        for layer, step in zip(self.layers, steps, strict=True):
            if step is not None:  # the same ops as the modules', in one C++ call (fused.py)
                h = step(h, slots, positions, self.freqs_cis)
            else:
                h = layer(h, lambda n, a=layer.attention: a.decode(n, self.freqs_cis, slots, positions, static))
        return self._heads(h)
