"""The ``lmr-cbt`` family, built from the description of LMR-CBT (Fu et al., arXiv 2112.01697).

1. Local temporal extraction per modality: a 1-D convolution (kernel 3) over audio and over visual steps,
   a 2-layer bidirectional LSTM over text steps (padding is never read: models/recurrent.py).
2. Cross-modal blocks: the text stream attends to the visual steps, then to the audio steps (multi-head
   attention, queries text, keys/values the other modality, padding masked), each with a residual back to
   the text stream.
3. A transformer encoder (global self-attention, sinusoidal positions) over the fused text stream.
4. A head on the fused text summary spliced with the original audio and visual summaries.

Inputs are laid out by :func:`hydiscgan_fl.models.steps.lay_out`: per utterance on sequence data (G's fake
audio/visual vectors are sequences of one step), per video on utterance-vector data (bundled MOSI: the
utterances of a video are the steps). The text-only member is steps 1, 3 and 4 on text alone.
Differences from the paper are listed in the README ("The seed papers' fusion models").
"""

from __future__ import annotations

import torch
from torch import nn

from hydiscgan_fl.models.recurrent import MaskedBiRNN
from hydiscgan_fl.models.steps import Input, Laid, Sequence, lay_out, sinusoidal_positions
from hydiscgan_fl.models.video_layout import VideoLayout

DEPTH = 4  # layers of the global transformer
HEADS = 4


def _encoder(width: int, depth: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, HEADS, 2 * width, dropout, batch_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class TextStream(nn.Module):
    """Local extraction of text: a 2-layer BiLSTM (width/2 per direction), then LayerNorm."""

    def __init__(self, in_dim: int, width: int, dropout: float):
        super().__init__()
        self.lstm = MaskedBiRNN("lstm", in_dim, width // 2, layers=2, dropout=dropout)
        self.norm = nn.LayerNorm(2 * (width // 2))

    def forward(self, text: Sequence) -> torch.Tensor:
        return self.norm(self.lstm(text.steps, text.mask.sum(dim=1))) * text.mask.unsqueeze(-1)


class LocalConv(nn.Module):
    """Local extraction of audio or visual: Conv1d (kernel 3, same length, no bias), then LayerNorm per step
    (not BatchNorm: its statistics would mix padding and other samples into every output)."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, width, kernel_size=3, padding=1, bias=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, sequence: Sequence) -> torch.Tensor:
        out = self.conv(sequence.steps.transpose(1, 2)).transpose(1, 2)  # padding is zero, as is conv's own
        return self.norm(out) * sequence.mask.unsqueeze(-1)


class CrossModalBlock(nn.Module):
    """Text attends to another modality's steps; the result is added back to the text stream (residual)."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(width, HEADS, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, other: torch.Tensor,
                other_mask: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(text, other, other, key_padding_mask=~other_mask, need_weights=False)
        return self.norm(text + self.dropout(attended)) * text_mask.unsqueeze(-1)


class FusedTextEncoder(nn.Module):
    """Global self-attention over the (fused) text stream, with sinusoidal positions."""

    def __init__(self, width: int, depth: int, dropout: float):
        super().__init__()
        self.encoder = _encoder(width, depth, dropout)
        self.norm = nn.LayerNorm(width)

    def forward(self, stream: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        stream = stream + sinusoidal_positions(stream.shape[1], stream.shape[2], stream.device)
        return self.norm(self.encoder(stream, src_key_padding_mask=~mask)) * mask.unsqueeze(-1)


def _head(in_dim: int, width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, 1))


class LMRCBT(nn.Module):
    """M(t, a, v, layout) of the lmr-cbt family; `cross_modal=False` is the ablation without the
    cross-modal blocks (audio and visual then reach the head through their summaries only)."""

    def __init__(self, dims: dict[str, int], width: int, dropout: float, depth: int = DEPTH,
                 cross_modal: bool = True):
        super().__init__()
        self.text = TextStream(dims["text"], width, dropout)
        self.audio = LocalConv(dims["audio"], width)
        self.visual = LocalConv(dims["visual"], width)
        self.cross = nn.ModuleList([CrossModalBlock(width, dropout) for _ in ("visual", "audio")]) \
            if cross_modal else None
        self.fused = FusedTextEncoder(width, depth, dropout)
        self.head = _head(3 * width, width, dropout)

    def forward(self, text: Input, audio: Input, visual: Input, layout: VideoLayout | None = None) -> torch.Tensor:
        laid: Laid = lay_out({"text": text, "audio": audio, "visual": visual}, layout)
        seqs = laid.sequences
        stream, mask = self.text(seqs["text"]), seqs["text"].mask
        locals_ = {name: module(seqs[name]) for name, module in (("audio", self.audio), ("visual", self.visual))}
        if self.cross is not None:
            for block, name in zip(self.cross, ("visual", "audio")):  # text <- visual, then text <- audio
                stream = block(stream, mask, locals_[name], seqs[name].mask)
        fused = self.fused(stream, mask)
        spliced = torch.cat([laid.summary(fused, mask), laid.summary(locals_["audio"], seqs["audio"].mask),
                             laid.summary(locals_["visual"], seqs["visual"].mask)], dim=1)
        return self.head(spliced).squeeze(1)


class LMRCBTTextOnly(nn.Module):
    """The text-only member of the lmr-cbt family: BiLSTM, global transformer, head on the text summary."""

    def __init__(self, text_dim: int, width: int, dropout: float, depth: int = DEPTH):
        super().__init__()
        self.text = TextStream(text_dim, width, dropout)
        self.fused = FusedTextEncoder(width, depth, dropout)
        self.head = _head(width, width, dropout)

    def forward(self, text: Input, layout: VideoLayout | None = None) -> torch.Tensor:
        laid = lay_out({"text": text}, layout)
        mask = laid.sequences["text"].mask
        return self.head(laid.summary(self.fused(self.text(laid.sequences["text"]), mask), mask)).squeeze(1)
