"""Language segmentation, the g2p entry point and the phone-to-id lookup (SPEC-text §4.2)."""

import re
from dataclasses import dataclass, field

from .clean import clean_text
from .errors import TextError
from .symbols import LANGUAGES, PUNCTUATION, symbol_ids, unicode_ranges

DEFAULT_ORDER = "zh,jp,en"  # the language priority every caller defaults to
LANGUAGE_CODES = tuple(language.lower() for language in LANGUAGES)  # as written in an order
_TAG_RE = re.compile(r"(<.*?>)")
# Characters that take the language of the text before them (or order[0] at the start).
_NEUTRAL = frozenset(" 0123456789" + "".join(PUNCTUATION))


@dataclass
class Segment:
    """A run of text in one language and its phones (filled by the language's g2p)."""

    text: str
    language: str
    phones: list[str] = field(default_factory=list)


def normalize_order(order=DEFAULT_ORDER) -> list[str]:
    """`("zh","jp","en")` or `"zh,jp,en"` -> `["ZH","JP","EN"]`; `_` is accepted like the original."""
    if order is None:
        order = DEFAULT_ORDER
    if isinstance(order, str):
        order = order.split(",")
    order = [str(language).strip().upper() for language in order]
    unknown = [language for language in order if language not in LANGUAGES + ("_",)]
    if unknown:
        raise TextError(f"Unknown language in order: {', '.join(unknown)} (use zh, jp, en)")
    if not any(language in LANGUAGES for language in order):
        raise TextError("The language order names no language (use zh, jp, en)")
    return order


def phones_for(text: str, language: str) -> list[str]:
    """Run one language's g2p; the heavy modules load on first use."""
    if language == "ZH":
        from .chinese import g2p_chinese

        return g2p_chinese(text)
    if language == "JP":
        from .japanese import g2p_japanese

        return g2p_japanese(text)
    if language == "EN":
        from .english import g2p_english

        return g2p_english(text)
    raise TextError(f"Unknown language: {language}")


def _make_segment(text: str, language: str) -> Segment:
    return Segment(text, language, phones_for(text, language))


def _in_ranges(char: str, language: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in unicode_ranges().get(language, ()))


def detect_segments(text: str, order: list[str]) -> list[tuple[str, str]]:
    """Split untagged text into (text, language) runs; the current language is tried first."""
    runs = []
    start, current = 0, None
    for index, char in enumerate(text):
        if char in _NEUTRAL:
            current = current or order[0]
            continue
        priority = [current] + [lang for lang in order if lang != current] if current else order
        language = next((lang for lang in priority if _in_ranges(char, lang)), None)
        if language is None:
            raise TextError(
                f"No language in order {','.join(order).lower()} covers the character "
                f"{char!r}; add its language to the order"
            )
        if language != current:
            if current is not None:
                runs.append((text[start:index], current))
            start, current = index, language
    if start != len(text):
        runs.append((text[start:], current))
    return runs


def parse_text_to_segments(text: str, order=DEFAULT_ORDER) -> list[Segment]:
    """Clean, split on `<zh>…</zh>`-style tags, detect languages, and run each segment's g2p."""
    order = normalize_order(order)
    pieces = [piece for piece in _TAG_RE.split(clean_text(text)) if piece.strip() != ""]
    stack, segments = [], []
    for piece in pieces:
        if piece.startswith("</") and piece.endswith(">"):
            if not stack:
                raise TextError(f"Closing tag {piece} has no opening tag")
            opened = stack.pop()
            # Case-sensitive on purpose, like the original: <zh>…</ZH> is a mismatch.
            if opened != piece[2:-1]:
                raise TextError(f"Language mismatch: {opened} != {piece[2:-1]}")
        elif piece.startswith("<") and piece.endswith(">"):
            language = piece[1:-1]
            if language.upper() not in LANGUAGES:
                raise TextError(
                    f"Unknown language: {_as_written(text, piece)[1:-1]} (tags are <zh>, <jp>, <en>; "
                    "phone tags <p:…> are not accepted with g2p)"
                )
            stack.append(language)
        elif stack:
            # Tagged text is one segment, kept even when it yields no phones.
            segments.append(_make_segment(piece, stack[-1].upper()))
        else:
            for run_text, language in detect_segments(piece, order):
                segment = _make_segment(run_text, language)
                if segment.phones:
                    segments.append(segment)
    return segments


def _as_written(text: str, cleaned_tag: str) -> str:
    """The tag of `text` that cleaning made `cleaned_tag`, as the user wrote it (a message showed it cleaned:
    `<speaker:abc>` as `speaker,abc`); `cleaned_tag` itself where none is found."""
    for match in re.finditer(r"<[^<>]*>", text):
        if clean_text(match.group(0)) == cleaned_tag:
            return match.group(0)
    return cleaned_tag


def segments_to_phones(segments: list[Segment]) -> list[tuple[str | None, str]]:
    """Pair each phone with its language, or None for punctuation and pad; unknown phones raise."""
    ids = symbol_ids()
    phones = []
    for segment in segments:
        for phone in segment.phones:
            if phone.strip() == "":
                continue
            if (segment.language, phone) in ids:
                phones.append((segment.language, phone))
            elif (None, phone) in ids:
                phones.append((None, phone))
            else:
                raise TextError(f"Unknown phone {phone!r} in {segment.language} text {segment.text!r}")
    return phones


def phones_to_ids(phones: list[tuple[str | None, str]]) -> list[int]:
    """The original's symbol ids (not used at inference; kept for parity checks)."""
    ids = symbol_ids()
    return [ids[tuple(pair)] for pair in phones]


def g2p(text: str, order=DEFAULT_ORDER) -> list[tuple[str | None, str]]:
    """Text -> [(language or None, phone)], as the original's `g2p(text, order)`."""
    return segments_to_phones(parse_text_to_segments(text, order))


def segments_to_dicts(segments: list[Segment]) -> list[dict]:
    """JSON-ready form for `fishtts g2p` and the web UI preview."""
    return [{"text": s.text, "language": s.language, "phones": list(s.phones)} for s in segments]
