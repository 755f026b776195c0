"""jieba word segmentation, loaded once, quietly, and without its cache file.

jieba normally prints to stderr and caches its prefix dictionary with marshal in the system temp
folder (world-writable). We build the dictionary in memory instead (~1 s once per process):
nothing is read from or written to a shared place.
"""

import logging
import threading
from functools import lru_cache

from .errors import TextError

_lock = threading.Lock()


@lru_cache(maxsize=None)
def _jieba():
    try:
        import jieba
        import jieba.posseg
    except ImportError as error:
        raise TextError("Chinese g2p needs jieba: pip install jieba==0.42.1") from error
    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.dt
    with tokenizer.lock:
        if not tokenizer.initialized:
            tokenizer.FREQ, tokenizer.total = tokenizer.gen_pfdict(tokenizer.get_dict_file())
            tokenizer.initialized = True
    return jieba


def pos_cut(text: str) -> list[tuple[str, str]]:
    """jieba.posseg words with their part-of-speech tags."""
    jieba = _jieba()
    with _lock:
        return [(pair.word, pair.flag) for pair in jieba.posseg.lcut(text)]


def cut_for_search(word: str) -> list[str]:
    jieba = _jieba()
    with _lock:
        return list(jieba.cut_for_search(word))
