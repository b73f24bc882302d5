"""A Grid for unit tests of the strategy: a fixed set of node ids, nothing sent (the one the update replay
uses, `hydiscgan_fl.orchestration.update_replay.ListedNodes`)."""

from hydiscgan_fl.orchestration.update_replay import ListedNodes as StaticGrid

__all__ = ["StaticGrid"]
