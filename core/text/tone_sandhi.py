"""Mandarin tone sandhi on jieba words (SPEC-text §4.3): the rules the original shares with
PaddleSpeech / Bert-VITS2, written as plain functions. Word lists: data/tone_sandhi_words.json.

Finals are pypinyin FINALS_TONE3 strings ending in the tone digit (5 = neutral).
"""

import json
from functools import lru_cache

from .symbols import read_data_text
from .zh_words import cut_for_search

_NEUTRAL_ENDINGS = "吧呢啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶"


@lru_cache(maxsize=None)
def _words():
    data = json.loads(read_data_text("tone_sandhi_words.json"))
    return set(data["must_neural_tone_words"]), set(data["must_not_neural_tone_words"]), data["punc"]


def _set_tone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _all_tone_three(finals: list[str]) -> bool:
    return all(final[-1] == "3" for final in finals)


def split_word(word: str) -> list[str]:
    """Two parts, split around jieba's shortest search sub-word."""
    shortest = sorted(cut_for_search(word), key=len)[0]
    if word.find(shortest) == 0:
        return [shortest, word[len(shortest) :]]
    return [word[: -len(shortest)], shortest]


def _bu_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 3 and word[1] == "不":  # 看不懂
        finals[1] = _set_tone(finals[1], "5")
    else:
        for i, char in enumerate(word):
            if char == "不" and i + 1 < len(word) and finals[i + 1][-1] == "4":  # 不怕
                finals[i] = _set_tone(finals[i], "2")
    return finals


def _yi_sandhi(word: str, finals: list[str]) -> list[str]:
    punctuation = _words()[2]
    if word.find("一") != -1 and all(char.isnumeric() for char in word if char != "一"):
        return finals  # a digit sequence: 一零零
    if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:  # 看一看
        finals[1] = _set_tone(finals[1], "5")
    elif word.startswith("第一"):  # ordinal
        finals[1] = _set_tone(finals[1], "1")
    else:
        for i, char in enumerate(word):
            if char == "一" and i + 1 < len(word):
                if finals[i + 1][-1] == "4":  # 一段
                    finals[i] = _set_tone(finals[i], "2")
                elif word[i + 1] not in punctuation:  # 一天; before punctuation it stays yi1
                    finals[i] = _set_tone(finals[i], "4")
    return finals


def _neutral_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    must_neutral, must_not_neutral, _ = _words()
    for j, char in enumerate(word):  # reduplicated nouns / verbs / adjectives: 奶奶, 试试
        if j >= 1 and char == word[j - 1] and pos[0] in "nva" and word not in must_not_neutral:
            finals[j] = _set_tone(finals[j], "5")
    ge_index = word.find("个")
    if len(word) >= 1 and word[-1] in _NEUTRAL_ENDINGS:
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) >= 1 and word[-1] in "的地得":
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) == 1 and word in "了着过" and pos in {"ul", "uz", "ug"}:
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) > 1 and word[-1] in "们子" and pos in {"r", "n"} and word not in must_not_neutral:
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) > 1 and word[-1] in "上下里" and pos in {"s", "l", "f"}:  # 桌上, 家里
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) > 1 and word[-1] in "来去" and word[-2] in "上下进出回过起开":  # 上来
        finals[-1] = _set_tone(finals[-1], "5")
    elif (
        ge_index >= 1 and (word[ge_index - 1].isnumeric() or word[ge_index - 1] in "几有两半多各整每做是")
    ) or word == "个":  # 个 as a measure word
        finals[ge_index] = _set_tone(finals[ge_index], "5")
    elif word in must_neutral or word[-2:] in must_neutral:
        finals[-1] = _set_tone(finals[-1], "5")

    parts = split_word(word)
    split_finals = [finals[: len(parts[0])], finals[len(parts[0]) :]]
    for i, part in enumerate(parts):
        if part in must_neutral or part[-2:] in must_neutral:
            split_finals[i][-1] = _set_tone(split_finals[i][-1], "5")
    return split_finals[0] + split_finals[1]


