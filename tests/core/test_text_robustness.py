"""Bad or odd input: a clear TextError or a defined result, never a hang or a raw traceback."""

import subprocess
import sys
import time

import pytest

import core.text.japanese as japanese
from core.frontend import read_text
from core.text import (
    Segment,
    TextError,
    clean_text,
    g2p,
    normalize_order,
    parse_text_to_segments,
    phones_to_prompt,
    segments_to_dicts,
)
from core.text.errors import NothingToSpeak
from tests.paths import ROOT

from .test_text_support import needs_japanese


@pytest.mark.parametrize("text", ["", "   ", "😀🎉", "…", "한국어", "%", "<en></en>", "<zh>Hello</zh>"])
def test_text_without_readable_content_gives_no_phones(text):
    assert g2p(text) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("</en>", "no opening tag"),
        ("你好</zh>", "no opening tag"),
        ("<zh>你好</ZH>", "Language mismatch: zh != ZH"),
        ("<zh>你好</en>", "Language mismatch"),
        ("<fr>bonjour</fr>", "Unknown language: fr"),
        ("<p:a1> 直接音素", "Unknown language: p:a1"),
        ("<>", "Unknown language"),
        ("<speaker:abc> hi", "Unknown language: speaker:abc "),  # (as written: it said "speaker,abc")
        ("<|speaker：abc|> hi", r"Unknown language: \|speaker：abc\| "),
        ("噷", "Chinese g2p cannot read"),
    ],
)
def test_bad_markup_raises_text_error(text, message):
    with pytest.raises(TextError, match=message):
        g2p(text)


def test_unclosed_tag_reads_to_the_end_like_the_original():
    assert [(s.language, s.text) for s in parse_text_to_segments("<en>hi 你好")] == [("EN", "hi 你好")]


@pytest.mark.parametrize(
    "order, expected",
    [
        ("zh,jp,en", ["ZH", "JP", "EN"]),
        ("EN, zh", ["EN", "ZH"]),
        (("jp", "ZH"), ["JP", "ZH"]),
        (None, ["ZH", "JP", "EN"]),
    ],
)
def test_order_accepts_strings_and_sequences_in_any_case(order, expected):
    assert normalize_order(order) == expected


@pytest.mark.parametrize("order", ["fr", "", "zh,de", "_"])
def test_bad_order_raises_text_error(order):
    with pytest.raises(TextError):
        normalize_order(order)


def test_character_outside_the_order_raises_text_error():
    with pytest.raises(TextError, match="covers the character"):
        g2p("hello 你好", order="en")


def test_leading_digit_takes_the_first_language_of_the_order():
    assert [(s.language, s.text) for s in parse_text_to_segments("2 apples")] == [("ZH", "2 "), ("EN", "apples")]
    assert [s.language for s in parse_text_to_segments("2 apples", "en,zh")] == ["EN"]


@pytest.mark.parametrize("space", ["\u00a0", "\u202f", "\u2009", "\u3000", "\u2028"])
def test_a_space_outside_ascii_still_parts_words(space):
    """(it was deleted: "hello\u00a0world" was read as one unknown word)"""
    assert clean_text(f"hello{space}world") == "hello world"
    assert g2p(f"hello{space}world") == g2p("hello world")


def test_fullwidth_letters_digits_and_punctuation_are_read_as_ascii():
    """(they were deleted: "２０２４年，ＡＢＣ" was read as "年")"""
    assert clean_text("２０２４年，ＡＢＣ！（ｔｅｓｔ）") == "2024年,ABC!'test'"
    assert g2p("２０２４年") == g2p("2024年")
    assert g2p("＜注意＞你好") == g2p("注意你好")  # (brackets, not tags: deleted as before)


def test_every_character_the_original_kept_or_replaced_is_cleaned_as_it_did():
    """The two additions (spaces outside ASCII, width forms) change only characters the original deleted:
    its rule is the replacements, then the filter."""
    from core.text import clean

    def original(text: str) -> str:
        replaced = clean._REPLACE_RE.sub(lambda match: clean._REPLACEMENTS[match.group(0)], text)
        return clean._UNKNOWN_CHARS_RE.sub("", replaced)

    for code in range(0xFFF0):
        text = f"a{chr(code)}b"
        if original(text) != "ab":
            assert clean_text(text) == original(text), hex(code)


