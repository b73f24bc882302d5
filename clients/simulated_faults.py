"""Faults and attacks a client injects on purpose, for robustness experiments (`fault-rate`,
`byzantine-clients`, `byzantine-mode`); all seeded, so every run injects the same."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context

from hydiscgan_fl.config import HyDiscGANConfig

BYZANTINE_SCALE = -10.0
INFLATED_EXAMPLES = 10**9  # what an "inflate" client claims as its number of examples


def injected_fault(cfg: HyDiscGANConfig, server_round: int, client_key: int) -> str:
    """'crash', 'timeout' or '' for this client in this round, seeded so that every run injects the same."""
    rng = np.random.default_rng([cfg.seed, server_round, client_key])
    if rng.random() >= cfg.fault_rate:
        return ""
    return "crash" if rng.random() < 0.5 else "timeout"


def is_byzantine(cfg: HyDiscGANConfig, context: Context) -> bool:
    """The first `byzantine-clients` partitions attack (deterministic; nodes without partition-id never do)."""
    return int(context.node_config.get("partition-id", cfg.byzantine_clients)) < cfg.byzantine_clients


def poison(trained: dict[str, torch.Tensor], received: dict[str, torch.Tensor], mode: str,
           seed: int) -> dict[str, torch.Tensor]:
    """"scale" and "inflate": the update times BYZANTINE_SCALE; "random": standard-normal weights of the
    same shapes."""
    if mode in ("scale", "inflate"):
        return {key: received[key] + BYZANTINE_SCALE * (trained[key] - received[key]) for key in received}
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(received[key].shape, generator=generator) for key in received}


def claimed_examples(mode: str, honest: int) -> int:
    """The `num-examples` a Byzantine client reports: "inflate" claims INFLATED_EXAMPLES, so that its
    poisoned update would outweigh every honest one in an example-weighted rule; other modes the truth."""
    return INFLATED_EXAMPLES if mode == "inflate" else honest


def reported_examples(cfg: HyDiscGANConfig, context: Context, honest: int) -> int:
    """The `num-examples` this client reports: the truth, or what a Byzantine client claims."""
    return claimed_examples(cfg.byzantine_mode, honest) if is_byzantine(cfg, context) else honest
