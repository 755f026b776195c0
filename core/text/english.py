"""English g2p (SPEC-text §4.4): the syllabified CMU dictionary, g2p_en behaviour for the rest."""

import re

from .english_dict import cmudict_rep

# `+` is a literal member of the class (as in the original); delimiters are kept as pieces.
_SPLIT_RE = re.compile(r"([,;.\-\?\!\s+])")


def g2p_english(text: str) -> list[str]:
    """English text -> ARPAbet phones with stress digits; punctuation pieces come back as is."""
    from .english_oov import g2p_oov

    table = cmudict_rep()
    phones = []
    for piece in _SPLIT_RE.split(text):
        if piece.upper() in table:
            phones += table[piece.upper()]
        else:
            phones += [phone for phone in g2p_oov(piece) if phone != " "]
    return phones
