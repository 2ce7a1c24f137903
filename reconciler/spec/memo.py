"""A bounded memo keyed by a document's content hash: for values that are a pure function of
one document (a derived hash, the secret references it names), asked again at every load or
plan of a long-running daemon. Bounded so it does not grow with every document ever seen."""

from __future__ import annotations

from typing import TypeVar

V = TypeVar("V")


class HashMemo(dict[str, V]):
    LIMIT = 20_000

    def remember(self, key: str, value: V) -> V:
        if key:  # a document without a hash is not remembered
            if len(self) >= self.LIMIT:
                self.clear()
            self[key] = value
        return value
