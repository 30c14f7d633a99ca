"""Build a backend from a storage cluster's kind and config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from berth_shared.backends.base import Backend
from berth_shared.backends.file import FileBackend
from berth_shared.errors import InvalidArgument

KINDS = ("file",)


def validate_backend_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """Check a cluster's backend config before it is stored; return the normalised form."""
    if kind == "file":
        root = config.get("root")
        if not isinstance(root, str) or not root.startswith("/"):
            raise InvalidArgument("file backend config needs 'root', an absolute path", reason="invalid_backend_config")
        return {"root": root}
    raise InvalidArgument(f"unknown backend kind {kind!r}; known: {', '.join(KINDS)}", reason="unknown_backend_kind")


def build_backend(kind: str, config: dict[str, Any]) -> Backend:
    cfg = validate_backend_config(kind, config)
    return FileBackend(Path(cfg["root"]))
