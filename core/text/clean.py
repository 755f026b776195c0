"""`clean_text`: the original's symbol replacement and character filter (SPEC-text §4.1), keeping two kinds of
characters it deleted (spaces outside ASCII, fullwidth and halfwidth forms: below).

Quirks kept on purpose (QUIRKS 18, 19): `...` becomes `…` and is then deleted by the filter,
`$` and newlines become `.`, every bracket or quote becomes `'`.
"""

import re
import unicodedata

_REPLACEMENTS = {
    "：": ",",
    "；": ",",
    "，": ",",
    "·": ",",
    "、": ",",
    ";": ",",
    ":": ",",
    "。": ".",
    "\n": ".",
    "$": ".",
    "！": "!",
    "？": "?",
    "...": "…",
    "“": "'",
    "”": "'",
    "‘": "'",
    "’": "'",
    "（": "'",
    "）": "'",
    "(": "'",
    ")": "'",
    "《": "'",
    "》": "'",
    "【": "'",
    "】": "'",
    "[": "'",
    "]": "'",
    "「": "'",
    "」": "'",
    "—": "-",
    "～": "-",
    "~": "-",
    "・": "-",
}
# One left-to-right pass; `...` is tried before the single characters at each position.
_REPLACE_RE = re.compile("|".join(re.escape(key) for key in sorted(_REPLACEMENTS, key=len, reverse=True)))
# ASCII, CJK ideographs, hiragana, katakana, katakana phonetic extensions.
_UNKNOWN_CHARS_RE = re.compile("[^\u0000-\u007f\u4e00-\u9fff\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff]+")
_PHONE_TAG_RE = re.compile(r"<p:(.*?)>")
# Whitespace outside ASCII (no-break, ideographic, thin spaces, U+2028...): the filter below deleted it, which
# ran the words beside it into one ("hello\u00a0world" read as "helloworld" by the speller of unknown words).
_WIDE_SPACE_RE = re.compile(r"[^\S\x00-\x7f]")
# Fullwidth ASCII and halfwidth katakana: the filter deleted them too ("２０２４年" was read as "年"). Read as the
# letters, digits, punctuation and kana they stand for, the replacements then treat them as those. Not ＜＞:
# brackets in CJK text ("＜注意＞") that would become a language tag g2p refuses.
_WIDTH_FORMS_RE = re.compile("[\uff01-\uff1b\uff1d\uff1f-\uff5e\uff61-\uff9f]+")


def _clean_piece(text: str) -> str:
    text = _WIDTH_FORMS_RE.sub(lambda match: unicodedata.normalize("NFKC", match.group(0)), text)
    text = _REPLACE_RE.sub(lambda match: _REPLACEMENTS[match.group(0)], text)
    text = _WIDE_SPACE_RE.sub(" ", text)
    return _UNKNOWN_CHARS_RE.sub("", text)


def clean_text(text: str) -> str:
    """Strip, replace symbols, drop characters outside the supported scripts; `<p:X>` tags survive.

    The original hides the tags' colon during cleaning; the phone name inside is cleaned like the
    rest. Cleaning the pieces between tags separately is the same, since no replacement key spans
    a tag's `<`.
    """
    pieces = _PHONE_TAG_RE.split(text.strip())
    # split() alternates: text, phone name, text, phone name, ..., text
    return "".join(
        _clean_piece(piece) if index % 2 == 0 else f"<p:{_clean_piece(piece)}>" for index, piece in enumerate(pieces)
    )
