"""Chinese text normalisation: numbers, dates, money, signs -> words; traditional -> simplified.

The original ran WeTextProcessing 0.1.11's `Normalizer()` (defaults: remove interjections and
erhua, traditional->simple, full->half width). Its grammar is compiled into two OpenFst
transducers, shipped here as data/zh_tn_{tagger,verbalizer}.fst.gz (Apache-2.0, WeTextProcessing
0.1.11, built with those defaults). We run them with kaldifst (1.5 MB) instead of pynini (400 MB):
tag -> reorder the token fields -> verbalize, the same three steps, same shortest paths.
"""

import gzip
import os
import tempfile
import threading
from functools import lru_cache
from importlib import resources

from .errors import TextError

# Field order the verbalizer expects per token type (a fact of the grammar, TN mode).
_FIELD_ORDER = {
    "date": ("year", "month", "day"),
    "fraction": ("denominator", "numerator"),
    "measure": ("denominator", "numerator", "value"),
    "money": ("value", "currency"),
    "time": ("noon", "hour", "minute", "second"),
}
_lock = threading.Lock()


def _load_fst(name: str):
    import kaldifst

    # kaldifst reads from a path: unpack into a private temporary folder, read, delete.
    data = gzip.decompress(resources.files(__package__).joinpath("data", f"{name}.fst.gz").read_bytes())
    with tempfile.TemporaryDirectory(prefix="fishtts-tn-") as folder:
        path = os.path.join(folder, f"{name}.fst")
        with open(path, "wb") as file:
            file.write(data)
        return kaldifst.TextNormalizer(path)


@lru_cache(maxsize=None)
def _normalizers():
    try:
        import kaldifst  # noqa: F401
    except ImportError as error:
        raise TextError("Chinese text normalisation needs the kaldifst package: pip install kaldifst") from error
    return _load_fst("zh_tn_tagger"), _load_fst("zh_tn_verbalizer")


def parse_tokens(tagged: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """`name { key: "value" ... } name { ... }` -> [(name, [(key, value), ...])].

    Values keep their backslash escapes (`\\"`, `\\\\`): the verbalizer reads them escaped.
    """
    tokens, index, length = [], 0, len(tagged)

    def skip_spaces(position):
        while position < length and tagged[position] == " ":
            position += 1
        return position

    def read_name(position):
        end = position
        while end < length and (tagged[end].isascii() and (tagged[end].isalpha() or tagged[end] == "_")):
            end += 1
        return tagged[position:end], end

    index = skip_spaces(index)
    while index < length:
        name, index = read_name(index)
        index = skip_spaces(index)
        if index < length and tagged[index] == "{":
            index += 1
        fields = []
        while True:
            index = skip_spaces(index)
            if index >= length:
                break
            if tagged[index] == "}":
                index += 1
                break
            key, index = read_name(index)
            if tagged.startswith(":", index):
                index += 1
            index = skip_spaces(index)
            if tagged.startswith('"', index):
                index += 1
            start = index
            while index < length and tagged[index] != '"':
                index += 2 if tagged[index] == "\\" else 1
            fields.append((key, tagged[start:index]))
            index += 1  # closing quote
        tokens.append((name, fields))
        index = skip_spaces(index)
    return tokens


def reorder_tokens(tagged: str) -> str:
    """Put each token's fields in the verbalizer's order; other tokens keep their own order."""
    out = []
    for name, fields in parse_tokens(tagged):
        values = dict(fields)
        keys = _FIELD_ORDER.get(name) or [key for key, _ in fields]
        body = "".join(f' {key}: "{values[key]}"' for key in keys if key in values)
        out.append(f"{name} {{{body} }}")
    return " ".join(out)


def normalize_chinese(text: str) -> str:
    """Same output as WeTextProcessing 0.1.11 `Normalizer().normalize(text)`."""
    if not text:
        return ""
    tagger, verbalizer = _normalizers()
    with _lock:  # one shared FST pair; keep calls serial to be safe
        tagged = tagger.normalize(text)
        if not tagged:
            return ""
        return verbalizer.normalize(reorder_tokens(tagged))
