"""Seeded synthetic multimodal sentiment data with a speaker-identity leak in audio and visual.

Used for fast tests and for checking that the pipeline behaves as the real data would: text is
informative but incomplete, audio/visual add sentiment information that text lacks, and audio/visual
(not text) identify the speaker.
"""

from __future__ import annotations

import numpy as np

from .dataset import DataError, MultimodalDataset

__all__ = ["make_synthetic"]

# Generative-model constants (see make_synthetic's docstring).
_LABEL_SCALE = 1.5
_LABEL_TEXT_WEIGHT = 0.8
_LABEL_PARA_WEIGHT = 0.6
_LABEL_NOISE = 0.3
_TEXT_NOISE = 2.0
_AUDIO_SENTIMENT_SCALE = 0.3
_VISUAL_SENTIMENT_SCALE = 0.25
_AV_NOISE = 1.0
_AV_TEXT_LEAK = 0.1
_AUDIO_SPEAKER_SCALE = 2.0
_VISUAL_SPEAKER_SCALE = 1.5


def direction(rng: np.random.Generator, dim: int, active: int) -> np.ndarray:
    """Random vector, zero after ``active`` entries, rescaled to squared norm ``active``."""
    w = np.zeros(dim)
    w[:active] = rng.standard_normal(active)
    return w * np.sqrt(active / np.sum(w**2))


def speaker_test_split(rng: np.random.Generator, speaker_index: np.ndarray, num_speakers: int,
                       test_fraction: float) -> np.ndarray:
    """"test" for ``round(test_fraction * num_speakers)`` speakers (at least 1, at most all but one) drawn with
    ``rng``, "train" for the others: a speaker-independent split, per row."""
    num_test = int(min(max(round(test_fraction * num_speakers), 1), num_speakers - 1))
    test_speakers = rng.permutation(num_speakers)[:num_test]
    return np.where(np.isin(speaker_index, test_speakers), "test", "train")


def make_synthetic(
    seed: int = 0,
    num_speakers: int = 80,
    utterances_per_speaker: int = 24,
    text_dim: int = 32,
    audio_dim: int = 24,
    visual_dim: int = 24,
    test_fraction: float = 0.25,
) -> MultimodalDataset:
    """Build a deterministic synthetic dataset (name "synthetic", label_kind "regression").

    Generative model, with ``rng = np.random.default_rng(seed)`` and every draw below i.i.d. normal
    N(0, 1) unless said otherwise. For each utterance i of speaker s:

    - two latent sentiment components ``z_t[i]`` (verbal) and ``z_p[i]`` (paralinguistic);
    - label ``y[i] = clip(1.5 * (0.8 * z_t[i] + 0.6 * z_p[i]) + 0.3 * e[i], -3, 3)`` (continuous, in
      [-3, 3]; z_t carries 64% of the latent sentiment variance, z_p 36%);
    - text ``x_t[i] = z_t[i] * w_t + 2.0 * n_t[i]`` where ``w_t`` is a fixed random direction, non-zero on
      the first half of the text dimensions only and scaled to squared norm text_dim // 2 (the
      other projections w_*, u_* are random with squared norm equal to their dimension): text is a noisy
      view of z_t, sees nothing of z_p, and carries no speaker information;
    - audio ``x_a[i] = 0.3 * z_p[i] * w_a + 0.1 * z_t[i] * u_a + 2.0 * m_a[s] + 1.0 * n_a[i]`` where
      ``m_a[s]`` is a per-speaker offset vector (the speaker's voice signature);
    - visual ``x_v[i] = 0.25 * z_p[i] * w_v + 0.1 * z_t[i] * u_v + 1.5 * m_v[s] + 1.0 * n_v[i]``.

    So text is the strongest single modality (linear R^2 about 0.5), audio/visual are weaker alone
    but carry z_p, which text lacks, so all three together beat text; the per-speaker offsets
    (scale 2.0 and 1.5 against unit noise) let a classifier identify the speaker from audio or
    visual far above chance, while from text it is at chance. The split is speaker
    independent: ``round(test_fraction * num_speakers)`` speakers (at least 1, at most
    ``num_speakers - 1``), chosen at random with the seed, are "test"; the others are "train".
    Utterance ids are ``spk<NNN>_<k>`` and speakers ``spk<NNN>``.
    """
    if num_speakers < 2:
        raise DataError(f"synthetic: num_speakers must be at least 2, got {num_speakers}")
    if utterances_per_speaker < 1:
        raise DataError(f"synthetic: utterances_per_speaker must be at least 1, got {utterances_per_speaker}")
    for name, dim in (("text_dim", text_dim), ("audio_dim", audio_dim), ("visual_dim", visual_dim)):
        if dim < 2:
            raise DataError(f"synthetic: {name} must be at least 2, got {dim}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"synthetic: test_fraction must be in (0, 1), got {test_fraction}")

    rng = np.random.default_rng(seed)
    n = num_speakers * utterances_per_speaker
    speaker_index = np.repeat(np.arange(num_speakers), utterances_per_speaker)

    # Fixed projections.
    w_t = direction(rng, text_dim, text_dim // 2)
    w_a, u_a = direction(rng, audio_dim, audio_dim), direction(rng, audio_dim, audio_dim)
    w_v, u_v = direction(rng, visual_dim, visual_dim), direction(rng, visual_dim, visual_dim)
    # Speaker signatures.
    m_a = rng.standard_normal((num_speakers, audio_dim))
    m_v = rng.standard_normal((num_speakers, visual_dim))

    z_t = rng.standard_normal(n)
    z_p = rng.standard_normal(n)
    latent = _LABEL_TEXT_WEIGHT * z_t + _LABEL_PARA_WEIGHT * z_p
    labels = np.clip(_LABEL_SCALE * latent + _LABEL_NOISE * rng.standard_normal(n), -3.0, 3.0)

    text = np.outer(z_t, w_t) + _TEXT_NOISE * rng.standard_normal((n, text_dim))
    audio = (
        _AUDIO_SENTIMENT_SCALE * np.outer(z_p, w_a)
        + _AV_TEXT_LEAK * np.outer(z_t, u_a)
        + _AUDIO_SPEAKER_SCALE * m_a[speaker_index]
        + _AV_NOISE * rng.standard_normal((n, audio_dim))
    )
    visual = (
        _VISUAL_SENTIMENT_SCALE * np.outer(z_p, w_v)
        + _AV_TEXT_LEAK * np.outer(z_t, u_v)
        + _VISUAL_SPEAKER_SCALE * m_v[speaker_index]
        + _AV_NOISE * rng.standard_normal((n, visual_dim))
    )

    split = speaker_test_split(rng, speaker_index, num_speakers, test_fraction)

    speaker_names = np.array([f"spk{s:03d}" for s in range(num_speakers)])
    clip = np.tile(np.arange(1, utterances_per_speaker + 1), num_speakers)
    ids = np.array([f"{speaker_names[s]}_{k}" for s, k in zip(speaker_index.tolist(), clip.tolist())])

    return MultimodalDataset(
        name="synthetic",
        ids=ids,
        speakers=speaker_names[speaker_index],
        text=text,
        audio=audio,
        visual=visual,
        labels=labels,
        split=split,
        label_kind="regression",
        videos=speaker_names[speaker_index],  # a speaker's utterances, in order, form its video
        positions=clip,
        source=(
            f"make_synthetic(seed={seed}, num_speakers={num_speakers}, utterances_per_speaker={utterances_per_speaker}, "
            f"text_dim={text_dim}, audio_dim={audio_dim}, visual_dim={visual_dim}, test_fraction={test_fraction})"
        ),
    )
