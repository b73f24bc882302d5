"""Simulated missing modalities: which audio/visual steps, which modalities of an utterance and which
modalities of a client's data are absent (issue 15).

Three kinds, each a run-config field (hydiscgan_fl.config), all combinable:

1. **within a modality** (``missing-rate`` r): each audio/visual *step* is missing with probability r. For
   sequence data the steps are frames: the missing ones are removed and the valid length shrinks (the step
   mask), and an utterance left with no step lacks that modality. For utterance vectors (bundled MOSI) the
   steps of a stream are a video's utterances: each utterance's audio (visual) vector is missing with
   probability r.
2. **whole modalities per utterance** (``missing-modality-rate`` p): with probability p an utterance is
   incomplete, its pattern drawn uniformly from the six proper non-empty subsets of {t, a, v}; otherwise it
   is complete.
3. **whole modalities per client** (``missing-client-audio``, ``missing-client-visual``): each client holds
   no audio (no visual) with this probability, independently: so a client holds audio and visual, only
   audio, only visual, or neither (text and labels always). Only clients' training data is affected.

What is missing is *masked*: :meth:`Missingness.presence` gives a per-utterance per-modality presence mask
(N, 3) in the order text, audio, visual, which travels with the tensors (training.data.UtteranceTensors);
the audio/visual values behind a False are zeroed (and sequences get no valid step) for tidiness only, and
models that read missing data must honour the mask (the registry's ``reads_presence``). **Text** is the
shareable modality: a pattern without t masks the text of models that read the real modalities (the
multimodal methods); what is built from text alone
(HyDiscGAN's G and M(t, G(t)), the text-only baselines, the server's text-only evaluation) keeps it, since
the server holds every text.

Draws are seeded by (run seed, utterance id or client key, modality): an utterance is missing the same
things on whichever client, split or process it is read, at train and at test time. Client-level draws
depend on the client's seeding key (its partition id in simulation). These are reproducibility seeds of a
simulation, never a privacy mechanism's randomness.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["MODALITIES", "PATTERNS", "Missingness"]

MODALITIES = ("text", "audio", "visual")  # also the column order of every presence mask
#: The six proper non-empty subsets of {t, a, v} as presence rows (text, audio, visual).
PATTERNS = np.array([row for row in itertools.product((True, False), repeat=3) if any(row) and not all(row)])
# Streams apart from each other and from misalignment's draws (data.misalign seeds with (seed, id, modality)).
_STEPS, _PATTERN, _CLIENT = 0x5715, 0x9A77, 0xC11E


def _rng(*key: int | str) -> np.random.Generator:
    return np.random.default_rng([k if isinstance(k, int) else zlib.crc32(k.encode()) for k in key])


@dataclass(frozen=True)
class Missingness:
    rate: float = 0.0
    modality_rate: float = 0.0
    client_audio: float = 0.0
    client_visual: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"missing-rate must be in [0, 1), got {self.rate}")
        for name, value in (("missing-modality-rate", self.modality_rate), ("missing-client-audio", self.client_audio),
                            ("missing-client-visual", self.client_visual)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    @property
    def active(self) -> bool:
        return bool(self.rate or self.modality_rate or self.client_audio or self.client_visual)

    def client_holds(self, client_key: int) -> tuple[bool, bool]:
        """(holds audio, holds visual) of the client with this seeding key."""
        rng = _rng(self.seed, _CLIENT, int(client_key))
        return bool(rng.random() >= self.client_audio), bool(rng.random() >= self.client_visual)

    def patterns(self, ids: np.ndarray) -> np.ndarray:
        """(N, 3) bool: each utterance's modality pattern (all True when it is complete)."""
        out = np.ones((len(ids), 3), dtype=bool)
        if not self.modality_rate:
            return out
        for row, utterance in enumerate(np.asarray(ids).tolist()):
            rng = _rng(self.seed, _PATTERN, str(utterance))
            if rng.random() < self.modality_rate:
                out[row] = PATTERNS[rng.integers(len(PATTERNS))]
        return out

    def kept_utterances(self, ids: np.ndarray, modality: str) -> np.ndarray:
        """(N,) bool for utterance vectors: whether each utterance's `modality` vector survives the
        within-modality rate (a video's utterances are its steps)."""
        return np.array([_rng(self.seed, _STEPS, str(u), modality).random() >= self.rate
                         for u in np.asarray(ids).tolist()], dtype=bool)

    def drop_steps(self, values: np.ndarray, lengths: np.ndarray, ids: np.ndarray,
                   modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, T, D) sequences with lengths (N,): each valid step missing with probability `rate`; the kept
        steps move to the front and the length shrinks (to 0 when none is kept)."""
        out, new_lengths = np.zeros_like(values), np.array(lengths, copy=True)
        for row, (utterance, length) in enumerate(zip(np.asarray(ids).tolist(), np.asarray(lengths).tolist())):
            keep = _rng(self.seed, _STEPS, str(utterance), modality).random(length) >= self.rate
            out[row, : int(keep.sum())] = values[row, :length][keep]
            new_lengths[row] = int(keep.sum())
        return out, new_lengths

    def presence(self, ids: np.ndarray, lengths: dict[str, np.ndarray | None],
                 client_key: int | None = None) -> np.ndarray:
        """(N, 3) bool presence of text, audio, visual: the utterance patterns, and for audio/visual the
        within-modality draws (`lengths`: each modality's valid lengths after `drop_steps`, None for
        vectors) and, for a client (`client_key`), the modalities it holds."""
        present = self.patterns(ids)
        holds = self.client_holds(client_key) if client_key is not None else (True, True)
        for column, (name, held) in enumerate(zip(MODALITIES[1:], holds), start=1):
            present[:, column] &= held
            if self.rate:
                length = lengths.get(name)
                present[:, column] &= (np.asarray(length) > 0) if length is not None else \
                    self.kept_utterances(ids, name)
        return present
