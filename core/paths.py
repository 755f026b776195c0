"""The folder guard: a client names files only inside a folder fixed when the server starts.

A client path is read as the original read it (relative to the server's working directory, so
`checkpoints/vqgan-v1.pth` keeps working), or relative to the folder itself. Whatever it names must,
after resolving every link, lie inside the folder:

- empty, absolute (`/x`, `~x`, `C:\\x`), backslashes, NUL or any `..` part -> BadPath (never resolved);
- a link inside the folder that leads out of it                          -> OutsideFolder;
- not in the folder                                                     -> NotInFolder.

(The server answers them 400, 403 and 404.)

Only paths inside the folder are ever looked at, so errors cannot be used to probe the rest of the disk.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

MAX_PATH_LENGTH = 1024
MAX_NAME_BYTES = 255  # one file or folder name (NAME_MAX); longer ones make the OS raise, not answer "missing"


class FolderError(ValueError):
    """A client-named path the guard refuses; the message starts with the request field."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class BadPath(FolderError):
    """Malformed: empty, absolute, `..`, backslashes (never looked at)."""


class OutsideFolder(FolderError):
    """It leads out of the folder (or to a place the server may not fetch from)."""


class NotInFolder(FolderError):
    """Nothing of that name in the folder."""


class FolderGuard:
    def __init__(self, folder: Path, label: str, default_name: str):
        self.root = Path(folder).resolve()
        self.lexical_root = Path(os.path.abspath(folder))  # as configured, before resolving links
        self.label = label  # "checkpoints" or "references", for messages
        self.default_name = default_name  # the folder name the original's default paths start with

    def display(self, path: Path) -> str:
        """How a resolved path is shown to clients: relative to the folder, never absolute."""
        try:
            relative = path.relative_to(self.root).as_posix()
        except ValueError:
            return "<outside>"
        return self.label if relative == "." else f"{self.label}/{relative}"

    def replacements(self) -> dict[str, str]:
        """For `errors.scrub`: the folder's absolute path as clients see it."""
        return {str(self.root): self.label}

    def resolve(self, user_path: str, *, field: str, must_exist: bool = True) -> Path:
        parts = self._parts(user_path, field)
        candidates = [Path.cwd().joinpath(*parts), self.lexical_root.joinpath(*parts)]
        if len(parts) > 1 and parts[0] in (self.default_name, self.lexical_root.name, self.root.name):
            candidates.append(self.lexical_root.joinpath(*parts[1:]))
        missing, escapes = [], False
        for candidate in candidates:
            if not self._lexically_inside(candidate):
                continue  # another folder: not ours to look at
            try:
                resolved = candidate.resolve()
            except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13): a broken link
                continue
            if not self.contains(resolved):
                escapes = True  # a link inside the folder points out of it; never check what it points to
            elif resolved.exists():
                return resolved
            else:
                missing.append(resolved)
        if escapes:
            raise OutsideFolder(f"{field}: {user_path!r} leads outside the {self.label} folder.", field)
        if must_exist or not missing:
            raise NotInFolder(f"{field}: {user_path!r} was not found in the {self.label} folder.", field)
        return missing[0]

    def _lexically_inside(self, path: Path) -> bool:
        return any(path == root or root in path.parents for root in (self.lexical_root, self.root))

    def contains(self, path: Path) -> bool:
        return path == self.root or self.root in path.parents

    @staticmethod
    def _parts(user_path: str, field: str) -> tuple[str, ...]:
        if not isinstance(user_path, str) or not user_path.strip():
            raise BadPath(f"{field}: the path is empty.", field)
        if len(user_path) > MAX_PATH_LENGTH or "\x00" in user_path or "\\" in user_path:
            raise BadPath(f"{field}: not a valid relative path.", field)
        path = PurePosixPath(user_path)
        if path.is_absolute() or user_path.startswith("~") or (len(user_path) > 1 and user_path[1] == ":"):
            raise BadPath(
                f"{field}: absolute paths are not accepted; name a file inside the server's folder "
                "relative to it (or upload the file).",
                field,
            )
        if ".." in path.parts:
            raise BadPath(f"{field}: '..' is not allowed in paths.", field)
        parts = tuple(p for p in path.parts if p not in ("", "."))
        if any(len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for p in parts):
            raise BadPath(f"{field}: a file or folder name in the path is longer than {MAX_NAME_BYTES} bytes.", field)
        if not parts:
            raise BadPath(f"{field}: the path names no file.", field)
        return parts