def _three_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 2 and _all_tone_three(finals):
        finals[0] = _set_tone(finals[0], "2")
    elif len(word) == 3:
        parts = split_word(word)
        if _all_tone_three(finals):
            if len(parts[0]) == 2:  # 蒙古/包
                finals[0] = _set_tone(finals[0], "2")
                finals[1] = _set_tone(finals[1], "2")
            elif len(parts[0]) == 1:  # 纸/老虎
                finals[1] = _set_tone(finals[1], "2")
        else:
            split_finals = [finals[: len(parts[0])], finals[len(parts[0]) :]]
            for i, sub in enumerate(split_finals):
                if _all_tone_three(sub) and len(sub) == 2:  # 所有/人
                    sub[0] = _set_tone(sub[0], "2")
                elif (
                    i == 1 and not _all_tone_three(sub) and sub[0][-1] == "3" and split_finals[0][-1][-1] == "3"
                ):  # 好/喜欢
                    split_finals[0][-1] = _set_tone(split_finals[0][-1], "2")
            finals = split_finals[0] + split_finals[1]
    elif len(word) == 4:  # idioms: two halves of two
        halves = [finals[:2], finals[2:]]
        finals = []
        for half in halves:
            if _all_tone_three(half):
                half[0] = _set_tone(half[0], "2")
            finals += half
    return finals


def modified_tone(word: str, pos: str, finals: list[str]) -> list[str]:
    finals = _bu_sandhi(word, finals)
    finals = _yi_sandhi(word, finals)
    finals = _neutral_sandhi(word, pos, finals)
    return _three_sandhi(word, finals)


# --- merges on jieba's (word, pos) list before the per-word rules -------------------------


def _merge_bu(words):
    merged, last = [], ""
    for word, pos in words:
        if last == "不":
            word = last + word
        if word != "不":
            merged.append([word, pos])
        last = word
    if last == "不":
        merged.append([last, "d"])
    return merged


def _merge_yi(words):
    merged = []
    for i, (word, pos) in enumerate(words):  # X 一 X (verb) -> X一X
        if (
            i >= 1
            and word == "一"
            and i + 1 < len(words)
            and words[i - 1][0] == words[i + 1][0]
            and words[i - 1][1] == "v"
        ):
            # Indexes the merged list by the input position, like the original (may raise).
            merged[i - 1][0] = merged[i - 1][0] + "一" + merged[i - 1][0]
        elif i >= 2 and words[i - 1][0] == "一" and words[i - 2][0] == word and pos == "v":
            continue
        else:
            merged.append([word, pos])
    result = []
    for word, pos in merged:  # a lone 一 joins the next word
        if result and result[-1][0] == "一":
            result[-1][0] = result[-1][0] + word
        else:
            result.append([word, pos])
    return result


def _merge_reduplication(words):
    merged = []
    for word, pos in words:
        if merged and word == merged[-1][0]:
            merged[-1][0] = merged[-1][0] + word
        else:
            merged.append([word, pos])
    return merged


def _is_reduplication(word: str) -> bool:
    return len(word) == 2 and word[0] == word[1]


def _merge_three_tones(words, finals_of, joins):
    """Merge a word into the previous one when `joins(prev_finals, finals)` and the result is short."""
    all_finals = [finals_of(word) for word, _ in words]
    merged, merged_last = [], [False] * len(words)
    for i, (word, pos) in enumerate(words):
        if (
            i >= 1
            and joins(all_finals[i - 1], all_finals[i])
            and not merged_last[i - 1]
            and not _is_reduplication(words[i - 1][0])
            and len(words[i - 1][0]) + len(word) <= 3
        ):
            merged[-1][0] = merged[-1][0] + word
            merged_last[i] = True
        else:
            merged.append([word, pos])
    return merged


def _merge_er(words):
    merged = []
    for i, (word, pos) in enumerate(words):
        if i >= 1 and word == "儿" and words[i - 1][0] != "#":
            merged[-1][0] = merged[-1][0] + word
        else:
            merged.append([word, pos])
    return merged


def pre_merge(words, finals_of):
    """The original's merges, in order; yi and the two tone-3 merges are skipped if they fail."""
    words = _merge_bu(words)
    try:
        words = _merge_yi(words)
    except Exception:
        pass
    words = _merge_reduplication(words)
    for joins in (
        lambda prev, cur: _all_tone_three(prev) and _all_tone_three(cur),
        lambda prev, cur: prev[-1][-1] == "3" and cur[0][-1] == "3",
    ):
        try:
            words = _merge_three_tones(words, finals_of, joins)
        except Exception:
            pass
    words = _merge_er(words)
    return [(word, pos) for word, pos in words]
