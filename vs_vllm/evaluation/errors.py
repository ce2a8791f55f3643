"""The one error type of ``vs-vllm eval``: a user-facing, one-line message (the CLI prints it and exits 2)."""

from __future__ import annotations

__all__ = ["EvalError"]


class EvalError(ValueError):
    """Bad data, an unreadable image, an unreachable or refusing server. ``str(exc)`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
