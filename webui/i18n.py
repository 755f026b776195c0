"""UI strings from `locales/<lang>.json`, and the choice of language from what the browser says.

Every visible string is a key in both locale files; code asks `t(lang, key, **fields)`. A missing
key raises, so a typo fails the locale test instead of showing a raw key to users.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LOCALES_DIR = Path(__file__).resolve().parents[1] / "locales"
DEFAULT_LANGUAGE = "zh_CN"  # the original UI is Chinese
LANGUAGES = ("zh_CN", "en_US")


@cache
def strings(lang: str) -> dict[str, str]:
    if lang not in LANGUAGES:
        raise KeyError(f"unknown UI language {lang!r}")
    return json.loads((LOCALES_DIR / f"{lang}.json").read_text(encoding="utf-8"))


def t(lang: str, key: str, **fields) -> str:
    text = strings(lang if lang in LANGUAGES else DEFAULT_LANGUAGE)[key]
    return text.format(**fields) if fields else text


def language_choices() -> list[tuple[str, str]]:
    """(name shown in its own language, code) for the in-page switch."""
    return [(t(lang, "meta.name"), lang) for lang in LANGUAGES]


def match_language(tag: str | None) -> str | None:
    """`zh`, `zh-CN`, `zh_Hans_TW`, `en-GB`... -> a supported language, or None."""
    primary = (tag or "").strip().replace("_", "-").split("-")[0].lower()
    for lang in LANGUAGES:
        if lang.split("_")[0].lower() == primary:
            return lang
    return None


def parse_accept_language(header: str | None) -> list[str]:
    """Language tags of an Accept-Language header, most preferred first (q=0 dropped)."""
    weighted = []
    for position, item in enumerate((header or "").split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            weighted.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(weighted)]


def pick_language(*preferences: str | None, accept_language: str | None = None) -> str:
    """The first supported language among explicit choices (URL ?lang=, navigator.language), then
    the Accept-Language header; Chinese if none matches."""
    for tag in [*preferences, *parse_accept_language(accept_language)]:
        lang = match_language(tag)
        if lang:
            return lang
    return DEFAULT_LANGUAGE
