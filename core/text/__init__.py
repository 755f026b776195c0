"""Text front end: cleaning, language segmentation and g2p for Chinese, Japanese and English.

Importing this package is cheap: jieba, pypinyin, the English model and OpenJTalk load on first use.
"""

from .clean import clean_text
from .errors import TextError
from .prompt import phones_to_prompt
from .segment import (
    DEFAULT_ORDER,
    Segment,
    g2p,
    normalize_order,
    parse_text_to_segments,
    phones_to_ids,
    segments_to_dicts,
    segments_to_phones,
)

__all__ = [
    "DEFAULT_ORDER",
    "Segment",
    "TextError",
    "clean_text",
    "g2p",
    "normalize_order",
    "parse_text_to_segments",
    "phones_to_ids",
    "phones_to_prompt",
    "segments_to_dicts",
    "segments_to_phones",
]
