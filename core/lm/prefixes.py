"""Keys and values of prompt prefixes kept between requests: a voice's part of the prompt prefilled once.

Why: a prompt starts with what only the voice decides (S1: the references' transcripts and codes, ~250
positions for a 10 s voice, core/s1/prompt.py; v0.2: `[INST]` and the reference's transcript, the
`prefix_length` of core/lm/generate.py's Sequence), and a prefix's keys and values depend on nothing after
it. A request whose prefix was prefilled before copies them into its cache slot and prefills only the
rest (S1: its first frame ~1 s sooner at int8 on 2 vCPUs).

A prompt with a reusable prefix is always prefilled in the two pieces (prefix, then the rest), cached or
not, so its frames do not depend on what the cache held (the two-piece prefill rounds differently from a
one-piece one, as batching does). Entries are kept by exact prefix content, least recently used first
out once `max_bytes` is exceeded. Any model whose `layers[i].attention.kv_cache` holds `k_cache` and
`v_cache` as [slots, heads, positions, head_dim] works with it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import Tensor, nn

# Up to 512 MB of keys and values (S1-mini float32: ~0.23 MB a position, so ~8 voices of 10 s; v0.2 int8 or
# int4, a bfloat16 cache: ~0.1 MB a position, ~6 MB a transcript of 10 s).
PREFIX_CACHE_BYTES = 512 * 2**20
MIN_PREFIX = 16  # positions; a shorter prefix is not worth a cache entry


class PrefixCache:
    def __init__(self, max_bytes: int = PREFIX_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, list[tuple[Tensor, Tensor]]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def key(prefix: Tensor) -> str:
        data = prefix.to(torch.int32).contiguous().cpu().numpy()
        return hashlib.sha256(str(data.shape).encode() + data.tobytes()).hexdigest()

    def restore(self, model: nn.Module, key: str, length: int, slot: int) -> bool:
        """Copy the keys and values of the prefix `key` (its `length` positions) into cache `slot` if they are
        kept; whether they were."""
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return False
        self.entries.move_to_end(key)
        for block, (keys, values) in zip(model.layers, entry, strict=True):
            cache = block.attention.kv_cache
            cache.k_cache[slot, :, :length] = keys
            cache.v_cache[slot, :, :length] = values
        self.hits += 1
        return True

    def keep(self, model: nn.Module, key: str, length: int, slot: int) -> None:
        """Keep the first `length` keys and values of cache `slot`, just prefilled there with the prefix `key`."""
        caches = [block.attention.kv_cache for block in model.layers]
        entry = [(c.k_cache[slot, :, :length].clone(), c.v_cache[slot, :, :length].clone()) for c in caches]
        size = entry_bytes(entry)
        if size > self.max_bytes:
            return
        if key in self.entries:
            self.bytes -= entry_bytes(self.entries.pop(key))
        self.entries[key] = entry
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= entry_bytes(self.entries.popitem(last=False)[1])


def entry_bytes(entry: list[tuple[Tensor, Tensor]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in entry)
