"""The S1 tokenizer against the original's ids (tokenizer_cases.json), and its file handling."""

from __future__ import annotations

import shutil

import pytest

from core.s1.tokenizer import BUILTIN_SPECIAL_TOKENS, S1TokenizerError, load_s1_tokenizer

from .support import (
    S1_CHECKPOINT,
    tokenizer_cases,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_s1_tokenizer(S1_CHECKPOINT)


def test_sizes_and_special_ids_match_the_original(tokenizer):
    info = tokenizer_cases()["tokenizer"]
    assert tokenizer.bpe_size == info["mergeable_ranks"]
    assert len(tokenizer.special_ids) == info["special_tokens"]
    assert (tokenizer.semantic_begin_id, tokenizer.semantic_end_id) == (
        info["semantic_begin_id"],
        info["semantic_end_id"],
    )
    assert tokenizer.im_end_id == info["im_end_id"]
    for token, token_id in info["special_ids"].items():
        assert tokenizer.token_id(token) == token_id


@pytest.mark.parametrize("name", sorted(tokenizer_cases()["cases"]))
def test_encode_and_decode_equal_the_original(tokenizer, name):
    case = tokenizer_cases()["cases"][name]
    assert tokenizer.encode(case["text"]) == case["ids"]
    assert tokenizer.encode(case["text"], allow_special=False) == case["ids_no_special"]
    assert tokenizer.decode(case["ids"]) == case["decoded"]


def test_special_ids_follow_key_order_not_the_written_ids(tmp_path, tokenizer):
    folder = tmp_path / "tok"
    shutil.copytree(S1_CHECKPOINT, folder, ignore=shutil.ignore_patterns("*.pth"))
    text = (folder / "special_tokens.json").read_text(encoding="utf-8")
    (folder / "special_tokens.json").write_text(text.replace(": 5", ": 9"), encoding="utf-8")  # scramble ids
    assert load_s1_tokenizer(folder).special_ids == tokenizer.special_ids


def test_without_special_tokens_json_the_builtin_list_is_used(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(S1_CHECKPOINT / "tokenizer.tiktoken", folder)
    tokenizer = load_s1_tokenizer(folder)
    assert len(tokenizer.special_ids) == len(BUILTIN_SPECIAL_TOKENS) == 15 + 4096
    assert tokenizer.semantic_begin_id == tokenizer.bpe_size + 15
    assert tokenizer.num_semantic == 4096


def test_missing_or_broken_files_give_clear_errors(tmp_path):
    with pytest.raises(S1TokenizerError, match="not found"):
        load_s1_tokenizer(tmp_path)
    (tmp_path / "tokenizer.tiktoken").write_text("AA== 0\nb@d! 1\n", encoding="utf-8")
    with pytest.raises(S1TokenizerError, match=":2: bad entry"):
        load_s1_tokenizer(tmp_path)
    (tmp_path / "tokenizer.tiktoken").write_text("AA== 0\n= 1\n\nAQ== 2\n", encoding="utf-8")
    (tmp_path / "special_tokens.json").write_text('{"<|im_end|>": 0}', encoding="utf-8")
    with pytest.raises(S1TokenizerError, match="semantic:0"):
        load_s1_tokenizer(tmp_path)
    (tmp_path / "special_tokens.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(S1TokenizerError, match="special token strings"):
        load_s1_tokenizer(tmp_path)
