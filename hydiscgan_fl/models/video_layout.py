"""Utterance rows <-> padded videos: how context models see a batch of whole videos.

A batch holds the utterances of whole videos as rows (N, D), in any order. A :class:`VideoLayout` says
where each row sits in a padded (videos, T, D) tensor (its video, then its position), with a mask of the
valid slots. ``pad`` fills the padded tensor (zeros in padding), ``unpad`` returns one row per utterance in
the batch's row order, so per-utterance outputs and losses never see padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class VideoLayout:
    index: torch.Tensor  # (V, T) long: the row in each slot (0 in padding)
    mask: torch.Tensor  # (V, T) bool: True where a slot holds an utterance
    inverse: torch.Tensor  # (N,) long: row i is slot inverse[i] of the flattened valid slots

    @classmethod
    def of(cls, videos: np.ndarray, positions: np.ndarray, device: torch.device | None = None) -> VideoLayout:
        """The layout of rows whose video and position in it are `videos[i]`, `positions[i]`."""
        videos, positions = np.asarray(videos).reshape(-1), np.asarray(positions).reshape(-1)
        if videos.shape != positions.shape or videos.size == 0:
            raise ValueError(f"videos {videos.shape} and positions {positions.shape} must be equal, non-empty 1-D")
        _, video_of_row = np.unique(videos, return_inverse=True)
        video_of_row = video_of_row.reshape(-1)
        order = np.lexsort((positions, video_of_row))  # rows by video, then by position in it
        counts = np.bincount(video_of_row)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(len(order)) - starts[video_of_row[order]]
        index = np.zeros((len(counts), int(counts.max())), dtype=np.int64)
        mask = np.zeros(index.shape, dtype=bool)
        index[video_of_row[order], slot] = order
        mask[video_of_row[order], slot] = True
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[index[mask]] = np.arange(len(order))
        as_tensor = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        return cls(as_tensor(index), as_tensor(mask), as_tensor(inverse))

    @property
    def lengths(self) -> torch.Tensor:
        """Utterances per video (V,)."""
        return self.mask.sum(dim=1)

    def __len__(self) -> int:
        """The number of rows (utterances)."""
        return int(self.inverse.shape[0])

    def pad(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, ...) rows -> (V, T, ...) with zeros in padding."""
        if rows.shape[0] != len(self):
            raise ValueError(f"the layout covers {len(self)} rows, got {rows.shape[0]}")
        padded = rows[self.index]
        mask = self.mask.reshape(*self.mask.shape, *([1] * (rows.dim() - 1)))
        return torch.where(mask, padded, torch.zeros((), dtype=rows.dtype, device=rows.device))

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """(V, T, ...) -> (N, ...) in the rows' order; padding slots are dropped."""
        return padded[self.mask][self.inverse]
