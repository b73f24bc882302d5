"""The ``cfn-sr`` family, built from the description of CFN-SR (Fu et al., arXiv 2111.02172).

CFN-SR fuses audio and video; here it fuses audio and visual, and text joins by concatenation at the head.

1. Representation learning per modality: audio through a 1-D convolution stack and a self-attention
   encoder, visual through a per-step projection, text through a per-step projection.
2. Cross-modal blocks: one modality's summary attends over the other's steps (audio's summary over the
   visual steps, and visual's over the audio steps): additive attention tanh(U s + W x_t), one score per
   step, **softmax over the steps of each sequence** (never over the batch: the public code sums the
   attention over the batch, which makes an output depend on the other samples). The attended steps are
   added to the original steps (the residual keeps the original features).
3. The head reads the fused audio and visual summaries spliced with the original audio, visual and text
   summaries.

Inputs are laid out by :func:`hydiscgan_fl.models.steps.lay_out` (per utterance on sequence data, per video
on utterance-vector data). The text-only member is the text projection and a head (it has no audio/video
to fuse). Differences from the paper are listed in the README.
"""

from __future__ import annotations

import torch
from torch import nn

from hydiscgan_fl.models.steps import Input, Sequence, lay_out, masked_mean
from hydiscgan_fl.models.video_layout import VideoLayout

HEADS = 4


class AudioEncoder(nn.Module):
    """Two Conv1d (kernel 3) + GELU + LayerNorm, then one self-attention encoder layer over the steps."""

    def __init__(self, in_dim: int, width: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv1d(in_dim, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, padding=1)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(width, HEADS, 2 * width, dropout, batch_first=True), 1,
            enable_nested_tensor=False)

    def forward(self, sequence: Sequence) -> torch.Tensor:
        keep = sequence.mask.unsqueeze(-1)
        out = self.norm1(nn.functional.gelu(self.conv1(sequence.steps.transpose(1, 2)).transpose(1, 2))) * keep
        out = self.norm2(nn.functional.gelu(self.conv2(out.transpose(1, 2)).transpose(1, 2))) * keep
        return self.attention(out, src_key_padding_mask=~sequence.mask) * keep


class StepProjection(nn.Module):
    """Linear + LayerNorm + GELU on every step."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width), nn.GELU())

    def forward(self, sequence: Sequence) -> torch.Tensor:
        return self.net(sequence.steps) * sequence.mask.unsqueeze(-1)


class SummaryAttention(nn.Module):
    """A summary vector of one modality attends over the steps of another; with `residual` the attended
    steps are added to the original ones (x_t + a_t x_t), without it they replace them (a_t x_t)."""

    def __init__(self, width: int, residual: bool):
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.score = nn.Linear(width, 1)
        self.residual = residual

    def forward(self, summary: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.query(summary).unsqueeze(1) + self.key(steps))).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)  # over steps, per sequence
        attended = weights.unsqueeze(-1) * steps
        return (steps + attended if self.residual else attended) * mask.unsqueeze(-1)


def _head(in_dim: int, width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(width, 1))


class CFNSR(nn.Module):
    """M(t, a, v, layout) of the cfn-sr family; `residual=False` is the ablation without the residual."""

    def __init__(self, dims: dict[str, int], width: int, dropout: float, residual: bool = True):
        super().__init__()
        self.audio = AudioEncoder(dims["audio"], width, dropout)
        self.visual = StepProjection(dims["visual"], width)
        self.text = StepProjection(dims["text"], width)
        self.audio_over_visual = SummaryAttention(width, residual)
        self.visual_over_audio = SummaryAttention(width, residual)
        self.head = _head(5 * width, width, dropout)

    def forward(self, text: Input, audio: Input, visual: Input, layout: VideoLayout | None = None) -> torch.Tensor:
        laid = lay_out({"text": text, "audio": audio, "visual": visual}, layout)
        seqs = laid.sequences
        a, v, t = self.audio(seqs["audio"]), self.visual(seqs["visual"]), self.text(seqs["text"])
        a_mask, v_mask = seqs["audio"].mask, seqs["visual"].mask
        # Summaries are over the whole sequence (an utterance, or a video in per-video mode).
        fused_v = self.audio_over_visual(masked_mean(a, a_mask), v, v_mask)
        fused_a = self.visual_over_audio(masked_mean(v, v_mask), a, a_mask)
        spliced = torch.cat([laid.summary(fused_a, a_mask), laid.summary(fused_v, v_mask), laid.summary(a, a_mask),
                             laid.summary(v, v_mask), laid.summary(t, seqs["text"].mask)], dim=1)
        return self.head(spliced).squeeze(1)


class CFNSRTextOnly(nn.Module):
    """The text-only member of the cfn-sr family: the text projection and a head."""

    def __init__(self, text_dim: int, width: int, dropout: float):
        super().__init__()
        self.text = StepProjection(text_dim, width)
        self.head = _head(width, width, dropout)

    def forward(self, text: Input, layout: VideoLayout | None = None) -> torch.Tensor:
        laid = lay_out({"text": text}, layout)
        seq = laid.sequences["text"]
        return self.head(laid.summary(self.text(seq), seq.mask)).squeeze(1)
