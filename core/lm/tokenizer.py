"""The text tokenizer: HF `tokenizers` on tokenizer.json, with transformers' BOS/EOS rules.

transformers rebuilds a LlamaTokenizerFast's post-processor from `add_bos_token`/`add_eos_token`
in tokenizer_config.json; a PreTrainedTokenizerFast uses the file's own post-processor. We apply
the same rule without depending on transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer

from ..checkpoints import DEFAULT_CHECKPOINTS_DIR, HF_REPO_ID, TOKENIZER_FILENAMES

_LLAMA_CLASSES = {"LlamaTokenizer", "LlamaTokenizerFast"}


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class TextTokenizer:
    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
            path = folder / name
            if path.is_file():
                config.update(json.loads(path.read_text(encoding="utf-8")))
        is_llama = config.get("tokenizer_class") in _LLAMA_CLASSES
        self.add_bos = bool(config.get("add_bos_token", is_llama))
        self.add_eos = bool(config.get("add_eos_token", False))
        # None: the file's own post-processor decides (PreTrainedTokenizerFast behaviour).
        self.rebuild_specials = is_llama or "add_bos_token" in config or "add_eos_token" in config
        self.bos_token_id = self._id(config, "bos_token", "<s>")
        self.eos_token_id = self._id(config, "eos_token", "</s>")
        self.pad_token_id = self._id(config, "pad_token", "<pad>")

    def _id(self, config: dict, key: str, default: str) -> int:
        token = _token_content(config.get(key)) or default
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {key} {token!r}")
        return token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not add_special_tokens:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        if not self.rebuild_specials:
            return self.tokenizer.encode(text, add_special_tokens=True).ids
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos_token_id] if self.add_bos else []) + ids + ([self.eos_token_id] if self.add_eos else [])

    def id_to_token(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)


def resolve_tokenizer_dir(spec: str | os.PathLike = HF_REPO_ID,
                          checkpoints_dir: str | os.PathLike = DEFAULT_CHECKPOINTS_DIR) -> Path:
    """A local folder (or its tokenizer.json), else a Hugging Face repo id.

    The official repo id resolves to `checkpoints_dir` when `fishtts download` put the files there,
    so a downloaded setup works offline.
    """
    path = Path(spec)
    if path.is_file() and path.name == "tokenizer.json":
        return path.parent
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise ValueError(f"{path} has no tokenizer.json")
        return path
    spec = str(spec)
    if spec == HF_REPO_ID and (Path(checkpoints_dir) / "tokenizer.json").is_file():
        return Path(checkpoints_dir)
    if spec.count("/") != 1 or spec.startswith((".", "/")):
        raise ValueError(f"tokenizer not found: {spec} (a folder with tokenizer.json or a Hugging Face repo id)")
    from huggingface_hub import hf_hub_download

    folder = None
    for name in TOKENIZER_FILENAMES:
        try:
            folder = Path(hf_hub_download(repo_id=spec, filename=name)).parent
        except Exception as exc:  # noqa: BLE001 - offline, missing repo, missing optional file
            if name == "tokenizer.json":
                raise ValueError(f"cannot get tokenizer {spec!r} from Hugging Face: {exc.__class__.__name__}") from None
    return folder


def load_tokenizer(spec: str | os.PathLike = HF_REPO_ID,
                   checkpoints_dir: str | os.PathLike = DEFAULT_CHECKPOINTS_DIR) -> TextTokenizer:
    return TextTokenizer(resolve_tokenizer_dir(spec, checkpoints_dir))
