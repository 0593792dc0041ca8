"""The rebuild's record of written documents: compact, and exact across its merges."""

from __future__ import annotations

import pytest

from app.projector import rebuild


def test_written_keys_are_found_before_and_after_each_merge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rebuild, "_MERGE_AT", 8)
    written = rebuild._Written()
    keys = [("orders", f"o-{n}") for n in range(100)]
    for n, key in enumerate(keys):
        written.add(key)
        assert all(k in written for k in keys[: n + 1])
        assert ("orders", f"o-{n + 1}") not in written
        assert ("products", f"o-{n}") not in written  # the collection is part of the key
    assert len(written._sorted) >= 64  # most went into the sorted array
    assert list(written._sorted) == sorted(written._sorted)
