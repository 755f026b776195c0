"""The phone inventory of the original (data/symbols.json): 340 (language, phone) pairs, `_` first."""

import json
from functools import lru_cache
from importlib import resources

PAD = "_"
# Punctuation the g2p passes through unchanged (language None in g2p output).
PUNCTUATION = ("!", "?", "…", ",", ".", "'", "-")
# Symbols that stay raw in the prompt string; everything else becomes `<p:X>`.
PU_SYMBOLS = PUNCTUATION + ("SP", "UNK")
LANGUAGES = ("ZH", "JP", "EN")


def read_data_text(name: str) -> str:
    """A shipped data file of core/text/data as text."""
    return resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def symbol_table() -> dict:
    return json.loads(read_data_text("symbols.json"))


@lru_cache(maxsize=None)
def symbol_ids() -> dict[tuple[str | None, str], int]:
    """(language or None, phone) -> id, in the original's id order."""
    pairs = symbol_table()["symbols_with_language_in_id_order"]
    return {(language, phone): index for index, (language, phone) in enumerate(pairs)}


@lru_cache(maxsize=None)
def unicode_ranges() -> dict[str, tuple[tuple[int, int], ...]]:
    """Per language, the code-point ranges that auto-detection assigns to it."""
    table = symbol_table()["language_unicode_range_map"]
    return {language: tuple((int(lo, 16), int(hi, 16)) for lo, hi in ranges) for language, ranges in table.items()}
