"""English words that the syllabified dictionary lacks: g2p_en 2.1.0's behaviour, offline.

Same steps as g2p_en: numbers -> words, strip accents, lower-case, keep `a-z ' . , ? ! -`,
TweetTokenizer, then per token: punctuation as is, homographs, CMUdict, else its GRU model.
Differences (no NLTK data at run time):
- Its CMUdict step uses our data/cmudict.rep (CMUdict 0.6) instead of NLTK's corpus (0.7a): a
  word that only 0.7a has is predicted by the model instead of looked up. (The `cmudict` package,
  0.7b+, was no closer: it knows "twenty-three", which 0.7a and the original do not.)
- No POS tagger: a homograph is read as if tagged "NN" (its non-verb reading, mostly). Only
  tokens not found in data/cmudict.rep get here, so homographs are rare on this path.
The model weights are read from the installed g2p_en package (checkpoint20.npz, no pickle);
g2p_en itself is never imported, because its import downloads NLTK data.
"""

import importlib.util
import os
import re
import threading
import unicodedata
from functools import lru_cache

from .english_dict import cmudict_rep
from .english_numbers import expand_numbers
from .errors import TextError

_GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
_PHONEMES = ["<pad>", "<unk>", "<s>", "</s>"] + (
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH "
    "EH0 EH1 EH2 ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG "
    "OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T TH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
).split()
_START, _END, _MAX_PHONES = 2, 3, 20
_ASSUMED_POS = "NN"
_lock = threading.Lock()


def _package_file(package: str, name: str, hint: str) -> str:
    """Path of a data file in an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TextError(f"English g2p needs the {hint} package: pip install {hint}")
    path = os.path.join(list(spec.submodule_search_locations)[0], name)
    if not os.path.isfile(path):
        raise TextError(f"English g2p: {name} is missing from the {hint} package; reinstall it")
    return path


@lru_cache(maxsize=None)
def _homographs() -> dict[str, tuple[list[str], list[str], str]]:
    table = {}
    with open(_package_file("g2p_en", "homographs.en", "g2p-en==2.1.0"), encoding="utf-8") as file:
        for line in file:
            if line.startswith("#") or not line.strip():
                continue
            word, pron1, pron2, pos1 = line.strip().split("|")
            table[word.lower()] = (pron1.split(), pron2.split(), pos1)
    return table


@lru_cache(maxsize=None)
def _weights() -> dict:
    import numpy as np

    with np.load(_package_file("g2p_en", "checkpoint20.npz", "g2p-en==2.1.0"), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@lru_cache(maxsize=None)
def _tokenizer():
    try:
        from nltk.tokenize.casual import TweetTokenizer
    except ImportError as error:
        raise TextError("English g2p needs nltk: pip install nltk") from error
    return TweetTokenizer()


def _gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    import numpy as np

    gates_x = x @ w_ih.T + b_ih
    gates_h = h @ w_hh.T + b_hh
    split = gates_x.shape[-1] * 2 // 3
    reset_update = 1 / (1 + np.exp(-(gates_x[:, :split] + gates_h[:, :split])))
    reset, update = np.split(reset_update, 2, -1)
    candidate = np.tanh(gates_x[:, split:] + reset * gates_h[:, split:])
    return (1 - update) * candidate + update * h


def predict(word: str) -> list[str]:
    """The g2p_en seq2seq GRU, greedy decoding (float32 numpy, same arithmetic)."""
    import numpy as np

    w = _weights()
    ids = [_GRAPHEMES.index(c) if c in _GRAPHEMES[3:] else 1 for c in word] + [2]
    h = np.zeros((1, w["enc_w_hh"].shape[-1]), np.float32)
    for index in ids:
        x = w["enc_emb"][[index]]
        h = _gru_step(x, h, w["enc_w_ih"], w["enc_w_hh"], w["enc_b_ih"], w["enc_b_hh"])
    x = w["dec_emb"][[_START]]
    phones = []
    for _ in range(_MAX_PHONES):
        h = _gru_step(x, h, w["dec_w_ih"], w["dec_w_hh"], w["dec_b_ih"], w["dec_b_hh"])
        best = int((h @ w["fc_w"].T + w["fc_b"]).argmax())
        if best == _END:
            break
        phones.append(_PHONEMES[best])
        x = w["dec_emb"][[best]]
    return phones


def g2p_oov(text: str) -> list[str]:
    """g2p_en(text) without its " " word separators."""
    text = expand_numbers(text)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = re.sub(r"[^ a-z'.,?!\-]", "", text.lower())
    text = text.replace("i.e.", "that is").replace("e.g.", "for example")
    phones = []
    with _lock:
        tokens = _tokenizer().tokenize(text)
    for token in tokens:
        if re.search("[a-z]", token) is None:
            phones.append(token)
        elif token in _homographs():
            pron1, pron2, pos1 = _homographs()[token]
            phones += pron1 if _ASSUMED_POS.startswith(pos1) else pron2
        elif token.upper() in cmudict_rep():
            phones += cmudict_rep()[token.upper()]
        else:
            phones += predict(token)
    return phones
