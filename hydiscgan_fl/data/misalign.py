"""Simulated misalignment of audio/visual against text, for testing the "unaligned" claim on aligned data.

A *stream* is what a model reads as one sequence of audio (or visual) steps: the valid steps of one
utterance for sequence data (N, T, D), the utterance vectors of one video in position order for vector data
(bundled MOSI, where the steps are a video's utterances). Per stream and modality:

1. **drop**: each step is removed with probability ``rate`` (at least one step is kept);
2. **shift**: the remaining steps are rolled (circularly) by an offset drawn uniformly from
   ``[-shift, shift]``.

Sequences keep the result as their new valid steps (lengths shrink by the dropped steps). Vector data keeps
one vector per utterance: after dropping and rolling, utterance k of the video receives the stream's step
k, and the last step when the stream has become shorter (so utterances get another utterance's audio or
visual, as they would from a recording whose tracks slipped). Text is never changed.

Draws are seeded by (seed, stream id, modality): the same utterance (or video) is misaligned the same way on
whichever client or split it lies, at train and at test time. This is a reproducibility seed of a
simulation, not a privacy mechanism.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["Misalignment"]


def _stream_rng(seed: int, stream: str, modality: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), zlib.crc32(modality.encode())])


@dataclass(frozen=True)
class Misalignment:
    rate: float
    shift: int
    seed: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0 or self.shift < 0:
            raise ValueError(f"misalignment needs 0 <= rate < 1 and shift >= 0, got rate {self.rate}, "
                             f"shift {self.shift}")

    @property
    def active(self) -> bool:
        return self.rate > 0.0 or self.shift > 0

    def stream(self, steps: np.ndarray, stream_id: str, modality: str) -> np.ndarray:
        """One stream's (L, D) steps after dropping and shifting (1 <= length <= L)."""
        rng = _stream_rng(self.seed, stream_id, modality)
        if len(steps) == 0:
            return steps
        keep = rng.random(len(steps)) >= self.rate
        if not keep.any():
            keep[rng.integers(len(steps))] = True
        offset = int(rng.integers(-self.shift, self.shift + 1))
        return np.roll(steps[keep], offset, axis=0)

    def sequences(self, values: np.ndarray, lengths: np.ndarray, ids: np.ndarray,
                  modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, T, D) sequences with lengths (N,): every utterance is a stream."""
        out, new_lengths = np.zeros_like(values), np.array(lengths, copy=True)
        for row, (utterance, length) in enumerate(zip(ids.tolist(), np.asarray(lengths).tolist())):
            kept = self.stream(values[row, :length], str(utterance), modality)
            out[row, : len(kept)] = kept
            new_lengths[row] = len(kept)
        return out, new_lengths

    def vectors(self, values: np.ndarray, videos: np.ndarray, positions: np.ndarray, modality: str) -> np.ndarray:
        """(N, D) utterance vectors: every video's utterances, in position order, are a stream."""
        out = np.array(values, copy=True)
        for video in np.unique(videos):
            rows = np.flatnonzero(videos == video)
            rows = rows[np.argsort(positions[rows], kind="stable")]
            kept = self.stream(values[rows], str(video), modality)
            out[rows] = kept[np.minimum(np.arange(len(rows)), len(kept) - 1)]
        return out
