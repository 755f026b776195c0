"""Chinese g2p (SPEC-text §4.3): normalise, jieba words, pypinyin, tone sandhi, opencpop phones."""

import re
from functools import lru_cache

from .errors import TextError
from .normalize_zh import normalize_chinese
from .symbols import PUNCTUATION, read_data_text
from .tone_sandhi import modified_tone, pre_merge
from .zh_words import pos_cut

_PUNCT = "".join(PUNCTUATION)
_NOT_HANZI_OR_PUNCT_RE = re.compile(f"[^\u4e00-\u9fa5{re.escape(_PUNCT)}]+")
_SENTENCE_SPLIT_RE = re.compile(f"(?<=[{re.escape(_PUNCT)}])\\s*")
_LATIN_RE = re.compile("[a-zA-Z]+")
# pypinyin's strict finals spelled as the pinyin syllables the opencpop table uses.
_FINAL_AFTER_INITIAL = {"uei": "ui", "iou": "iu", "uen": "un"}
_WHOLE_ZERO_INITIAL = {"ing": "ying", "i": "yi", "in": "yin", "u": "wu"}
_FIRST_LETTER_ZERO_INITIAL = {"v": "yu", "e": "e", "i": "y", "u": "w"}


@lru_cache(maxsize=None)
def _opencpop() -> dict[str, list[str]]:
    table = {}
    for line in read_data_text("opencpop-strict.txt").splitlines():
        if line.strip():
            pinyin, phones = line.split("\t")
            table[pinyin] = phones.split(" ")
    return table


@lru_cache(maxsize=None)
def _pypinyin():
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError as error:
        raise TextError("Chinese g2p needs pypinyin: pip install pypinyin==0.50.0") from error
    return lazy_pinyin, Style


def _finals(word: str) -> list[str]:
    lazy_pinyin, style = _pypinyin()
    return lazy_pinyin(word, neutral_tone_with_five=True, style=style.FINALS_TONE3)


def _initials(word: str) -> list[str]:
    lazy_pinyin, style = _pypinyin()
    return lazy_pinyin(word, neutral_tone_with_five=True, style=style.INITIALS)


def prepare_chinese(text: str) -> str:
    """Normalise numbers etc., then keep only hanzi and the punctuation symbols."""
    text = normalize_chinese(text)
    text = text.replace("嗯", "恩").replace("呣", "母")
    return _NOT_HANZI_OR_PUNCT_RE.sub("", text)


def _syllable_phones(initial: str, final: str, sentence: str) -> list[str]:
    if initial == final:  # a non-hanzi item: only punctuation can get here
        if initial not in PUNCTUATION:
            raise TextError(f"Chinese g2p cannot read {initial!r} in {sentence!r}")
        return [initial]
    tone, base = final[-1], final[:-1]
    if tone not in "12345":
        raise TextError(f"Chinese g2p got no tone for {initial + final!r} in {sentence!r}")
    if initial:
        pinyin = initial + _FINAL_AFTER_INITIAL.get(base, base)
    elif base in _WHOLE_ZERO_INITIAL:
        pinyin = _WHOLE_ZERO_INITIAL[base]
    elif base and base[0] in _FIRST_LETTER_ZERO_INITIAL:
        pinyin = _FIRST_LETTER_ZERO_INITIAL[base[0]] + base[1:]
    else:
        pinyin = base
    phones = _opencpop().get(pinyin)
    if phones is None:
        raise TextError(f"Chinese g2p has no phones for pinyin {pinyin!r} in {sentence!r}")
    return phones[:-1] + [phones[-1] + tone]


def _sentence_phones(sentence: str) -> list[str]:
    sentence = _LATIN_RE.sub("", sentence)
    initials, finals = [], []
    for word, pos in pre_merge(pos_cut(sentence), _finals):
        if pos == "eng":
            continue
        initials += _initials(word)
        finals += modified_tone(word, pos, _finals(word))
    phones = []
    for initial, final in zip(initials, finals):
        phones += _syllable_phones(initial, final, sentence)
    return phones


def g2p_chinese(text: str) -> list[str]:
    """Chinese text -> opencpop phones with tone digits (`n i2 h ao3`)."""
    sentences = [s for s in _SENTENCE_SPLIT_RE.split(prepare_chinese(text)) if s.strip() != ""]
    phones = []
    for sentence in sentences:
        try:
            phones += _sentence_phones(sentence)
        except (IndexError, KeyError, ValueError) as error:
            if isinstance(error, TextError):
                raise
            # e.g. a character whose pinyin has no final (噷 hm): the original crashed here
            raise TextError(f"Chinese g2p cannot read {sentence!r}") from error
    return phones
