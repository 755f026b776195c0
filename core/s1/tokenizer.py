"""The S1 tokenizer: tiktoken BPE ranks from `tokenizer.tiktoken` plus the specials of `special_tokens.json`.

Kept exactly as the checkpoints were trained (SPEC §4): the pre-tokenisation regex including its
literal `?!` alternative (an escaping slip in the original, kept because ids must match training),
special ids assigned by the file's KEY ORDER (the ids written in the file are ignored), and every
special string in a text recognised as a special token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path

import tiktoken

TOKENIZER_FILENAME = "tokenizer.tiktoken"
SPECIAL_TOKENS_FILENAME = "special_tokens.json"
IM_END_TOKEN = "<|im_end|>"
INTERLEAVE_TOKEN = "<|interleave|>"
SPEAKER_TOKEN = "<|speaker:{speaker}|>"

PRETOKENIZE_PATTERN = "|".join(
    [
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
        r"\p{P}",
        r"[^\r\n\p{L}\p{N}]?\p{L}+",
        r"\p{N}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(\?!\S)",  # sic: matches the literal text "?!" (see module docstring)
        r"\s+",
    ]
)
MAX_ENCODE_CHARS = 400_000  # the original encodes the text in pieces of this many characters

BUILTIN_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|pad|>",
    "<|im_start|>",
    IM_END_TOKEN,
    "<|phoneme_start|>",
    "<|phoneme_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    "<|text|>",
    "<|voice|>",
    INTERLEAVE_TOKEN,
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio|>",
    *(f"<|semantic:{i}|>" for i in range(4096)),
]
SEMANTIC_PATTERN = re.compile(r"<\|semantic:(\d+)\|>")


class S1TokenizerError(ValueError):
    """The tokenizer files are missing or malformed."""


def read_bpe_ranks(path: Path) -> dict[bytes, int]:
    if not path.is_file():
        raise S1TokenizerError(f"tokenizer file not found: {path}")
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise S1TokenizerError(f"{path}:{number}: expected '<base64> <rank>'")
        token, rank = parts
        if token == "=":  # the original's writer emits '=' for an empty token; its reader skips it
            continue
        try:
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (binascii.Error, ValueError):
            raise S1TokenizerError(f"{path}:{number}: bad entry {line[:60]!r}") from None
    if not ranks:
        raise S1TokenizerError(f"{path} holds no BPE ranks")
    return ranks


def read_special_tokens(path: Path) -> list[str]:
    """Special token strings in file order (missing file → the original's built-in list)."""
    if not path.is_file():
        return list(BUILTIN_SPECIAL_TOKENS)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise S1TokenizerError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, (dict, list)) or not all(isinstance(t, str) for t in data):
        raise S1TokenizerError(f"{path} must be a JSON object (or list) of special token strings")
    return list(data)


class S1Tokenizer:
    def __init__(self, ranks: dict[bytes, int], special_tokens: list[str], name: str = "s1"):
        first = len(ranks)
        self.special_ids = {token: first + i for i, token in enumerate(special_tokens)}
        semantic = {}
        for token, token_id in self.special_ids.items():
            match = SEMANTIC_PATTERN.fullmatch(token)
            if match:
                semantic[int(match.group(1))] = token_id
        if 0 not in semantic:
            raise S1TokenizerError("special tokens hold no <|semantic:0|>")
        if IM_END_TOKEN not in self.special_ids:
            raise S1TokenizerError(f"special tokens hold no {IM_END_TOKEN}")
        self.semantic_begin_id = semantic[0]
        self.semantic_end_id = semantic[max(semantic)]
        # The model treats [begin, end] as one block of codes; a gap would silently shift codes.
        if sorted(semantic.values()) != list(range(self.semantic_begin_id, self.semantic_end_id + 1)):
            raise S1TokenizerError("the <|semantic:i|> tokens are not one contiguous block of ids")
        self.im_end_id = self.special_ids[IM_END_TOKEN]
        self.bpe_size = first
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_ids
        )

    @property
    def num_semantic(self) -> int:
        return self.semantic_end_id - self.semantic_begin_id + 1

    @property
    def total_size(self) -> int:
        return self.bpe_size + len(self.special_ids)

    def token_id(self, token: str) -> int:
        return self.special_ids[token]

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        allowed = self.encoding.special_tokens_set if allow_special else set()
        ids: list[int] = []
        for start in range(0, len(text), MAX_ENCODE_CHARS):
            ids += self.encoding.encode(
                text[start : start + MAX_ENCODE_CHARS], allowed_special=allowed, disallowed_special=()
            )
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def plain_text(self, text: str) -> str:
        """`text` without the special-token strings in it (each is read as one control token, not as text)."""
        return self.decode([i for i in self.encode(text) if i < self.bpe_size])


def load_s1_tokenizer(folder: str | Path) -> S1Tokenizer:
    folder = Path(folder)
    ranks = read_bpe_ranks(folder / TOKENIZER_FILENAME)
    return S1Tokenizer(ranks, read_special_tokens(folder / SPECIAL_TOKENS_FILENAME), name=folder.name or "s1")
