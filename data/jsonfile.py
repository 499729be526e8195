"""The project's small JSON files (a curation's summary.json, a model's metadata asset): read into a
dict, or a ValueError that names the file, never a bare parser message."""
from __future__ import annotations

import json
from typing import IO


def load_object(f: IO[str], path: str, what: str) -> dict:
    """The JSON object in ``f`` (opened from ``path``); ValueError "<path>: not a <what> (...)"."""
    try:
        value = json.load(f)
    except ValueError as e:  # a hand-edited or truncated file: say which, not just where in it
        raise ValueError(f"{path}: not a {what} (invalid JSON: {e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a {what} (a JSON {type(value).__name__} where an object belongs)")
    return value
