"""Split a long text into segments that are synthesized one prompt each (in the same voice).

The model was trained on utterances, and one prompt holds at most 4,096 frames, so a long text is
cut at sentence ends (then, for an over-long sentence, at commas, then spaces) and the pieces are
merged back greedily up to `max_weight`, where a CJK character weighs about as much speech as three
Latin letters. A short text stays one segment, exactly as given.
"""

from __future__ import annotations

import re

MAX_SEGMENT_WEIGHT = 180  # ~180 Latin characters or ~60 CJK characters: 10-15 s of speech
# Cut no finer to fit a model's context (frontend.read_text halves 180 down to 22: ~7 CJK characters or a few
# words): finer pieces only re-read the transcript (see frontend.read_text).
MIN_PIECE_WEIGHT = 12

# After a sentence end (CJK ones need no space after them), a newline, or a clause mark as a fallback.
_SENTENCE_END = re.compile(r"(?<=[。！？!?…；;])|(?<=[.])(?=\s)|\n+")
_CLAUSE_END = re.compile(r"(?<=[，、,：:])")
_PHONE_TAG = re.compile(r"<p:[^>]*>")
_TAG = re.compile(r"<p:[^>]*>|</?(?:zh|jp|en)>", re.IGNORECASE)  # cut around, never inside
_CJK = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[0-9A-Za-z\u00c0-\u024f]")  # letters and digits read as one word or number


def text_weight(text: str) -> int:
    """About how long a text takes to say, in Latin-character units."""
    cjk = len(_CJK.findall(text))
    return len(text) + 2 * cjk


def split_text(text: str, max_weight: int = MAX_SEGMENT_WEIGHT) -> list[str]:
    """Segments of `text` in order, each within `max_weight` unless one word alone is longer.
    Merged pieces keep the text between them as written."""
    if max_weight < 1:
        raise ValueError("max_weight must be >= 1")
    text = text.strip()
    if text_weight(text) <= max_weight:
        return [text] if text else []
    spans = []  # (start, end) of the pieces, in order
    for start, end in _spans(text, 0, len(text), _SENTENCE_END):
        if text_weight(text[start:end]) <= max_weight:
            spans.append((start, end))
            continue
        for c_start, c_end in _spans(text, start, end, _CLAUSE_END):
            if text_weight(text[c_start:c_end]) <= max_weight:
                spans.append((c_start, c_end))
            else:
                spans.extend(_word_spans(text, c_start, c_end, max_weight))
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and text_weight(text[merged[-1][0] : end]) <= max_weight:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return [text[a:b].strip() for a, b in merged]


def _spans(text: str, start: int, end: int, pattern: re.Pattern) -> list[tuple[int, int]]:
    """Non-blank pieces of text[start:end] cut at `pattern`, never inside a phone or language tag."""
    protected = _TAG.sub(lambda m: "\0" * len(m.group(0)), text[start:end])
    cuts = {start, end}
    for m in pattern.finditer(protected):
        cuts.update((start + m.start(), start + m.end()))
    bounds = sorted(cuts)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def _word_spans(text: str, start: int, end: int, max_weight: int) -> list[tuple[int, int]]:
    """At spaces; a word still over max_weight (alone, or holding CJK text even beside spaced words) every
    max_weight // 3 characters, moved back out of a Latin word or a number, and past a language tag (text
    with a phone tag is not cut but at spaces)."""
    words = _spans(text, start, end, re.compile(r"\s+"))
    if _PHONE_TAG.search(text[start:end]):
        return words
    spans = []
    for a, b in words:
        # (beside other words, a long one of Latin letters or symbols stays whole: a URL, a run of "*")
        cut = text_weight(text[a:b]) > max_weight and (len(words) == 1 or _CJK.search(text, a, b))
        spans.extend(_cut_word(text, a, b, max_weight) if cut else [(a, b)])
    return spans


def _cut_word(text: str, start: int, end: int, max_weight: int) -> list[tuple[int, int]]:
    tags = [(start + m.start(), start + m.end()) for m in _TAG.finditer(text[start:end])]
    step = max(1, max_weight // 3)
    cuts = {start, end}
    for cut in range(start + step, end, step):
        cut = next((b for a, b in tags if a < cut < b), cut)
        inside = cut
        while inside > start and _LATIN.match(text, inside - 1) and _LATIN.match(text, inside):
            inside -= 1  # ("2023" or "Python" read whole: "20" | "23" would be read as two numbers)
        cuts.add(inside if inside > start and cut - inside < step else cut)
    bounds = sorted(cuts)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]
