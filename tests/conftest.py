import os

import pytest

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture(scope="session")
def shared_data() -> str:
    """The real corpus beside the checkout (../shared/data); tests needing it skip without it."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real corpus not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA
