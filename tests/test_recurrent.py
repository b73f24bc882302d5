"""models/recurrent.py: the unpacked bidirectional RNN is the packed nn.LSTM/nn.GRU, faster."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hydiscgan_fl.models.recurrent import MaskedBiRNN, reversal_index


def test_reversal_index_flips_the_valid_steps_and_keeps_the_padding() -> None:
    index = reversal_index(torch.tensor([3, 0, 5]), 5)
    assert index.tolist() == [[2, 1, 0, 3, 4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0]]


@pytest.mark.parametrize("cell, layers", [("lstm", 2), ("gru", 1)])
def test_the_same_function_and_initial_weights_as_the_packed_module(cell: str, layers: int) -> None:
    torch.manual_seed(3)
    ours = MaskedBiRNN(cell, 6, 4, layers=layers, dropout=0.2).eval()
    after_ours = torch.rand(1)
    torch.manual_seed(3)
    packed_module = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](6, 4, num_layers=layers, bidirectional=True,
                                                            batch_first=True, dropout=0.2).eval()
    assert torch.equal(after_ours, torch.rand(1))  # built from the same draws, and no more
    lengths = torch.tensor([5, 1, 3, 7])
    steps = torch.randn(4, 7, 6) * (torch.arange(7)[None, :, None] < lengths[:, None, None])
    packed = pack_padded_sequence(steps, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = pad_packed_sequence(packed_module(packed)[0], batch_first=True, total_length=7)
    got = ours(steps, lengths)
    valid = torch.arange(7)[None, :] < lengths[:, None]
    assert torch.allclose(got[valid], expected[valid], atol=1e-6)
    noisy = steps + 50.0 * ~valid.unsqueeze(-1)  # whatever the padding holds
    assert torch.allclose(ours(noisy, lengths)[valid], got[valid], atol=1e-6)
