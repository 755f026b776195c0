"""The syllabified CMU dictionary 0.6 (data/cmudict.rep), parsed in memory: no pickle cache."""

from functools import lru_cache

from .symbols import read_data_text

_HEADER_LINES = 48


@lru_cache(maxsize=None)
def cmudict_rep() -> dict[str, list[str]]:
    """data/cmudict.rep parsed in memory (no cache file): WORD -> phones, syllables flattened."""
    table = {}
    for line in read_data_text("cmudict.rep").splitlines()[_HEADER_LINES:]:
        word, syllables = line.strip().split("  ")[:2]
        table[word] = [phone for syllable in syllables.split(" - ") for phone in syllable.split(" ")]
    return table
