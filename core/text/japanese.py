"""Japanese g2p (SPEC-text §4.5) with OpenJTalk, an optional extra: pip install 'fishtts[ja]'.

OpenJTalk needs a dictionary; pyopenjtalk would download one on first use. We never let it:
the dictionary is OPEN_JTALK_DICT_DIR, else Debian's open-jtalk-mecab-naist-jdic (the one the
golden outputs were made with), else a dictionary already inside the pyopenjtalk package.
"""

import os
import re
import threading
from functools import lru_cache

from .errors import TextError

DEBIAN_DICT_DIR = "/var/lib/mecab/dic/open-jtalk/naist-jdic"
INSTALL_HINT = (
    "Japanese text needs the optional extra: pip install 'fishtts[ja]' "
    "(and the dictionary: apt-get install open-jtalk-mecab-naist-jdic)"
)
# Characters OpenJTalk reads; every other character is a "mark" that splits the text.
_JAPANESE_CHARS = "A-Za-z\\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d"
_JAPANESE_RE = re.compile(f"[{_JAPANESE_CHARS}]")
_MARKS_RE = re.compile(f"[^{_JAPANESE_CHARS}]")
# OpenJTalk crashes the process (segfault, also in the original) on input over its 8192-byte buffer, and on
# one word over ~1 KB: 344 katakana in a row (3 bytes each) read as one word. So runs without punctuation
# are read in chunks of 256 characters (768 bytes at most: every character it reads is 3 bytes or fewer).
MAX_CHUNK_CHARS = 256
_lock = threading.Lock()


def _dictionary_dir(pyopenjtalk) -> str:
    candidates = [
        os.environ.get("OPEN_JTALK_DICT_DIR"),
        DEBIAN_DICT_DIR,
        os.path.join(os.path.dirname(pyopenjtalk.__file__), "open_jtalk_dic_utf_8-1.11"),
    ]
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "sys.dic")):
            return folder
    raise TextError(
        "Japanese text needs the OpenJTalk dictionary: apt-get install "
        "open-jtalk-mecab-naist-jdic, or set OPEN_JTALK_DICT_DIR to a naist-jdic folder"
    )


@lru_cache(maxsize=None)
def _openjtalk():
    if "OPEN_JTALK_DICT_DIR" not in os.environ and os.path.isdir(DEBIAN_DICT_DIR):
        os.environ["OPEN_JTALK_DICT_DIR"] = DEBIAN_DICT_DIR  # so pyopenjtalk never downloads
    try:
        import pyopenjtalk
    except ImportError as error:
        raise TextError(INSTALL_HINT) from error
    return pyopenjtalk.OpenJTalk(dn_mecab=_dictionary_dir(pyopenjtalk).encode("utf-8"))


def g2p_japanese(text: str) -> list[str]:
    """Japanese text -> OpenJTalk phones (`k o N n i ch i w a`); marks are kept in place."""
    text = text.replace("％", "パーセント")
    pieces = _MARKS_RE.split(text)
    marks = _MARKS_RE.findall(text)
    phones = []
    for index, piece in enumerate(pieces):
        if _JAPANESE_RE.match(piece):
            for start in range(0, len(piece), MAX_CHUNK_CHARS):
                with _lock:
                    phones += _openjtalk().g2p(piece[start : start + MAX_CHUNK_CHARS]).split(" ")
        if index < len(marks):
            phones.append(marks[index].replace(" ", ""))
    return ["-" if phone == "pau" else phone for phone in phones if phone != ""]
