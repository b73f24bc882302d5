"""Batches of whole videos for models that read context (their registry entry `needs_context`).

:class:`Videos` holds the video and position of every row of a client's (or the server's) utterance
tensors; its minibatches are shuffled whole videos of about `batch-size` utterances, each with the
:class:`VideoLayout` of its rows. Utterance-level models keep `minibatches` and get no layout, so their
path (and its random draws) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hydiscgan_fl.data import MultimodalDataset
from hydiscgan_fl.models import VideoLayout
from hydiscgan_fl.training.data import minibatches


@dataclass(frozen=True)
class Videos:
    """The video (as a number) and position of each row, in the rows' order."""

    video_of_row: np.ndarray
    positions: np.ndarray

    @classmethod
    def of(cls, dataset: MultimodalDataset) -> Videos:
        _, video_of_row = np.unique(dataset.videos, return_inverse=True)
        return cls(video_of_row.reshape(-1), np.asarray(dataset.positions))

    def layout(self, rows: torch.Tensor | None = None, device: torch.device | None = None) -> VideoLayout:
        """The layout of `rows` (indices into the rows; default all of them, in order)."""
        index = np.arange(len(self.positions)) if rows is None else rows.cpu().numpy()
        return VideoLayout.of(self.video_of_row[index], self.positions[index], device)

    def minibatches(self, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        """A shuffled epoch of row-index batches: whole videos, added to a batch until it holds at least
        `batch_size` utterances (a video longer than that is a batch of its own)."""
        rows_of_video = [np.flatnonzero(self.video_of_row == v) for v in range(int(self.video_of_row.max()) + 1)]
        batches, current = [], []
        for video in torch.randperm(len(rows_of_video), generator=generator).tolist():
            current.append(rows_of_video[video])
            if sum(len(rows) for rows in current) >= batch_size:
                batches.append(torch.as_tensor(np.concatenate(current)))
                current = []
        if current:
            batches.append(torch.as_tensor(np.concatenate(current)))
        return batches


def batches(num_rows: int, batch_size: int, generator: torch.Generator, videos: Videos | None,
            device: torch.device) -> list[tuple[torch.Tensor, VideoLayout | None]]:
    """An epoch of (row index, layout) batches: utterances and no layout without `videos`, else whole videos."""
    if videos is None:
        return [(index.to(device), None) for index in minibatches(num_rows, batch_size, generator)]
    return [(index.to(device), videos.layout(index, device)) for index in videos.minibatches(batch_size, generator)]


def full_layout(videos: Videos | None, device: torch.device) -> VideoLayout | None:
    """The layout of all rows (for inference), or None for utterance-level models."""
    return None if videos is None else videos.layout(device=device)
