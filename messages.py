"""One-line error messages: what a user reads instead of a traceback (the cause stays chained)."""
from __future__ import annotations

MAX_MESSAGE = 300  # a TFRecord reader's error can carry the whole damaged record as bytes


def first_line(error: BaseException, with_type: bool = False, limit: int = MAX_MESSAGE) -> str:
    """The first line of ``error``'s message (its type's name when it has none), cut at ``limit``
    characters; prefixed with the type's name when ``with_type``."""
    name, text = type(error).__name__, str(error).strip()
    line = text.splitlines()[0] if text else ""
    if len(line) > limit:
        line = line[:limit] + " [...]"
    if not line:
        return name
    return f"{name}: {line}" if with_type else line
