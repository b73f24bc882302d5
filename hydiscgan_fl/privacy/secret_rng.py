"""Secret randomness for what a DP guarantee relies on: sampling and noise.

Amplification by subsampling holds only if the sample is secret, and Gaussian noise protects only if
it cannot be predicted. So every DP-relevant draw (utterance-level Poisson batches, DP-SGD noise,
speaker-level client sampling and DP-FedAvg noise) comes from these sources, seeded from the operating
system's CSPRNG (`secrets`), never from the run seed: a party that knows the run config (the server
knows it all) cannot replay them. DP runs are therefore not reproducible; runs without DP are.

The generators are ordinary PRNGs (Mersenne Twister / PCG64 / SystemRandom) with a secret seed, not
Opacus's `secure_mode` (which needs torchcsprng): floating-point attacks on the Gaussian sampler
(Mironov 2012) are not ruled out.
"""

from __future__ import annotations

import random
import secrets

import numpy as np
import torch


def secret_torch_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` with a secret seed (63 bits from the OS)."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def secret_numpy_rng() -> np.random.Generator:
    """A numpy generator with a secret 128-bit seed from the OS."""
    return np.random.default_rng(secrets.randbits(128))


def secret_random() -> random.Random:
    """Python's `random` API drawing from the OS's CSPRNG (it has no state to save or replay)."""
    return random.SystemRandom()