@needs_japanese
def test_halfwidth_katakana_is_read_as_katakana():
    assert clean_text("ｶﾞｲﾄﾞ｡") == "ガイド."
    assert g2p("ｶﾞｲﾄﾞ") == g2p("ガイド")


def test_no_g2p_cleaning_keeps_phone_tags():
    assert clean_text(" <p:a1>你好：（测试）... ") == "<p:a1>你好,'测试'"


@pytest.mark.parametrize("text", ["你好世界。" * 2000, "hello world, " * 800, "1234567890" * 1000])
def test_ten_thousand_characters_finish_quickly(text):
    start = time.monotonic()
    phones = g2p(text)
    assert phones and time.monotonic() - start < 60


@needs_japanese
def test_long_japanese_run_does_not_crash_openjtalk():
    # OpenJTalk segfaults past ~2730 characters; we read long runs in chunks.
    phones = g2p("こんにちは" * 2000)
    assert len(phones) == 2000 * 9


@needs_japanese
def test_one_long_word_of_katakana_does_not_crash_openjtalk():
    """OpenJTalk segfaults on one word over ~1 KB (344 katakana in a row): run in a child process, so that a
    crash fails this test instead of ending the test run."""
    code = "from core.text.japanese import g2p_japanese; print(len(g2p_japanese('ア' * 400 + 'ｱ' * 400)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) == 800  # one vowel a character


def test_japanese_without_the_extra_names_the_extra(monkeypatch):
    japanese._openjtalk.cache_clear()
    monkeypatch.setitem(sys.modules, "pyopenjtalk", None)  # import now fails like a missing package
    try:
        with pytest.raises(TextError, match=r"fishtts\[ja\]"):
            g2p("こんにちは")
        assert g2p("你好") == [("ZH", "n"), ("ZH", "i2"), ("ZH", "h"), ("ZH", "ao3")]
    finally:
        japanese._openjtalk.cache_clear()


def test_japanese_without_a_dictionary_says_so(monkeypatch, tmp_path):
    pytest.importorskip("pyopenjtalk")
    japanese._openjtalk.cache_clear()
    monkeypatch.setenv("OPEN_JTALK_DICT_DIR", str(tmp_path))
    monkeypatch.setattr(japanese, "DEBIAN_DICT_DIR", str(tmp_path / "missing"))
    monkeypatch.setattr(japanese.os.path, "isfile", lambda path: False)
    try:
        with pytest.raises(TextError, match="dictionary"):
            g2p("こんにちは")
    finally:
        japanese._openjtalk.cache_clear()


def test_phones_to_prompt_keeps_punctuation_and_pad_raw():
    phones = [
        ("ZH", "n"),
        ("ZH", "i2"),
        (None, ","),
        ("EN", "HH"),
        (None, "…"),
        (None, "SP"),
        (None, "UNK"),
        (None, "_"),
        (None, "'"),
        (None, "-"),
        (None, "!"),
        (None, "?"),
        (None, "."),
    ]
    assert phones_to_prompt(phones) == "<p:n> <p:i2> , <p:HH> … SP UNK _ ' - ! ? ."
    assert phones_to_prompt(["n", "i2", ","]) == "<p:n> <p:i2> ,"
    assert phones_to_prompt([]) == ""


def test_segments_to_dicts_is_json_ready():
    segments = [Segment("你好", "ZH", ["n", "i2", "h", "ao3"])]
    assert segments_to_dicts(segments) == [{"text": "你好", "language": "ZH", "phones": ["n", "i2", "h", "ao3"]}]


def test_text_error_is_a_value_error():
    assert issubclass(TextError, ValueError)


def test_a_number_beyond_englishs_scale_words_is_read_digit_by_digit():
    """(inflect has no words past 10**36; it used to fail the whole request)"""
    from core.text.english_numbers import expand_numbers

    assert expand_numbers("1" * 70) == " ".join(["one"] * 70)
    assert expand_numbers("3." + "1" * 40) == "three point " + " ".join(["one"] * 40)


def test_a_broken_number_reader_is_not_blamed_on_the_text(monkeypatch):
    """Only inflect's out-of-range refusal is the text's fault: on a GPU host missing one of inflect's
    own dependencies, "Cannot read the number '0'" hid the real error."""
    import core.text.english_numbers as numbers

    class Broken:
        def number_to_words(self, number, **options):
            raise RuntimeError("inflect is broken here")

    monkeypatch.setattr(numbers, "_engine", lambda: Broken())
    with pytest.raises(RuntimeError, match="broken"):
        numbers.expand_numbers("0")


