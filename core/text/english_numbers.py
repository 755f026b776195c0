"""Digits -> English words, as g2p_en 2.1.0 reads them (inflect underneath).

Years 1001-2999 are read in pairs ("twenty twenty-three"), others as cardinals without "and"; a number
past inflect's scale words (37+ digits), where g2p_en fails, digit by digit.
"""

import re
from functools import lru_cache

from .errors import TextError

_COMMA_NUMBER_RE = re.compile(r"([0-9][0-9,]+[0-9])")
_DECIMAL_RE = re.compile(r"([0-9]+\.[0-9]+)")
_POUNDS_RE = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS_RE = re.compile(r"\$([0-9.,]*[0-9]+)")
_ORDINAL_RE = re.compile(r"[0-9]+(st|nd|rd|th)")
_NUMBER_RE = re.compile(r"[0-9]+")


@lru_cache(maxsize=None)
def _inflect():
    try:
        import inflect
    except ImportError as error:
        raise TextError(f"English g2p needs inflect ({error}): pip install inflect") from error
    return inflect


@lru_cache(maxsize=None)
def _engine():
    return _inflect().engine()


_DIGIT_WORDS = dict(zip("0123456789.", "zero one two three four five six seven eight nine point".split(), strict=True))


def _words(number, **options) -> str:
    try:
        return _engine().number_to_words(number, **options)
    except _inflect().NumOutOfRangeError:  # beyond its scale words (37+ digits): digit by digit, as Chinese reads them
        return " ".join(_DIGIT_WORDS[c] for c in str(number) if c in _DIGIT_WORDS)


def _dollars(match) -> str:
    amount = match.group(1)
    parts = amount.split(".")
    if len(parts) > 2:
        return amount + " dollars"
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    dollar_unit = "dollar" if dollars == 1 else "dollars"
    cent_unit = "cent" if cents == 1 else "cents"
    if dollars and cents:
        return f"{dollars} {dollar_unit}, {cents} {cent_unit}"
    if dollars:
        return f"{dollars} {dollar_unit}"
    if cents:
        return f"{cents} {cent_unit}"
    return "zero dollars"


def _cardinal(match) -> str:
    number = int(match.group(0))
    if 1000 < number < 3000:
        if number == 2000:
            return "two thousand"
        if 2000 < number < 2010:
            return "two thousand " + _words(number % 100)
        if number % 100 == 0:
            return _words(number // 100) + " hundred"
        return _words(number, andword="", zero="oh", group=2).replace(", ", " ")
    return _words(number, andword="")


def expand_numbers(text: str) -> str:
    text = _COMMA_NUMBER_RE.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _POUNDS_RE.sub(r"\1 pounds", text)
    text = _DOLLARS_RE.sub(_dollars, text)
    text = _DECIMAL_RE.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _ORDINAL_RE.sub(lambda m: _words(m.group(0)), text)
    return _NUMBER_RE.sub(_cardinal, text)
