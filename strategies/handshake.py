"""The known-ids handshake: a node's first instruction carries the training utterance ids of the
server's text (shareable metadata), and the client refuses data holding others. A node that failed
its round is sent the ids again, since it may not have received or checked them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flwr.app import ConfigRecord


class KnownIdsHandshake:
    def __init__(self, known_ids: Sequence[str]):
        self.known_ids = sorted(known_ids)
        self._introduced: set[int] = set()

    def config_for(self, node_id: int, config: ConfigRecord) -> ConfigRecord:
        """`config`, with the known ids added for a node not introduced yet."""
        if not self.known_ids or node_id in self._introduced:
            return config
        return ConfigRecord({**config, "known-ids": self.known_ids})

    def sent(self, node_ids: Iterable[int]) -> None:
        self._introduced.update(node_ids)

    def failed(self, node_ids: Iterable[int]) -> None:
        self._introduced.difference_update(node_ids)
