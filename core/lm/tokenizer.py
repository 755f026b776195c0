"""The text tokenizer: HF `tokenizers` on tokenizer.json, with transformers' BOS/EOS rules.

transformers rebuilds a LlamaTokenizerFast's post-processor from `add_bos_token`/`add_eos_token`
in tokenizer_config.json; a PreTrainedTokenizerFast uses the file's own post-processor. We apply
the same rule without depending on transformers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tokenizers import Tokenizer

from ..checkpoints import DEFAULT_CHECKPOINTS_DIR, HF_REPO_ID, TOKENIZER_FILENAMES, read_json_object
from ..paths import FolderGuard, NotInFolder, OutsideFolder

_LLAMA_CLASSES = {"LlamaTokenizer", "LlamaTokenizerFast"}
_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_tokenizer(path: Path) -> Tokenizer:
    # tokenizers raises a bare Exception ("Model missing.", "key must be a string") for a bad file.
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is not a tokenizer
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ValueError(f"{path} is not a valid tokenizer.json: {reason}") from None


def _read_config(path: Path) -> dict:
    data = read_json_object(path, "tokenizer file")
    # The entries we read must be text: a number here would reach tokenizers as a TypeError.
    for key in _TOKEN_KEYS:
        content = _token_content(data.get(key))
        if content is not None and not isinstance(content, str):
            raise ValueError(f"{path}: {key} must be a string or an object with a string content, got {content!r}")
    if not isinstance(data.get("tokenizer_class") or "", str):  # a list would fail the set lookup below
        raise ValueError(f"{path}: tokenizer_class must be a string, got {data['tokenizer_class']!r}")
    return data


class TextTokenizer:
    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        self.tokenizer = _read_tokenizer(folder / "tokenizer.json")
        config: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
            path = folder / name
            if path.is_file():
                config.update(_read_config(path))
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


def resolve_tokenizer_dir(
    spec: str | os.PathLike = HF_REPO_ID,
    checkpoints_dir: str | os.PathLike = DEFAULT_CHECKPOINTS_DIR,
    *,
    root: FolderGuard | None = None,
    allow_download: bool = True,
    field: str = "tokenizer",
) -> Path:
    """The one rule for tokenizers: a local folder (or its tokenizer.json), else a Hugging Face repo id.

    The official repo id resolves to the checkpoints folder when `fishtts download` put the files
    there, so a downloaded setup works offline. `root` (the server's checkpoints folder) confines
    local paths to it; `allow_download=False` refuses any other repo id (OutsideFolder).
    """
    spec = str(spec)
    looks_like_repo = bool(_REPO_ID.match(spec)) and not spec.endswith(".json")
    path: Path | None = Path(spec) if root is None and _exists(spec) else None  # root: only paths inside it
    if root is not None:
        try:
            path = root.resolve(spec, field=field)
        except (NotInFolder, OutsideFolder):
            if not looks_like_repo:
                raise
            path = None
    if path is not None:
        if path.is_file() and path.name == "tokenizer.json":
            return path.parent
        if path.is_dir() and (path / "tokenizer.json").is_file():
            return path
        raise ValueError(f"{field}: {spec!r} is not a folder with tokenizer.json.")
    if spec == HF_REPO_ID:
        for folder in ([root.root] if root is not None else []) + [Path(checkpoints_dir)]:
            if (folder / "tokenizer.json").is_file():
                return folder
    if not looks_like_repo:
        raise ValueError(f"tokenizer not found: {spec} (a folder with tokenizer.json or a Hugging Face repo id)")
    if not allow_download:
        raise OutsideFolder(
            f"{field}: {spec!r} is not in the checkpoints folder and downloads are disabled; "
            "put its files there or start the server with --allow-downloads.",
            field,
        )
    if root is not None and _exists(spec):  # a same-named local folder would be read: it lies outside
        raise OutsideFolder(f"{field}: {spec!r} is outside the checkpoints folder.", field)
    return download_tokenizer(spec)


def _exists(spec: str) -> bool:
    """Path(spec).exists(), False for a name the OS refuses (a part over 255 bytes, a NUL)."""
    try:
        return Path(spec).exists()
    except (OSError, ValueError):
        return False


def download_tokenizer(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    folder = None
    for name in TOKENIZER_FILENAMES:
        try:
            folder = Path(hf_hub_download(repo_id=repo_id, filename=name)).parent
        except Exception as exc:  # noqa: BLE001 - offline, missing repo, missing optional file
            if name == "tokenizer.json":
                raise ValueError(
                    f"cannot get tokenizer {repo_id!r} from Hugging Face: {exc.__class__.__name__}"
                ) from None
    return folder


def load_tokenizer(
    spec: str | os.PathLike = HF_REPO_ID, checkpoints_dir: str | os.PathLike = DEFAULT_CHECKPOINTS_DIR
) -> TextTokenizer:
    return TextTokenizer(resolve_tokenizer_dir(spec, checkpoints_dir))
