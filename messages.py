"""One-line error messages: what a user reads instead of a traceback (the cause stays chained)."""
from __future__ import annotations

MAX_MESSAGE = 300  # a TFRecord reader's error can carry the whole damaged record as bytes


def first_line(error: BaseException, with_type: bool = False, limit: int = MAX_MESSAGE) -> str:
    """The first line of ``error``'s message (its type's name when it has none), cut at ``limit``
    characters; prefixed with the type's name when ``with_type``."""
    line = (str(error).strip() or type(error).__name__).splitlines()[0]
    if len(line) > limit:
        line = line[:limit] + " [...]"
    return f"{type(error).__name__}: {line}" if with_type else line
