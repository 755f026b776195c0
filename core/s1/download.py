"""Fetch the OpenAudio S1-mini folder from Hugging Face (a gated repo: it needs an accepted licence and a token).

The token comes from the caller or `HF_TOKEN`; huggingface_hub honours `HF_ENDPOINT` (mirrors) and shows
progress. Files already present (non-empty) are kept. Every failure is one clear `S1DownloadError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .load import CODEC_FILENAME, MODEL_FILENAME
from .tokenizer import SPECIAL_TOKENS_FILENAME, TOKENIZER_FILENAME

S1_REPO_ID = "fishaudio/openaudio-s1-mini"
S1_FILENAMES = ("config.json", TOKENIZER_FILENAME, SPECIAL_TOKENS_FILENAME, CODEC_FILENAME, MODEL_FILENAME)


class S1DownloadError(RuntimeError):
    """The S1 files could not be fetched (no or refused token, no network, missing file)."""


def download_s1(
    target_dir: str | os.PathLike, repo_id: str = S1_REPO_ID, token: str | None = None, endpoint: str | None = None
) -> list[Path]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    token = token or os.environ.get("HF_TOKEN") or None
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in S1_FILENAMES:
        destination = target / name
        if destination.is_file() and destination.stat().st_size > 0:
            paths.append(destination)
            continue
        try:
            path = hf_hub_download(repo_id=repo_id, filename=name, local_dir=target, token=token, endpoint=endpoint)
        except (GatedRepoError, RepositoryNotFoundError):
            how = (
                "the token was refused: accept the model's licence on its Hugging Face page with that account"
                if token
                else "no token given: accept the licence on its Hugging Face page, then set HF_TOKEN"
            )
            raise S1DownloadError(f"{repo_id} is gated and {how}") from None
        except LocalEntryNotFoundError:
            raise S1DownloadError(
                f"cannot reach the Hugging Face Hub to fetch {repo_id}/{name} (no network?)"
            ) from None
        except HfHubHTTPError as exc:
            raise S1DownloadError(f"fetching {repo_id}/{name} failed: {str(exc).splitlines()[0]}") from None
        paths.append(Path(path))
    return paths
