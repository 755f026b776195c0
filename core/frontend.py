"""The model-free front end: text (+ the reference's transcript) -> the prompt strings the engine reads.

The engine tokenizes exactly what `read_text` returns, and the HTTP phoneme preview shows the same
pieces, so what a user previews is what the model gets. Layout of one prompt string (the original's
`encode_tokens`, SPEC-text §3.2): `[INST] {[SPK: name] }{transcript} {text} [/INST]`, the text part
as `<p:X>` phone tags with g2p, or cleaned text without.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from .text.clean import clean_text
from .text.errors import NothingToSpeak, TextError
from .text.prompt import phones_to_prompt
from .text.segment import DEFAULT_ORDER, Segment, parse_text_to_segments, segments_to_dicts, segments_to_phones
from .text.split import MAX_SEGMENT_WEIGHT, MIN_PIECE_WEIGHT, split_text

log = logging.getLogger(__name__)

# Words in each language the g2p reads: their first use loads that language's dictionaries and models
# (for English a word out of the dictionary too, which loads the network that spells such words, and a
# number, whose reader took 2.5-3 s to load).
WARM_UP_TEXTS = ("Hello, fishtts 1.", "你好。", "こんにちは。")
_SPEAKABLE = re.compile(r"[^\W_]")  # a letter or digit of any script (CJK and kana included)
_LANGUAGE_TAG = re.compile(r"<(/?)(zh|jp|en)>", re.IGNORECASE)


@dataclass(frozen=True)
class PromptText:
    """One piece of the input text and the string the engine reads for it."""

    text: str  # the piece of the input text
    prompt: str  # what the tokenizer reads
    segments: tuple[Segment, ...] = ()  # its language runs and phones (with g2p)


def read_piece(
    text: str,
    transcript: str | None = None,
    *,
    use_g2p: bool = True,
    speaker: str | None = None,
    order: str = DEFAULT_ORDER,
) -> PromptText:
    """The prompt for `text` read whole (no splitting)."""
    check_speakable(clean_text(text))
    try:
        head, segments = _read_head(text if transcript is None else f"{transcript} {text}", use_g2p, speaker, order)
    except TextError as exc:
        raise _blame_transcript(exc, transcript, use_g2p, order) from None
    if use_g2p and not _has_phones(text, segments if transcript is None else None, order):
        raise NothingToSpeak()
    return PromptText(text, f"{head} [/INST]", segments)


def _blame_transcript(exc: TextError, transcript: str | None, use_g2p: bool, order: str) -> TextError:
    """`exc` (from the transcript and text read together), naming the transcript where it fails alone: a saved
    voice's transcript with a tag g2p cannot read failed every request with an error that seemed the text's."""
    if transcript is None or not use_g2p:
        return exc
    try:
        parse_text_to_segments(transcript, order)
    except TextError as alone:
        return TextError(f"the reference's transcript: {alone}")
    return exc


def check_speakable(text: str) -> None:
    """NothingToSpeak unless `text` holds a letter or digit of some script: only symbols or emoji would
    reach the model as an empty prompt, and it would babble up to its frame budget."""
    if not _SPEAKABLE.search(text):
        raise NothingToSpeak()


def _has_phones(text: str, segments: tuple[Segment, ...] | None, order: str) -> bool:
    """Whether g2p reads anything in `text` (e.g. not in "<zh>Hello</zh>"); `segments`: its own reading,
    if at hand. Read with a transcript in front, the transcript's phones would hide an empty text, so
    the text is read alone (a fraction of a millisecond to a few for a sentence)."""
    if segments is None:
        try:
            segments = tuple(parse_text_to_segments(text, order))
        except TextError:  # tags opened in the transcript: only the whole prompt's reading says
            return True
    return any(segment.phones for segment in segments)


def prompt_head(
    transcript: str, *, use_g2p: bool = True, speaker: str | None = None, order: str = DEFAULT_ORDER
) -> str:
    """How every prompt read with this transcript begins: `[INST] {[SPK: name] }{transcript}`, the transcript
    read alone. The part of a prompt that only the voice decides, whose keys and values the LM keeps per
    voice; a prompt's own reading of the transcript may differ where a word runs on into the text (the
    engine keeps the tokens the two share)."""
    return _read_head(transcript, use_g2p, speaker, order)[0]


def _read_head(string: str, use_g2p: bool, speaker: str | None, order: str) -> tuple[str, tuple[Segment, ...]]:
    """`string` read as a prompt, without the closing ` [/INST]`, and its segments (with g2p)."""
    segments: tuple[Segment, ...] = ()
    if use_g2p:
        segments = tuple(parse_text_to_segments(string, order))
        string = phones_to_prompt(segments_to_phones(list(segments)))
    else:
        string = clean_text(string)
    if speaker is not None:
        string = f"[SPK: {speaker}] {string}"
    return f"[INST] {string}", segments


def read_text(
    text: str,
    transcript: str | None = None,
    *,
    use_g2p: bool = True,
    speaker: str | None = None,
    order: str = DEFAULT_ORDER,
    max_weight: int = MAX_SEGMENT_WEIGHT,
    fits: Callable[[str], bool] | None = None,
) -> list[PromptText]:
    """The pieces a long text is synthesized in (core/text/split.py), each with the transcript in front.

    `fits(prompt)` (the engine's: does the prompt leave half the model's context for audio?) splits a
    piece further while it says no, but never below MIN_PIECE_WEIGHT and not at all where the transcript
    (with its clip) alone already says no: splitting could not help there, and went on to read the text
    letter by letter, re-reading the transcript each time (a 1,000-character one took minutes of g2p).
    Such a piece keeps less than half the context for its audio; the prompt's own check refuses one
    over the whole context. Without `fits` (no model at hand) the pieces are as for a large context.
    """
    out: list[PromptText] = []
    room: bool | None = None  # whether the transcript alone fits, once a piece did not

    def add(piece_text: str, weight: int) -> None:
        nonlocal room
        try:
            piece = read_piece(piece_text, transcript, use_g2p=use_g2p, speaker=speaker, order=order)
        except NothingToSpeak:  # a piece (or part) of symbols in a longer text is left out, not babbled
            return
        if fits is None or fits(piece.prompt):
            out.append(piece)
            return
        if room is None:
            head = prompt_head(transcript, use_g2p=use_g2p, speaker=speaker, order=order) if transcript else ""
            room = fits(f"{head} [/INST]")
        smaller = split_text(piece_text, weight // 2) if room and weight // 2 >= MIN_PIECE_WEIGHT else []
        if len(smaller) < 2:
            out.append(piece)
            return
        for part in carry_language_tags(smaller):
            add(part, weight // 2)

    pieces = carry_language_tags(split_text(text, max_weight) or [text])
    for piece_text in pieces:
        add(piece_text, max_weight)
    if not out:
        raise NothingToSpeak()
    return out


def carry_language_tags(pieces: list[str]) -> list[str]:
    """Consecutive pieces of one text, each closed under the `<zh>`/`<jp>`/`<en>` tags open around it: each
    piece is read alone, so a tagged passage longer than a piece keeps its language in every one (its
    closing tag would otherwise have no opening one, a 422)."""
    if len(pieces) < 2:
        return pieces
    carried, stack = [], []
    for piece in pieces:
        opened = list(stack)
        for m in _LANGUAGE_TAG.finditer(piece):
            if not m[1]:
                stack.append(m[2])
            elif stack and stack[-1] == m[2]:
                stack.pop()
            else:
                return pieces  # tags that do not pair: the text's own reading says where
        carried.append("".join(f"<{name}>" for name in opened) + piece + "".join(f"</{name}>" for name in stack[::-1]))
    return carried


def prompt_string(
    text: str,
    transcript: str | None = None,
    *,
    use_g2p: bool = True,
    speaker: str | None = None,
    order: str = DEFAULT_ORDER,
) -> str:
    """The prompt string for `text` read whole (the CLI's `generate`, parity checks)."""
    return read_piece(text, transcript, use_g2p=use_g2p, speaker=speaker, order=order).prompt


def line_segments(text: str, order: str = DEFAULT_ORDER) -> list[dict]:
    """Each non-blank line's language runs and phones on its own (the original UI's preview rows);
    a line the front end cannot read raises ValueError naming it."""
    rows = []
    for index, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                segments = parse_text_to_segments(line, order)
            except ValueError as exc:
                raise ValueError(f"text: line {index}: {exc}") from None
            rows += [{"line": index, **segment} for segment in segments_to_dicts(segments)]
    return rows


def warm_up_g2p() -> None:
    """Load the g2p's dictionaries and models now (once per process; on an AMD EPYC English took 0.95 s,
    Chinese 1.4 s, Japanese 0.2 s), so that a server's first request in each language does not wait
    for them. Best effort: a language whose optional package is missing is left for its request to
    report."""
    for text in WARM_UP_TEXTS:
        try:
            read_piece(text)
        except Exception as exc:  # noqa: BLE001 - the request that needs it gets the error
            log.debug("g2p warm-up of %r: %s", text, exc)