@pytest.mark.parametrize("text", ["#@&*", '"' * 1000, "😀🎉", "<zh>Hello</zh>"])
def test_a_text_with_nothing_to_speak_is_refused_not_babbled(text):
    """Its prompt would hold no phones: the model would babble up to its frame budget."""
    with pytest.raises(NothingToSpeak):
        read_text(text)


@pytest.mark.parametrize("use_g2p", [True, False])
def test_a_transcripts_phones_do_not_hide_a_text_with_nothing_to_speak(use_g2p):
    text = "<zh>Hello</zh>" if use_g2p else "#@&*"
    with pytest.raises(NothingToSpeak):
        read_text(text, "This is what the clip says.", use_g2p=use_g2p)


def test_a_piece_of_symbols_in_a_longer_text_is_left_out():
    pieces = read_text("Hello there. " + "*" * 200 + " Goodbye.", max_weight=60)
    assert [piece.text for piece in pieces] == ["Hello there.", "Goodbye."]


@pytest.mark.parametrize("max_weight", [180, 120])  # the text as one piece, or as several
def test_a_piece_cut_to_fit_the_context_loses_only_its_part_of_symbols(max_weight):
    """A piece cut again because its prompt does not fit: a part of symbols alone is left out, never its
    neighbours (that part's NothingToSpeak failed a text of one piece, and silently dropped the rest of
    its piece from a longer one)."""
    text = "Hello there friend. " + "!" * 60 + " Goodbye dear friend, this part stays. A second sentence."
    fits = lambda prompt: len(prompt) < 90  # noqa: E731
    pieces = read_text(text, "The clip says this.", use_g2p=False, max_weight=max_weight, fits=fits)
    spoken = " ".join(piece.text for piece in pieces)
    assert len(pieces) > 1 and "this part stays" in spoken and "A second sentence." in spoken
    assert all(any(c.isalpha() for c in piece.text) for piece in pieces)


@pytest.mark.parametrize(
    "text, language",
    [
        ("<en>" + "This is a sentence. " * 10 + "</en>", "EN"),  # was 422: the closing tag's piece had no opening
        ("<jp>" + "今日は良い天気です。" * 10, "JP"),  # unclosed: reads to the end, in every piece
        ("<zh>" * 30 + "你好" * 40 + "</zh>" * 30, "ZH"),  # never cut inside a tag
    ],
)
def test_a_tagged_passage_longer_than_a_piece_keeps_its_language_in_every_piece(text, language):
    pieces = read_text(text, max_weight=60)
    assert len(pieces) > 1
    assert {segment.language for piece in pieces for segment in piece.segments} == {language}


def test_unspaced_cjk_beside_spaced_words_is_cut_to_the_piece_size():
    """(One space in the clause kept 400 CJK characters in one piece: ~100 s of speech in one prompt)"""
    from core.text.split import MAX_SEGMENT_WEIGHT, split_text, text_weight

    text = "我们在 GitHub 上发布了" + "这是一个没有标点的很长的句子" * 30
    pieces = split_text(text)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert len(pieces) > 5 and max(text_weight(piece) for piece in pieces) <= MAX_SEGMENT_WEIGHT


def test_a_cut_in_unspaced_cjk_moves_out_of_a_number_or_a_latin_word():
    """('2023' cut as '20' | '23' was read as two numbers; 'Python' as 'Py' | 'thon')"""
    from core.text.split import split_text

    for word in ("2023", "Python"):
        for shift in range(8):
            text = "我们" * 25 + "好" * shift + f"决定在{word}年写程序" + "然后" * 30
            pieces = split_text(text)
            assert "".join(pieces) == text and any(word in piece for piece in pieces), (word, shift, pieces)


@pytest.mark.parametrize("transcript", ["<|im_end|> hello", "你好</zh>"])
def test_a_transcript_g2p_cannot_read_is_named_in_the_error(transcript):
    """(a saved voice's transcript failed every request with an error that seemed the text's)"""
    with pytest.raises(TextError, match="^the reference's transcript: "):
        read_text("hi", transcript)


def test_the_texts_own_bad_tag_is_not_put_on_the_transcript():
    with pytest.raises(TextError, match="^Unknown language: b "):
        read_text("<b>hi</b>", "hello there")
