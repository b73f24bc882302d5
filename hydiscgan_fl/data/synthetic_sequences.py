"""Seeded synthetic sequence data: unaligned frame-level modalities, a mood that drifts through each video,
per-speaker voice/face signatures and a planted cross-modal interaction, in one of two forms.

Made for what sequence and context models need to show: context (the mood, shared by neighbouring
utterances, which only a model of the video can separate from the verbal part), the private modalities (a
paralinguistic component that text lacks), and fusion at the step level:

- ``synthetic-seq`` (interaction "cue-product"): a text step feature times an audio step feature; pooled
  vectors keep part of it too (see synthetic_sequences_with_latents);
- ``synthetic-fusion`` (interaction "key-value"): two lookups that pooled vectors cannot make, one of the
  audio steps keyed by text and one of the visual steps keyed by audio (see make_synthetic_fusion);
- ``synthetic-shared``: ``synthetic-seq`` plus a factor that all three modalities express and the label
  weighs most, the modality-homogeneous semantics that missing-modality recovery (FSRF) is built for (see
  make_synthetic_shared).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import DataError, MultimodalDataset
from .sequences import valid_steps
from .synthetic import direction, speaker_test_split

__all__ = ["INTERACTIONS", "SequenceLatents", "make_synthetic_fusion", "make_synthetic_sequences",
           "make_synthetic_shared", "synthetic_sequences_with_latents"]

INTERACTIONS = {"cue-product": "synthetic-seq", "key-value": "synthetic-fusion"}  # -> the dataset's name

# Generative-model constants (see synthetic_sequences_with_latents' docstring).
_MOOD_PERSISTENCE = 0.8
_LABEL_WEIGHTS = {"verbal": 0.6, "para": 0.5, "mood": 0.6, "interaction": 0.5}
_LOOKUP_WEIGHT = 0.6  # key-value: each lookup weighs as much as the verbal part
_SHARED_WEIGHT = 1.0  # shared factor: the label's largest part
_SHARED_SCALE = 0.8  # shared factor: its size on every step of each modality
_LABEL_SCALE = 1.2
_LABEL_NOISE = 0.3
_TEXT_MOOD = 0.8
_FRAME_NOISE = 1.0
_AUDIO_SENTIMENT_SCALE = 0.8
_VISUAL_SENTIMENT_SCALE = 0.6
_AUDIO_SPEAKER_SCALE = 2.0
_VISUAL_SPEAKER_SCALE = 1.5
_CUE_SCALE = 3.0
_AUDIO_KEY_SCALE = 1.5  # key-value: the audio key, on every audio frame
_MIN_STEPS = {"text": 4, "audio": 8, "visual": 6}


@dataclass(frozen=True)
class SequenceLatents:
    """The hidden factors of :func:`synthetic_sequences_with_latents`, one entry per utterance (the dataset's
    rows): for checking what a model could recover, never an input to one.

    ``interaction`` is the label's interaction term (before its weight). ``planted`` says where it was put:
    for "cue-product", ``cue_text`` (c_t), ``cue_audio`` (c_a), ``cue_word`` (the text step that carries c_t),
    ``cue_run_start`` and ``cue_run_length`` (the audio frames that carry c_a); for "key-value",
    ``text_key`` and ``audio_key`` (±1), ``cue_word`` (the text step that carries the text key),
    ``audio_values`` and ``visual_values`` (n x 2: the values of the runs keyed +1 and -1), ``audio_runs`` and
    ``visual_runs`` (n x 2 first frames of those runs), ``audio_run_length``, ``visual_run_length``,
    ``text_audio`` and ``audio_visual`` (the two lookups).
    """

    mood: np.ndarray
    verbal: np.ndarray  # z_t
    para: np.ndarray  # z_p
    interaction: np.ndarray
    planted: dict[str, np.ndarray]
    shared: np.ndarray | None = None  # z_s, with shared_factor


def make_synthetic_sequences(seed: int = 0, **options) -> MultimodalDataset:
    """The dataset of :func:`synthetic_sequences_with_latents` (same arguments), without its hidden factors."""
    return synthetic_sequences_with_latents(seed, **options)[0]


def make_synthetic_fusion(seed: int = 0, **options) -> MultimodalDataset:
    """The dataset spec ``synthetic-fusion``: :func:`synthetic_sequences_with_latents` with interaction
    "key-value" (other arguments as given), without its hidden factors."""
    return synthetic_sequences_with_latents(seed, interaction="key-value", **options)[0]


def make_synthetic_shared(seed: int = 0, **options) -> MultimodalDataset:
    """The dataset spec ``synthetic-shared``: :func:`synthetic_sequences_with_latents` with ``shared_factor``
    (other arguments as given), without its hidden factors."""
    return synthetic_sequences_with_latents(seed, shared_factor=True, **options)[0]


def synthetic_sequences_with_latents(
    seed: int = 0,
    num_speakers: int = 60,
    utterances_per_speaker: int = 16,
    dims: tuple[int, int, int] = (16, 12, 12),
    steps: tuple[int, int, int] = (12, 20, 16),
    test_fraction: float = 0.25,
    interaction: str = "cue-product",
    shared_factor: bool = False,
) -> tuple[MultimodalDataset, SequenceLatents]:
    """A deterministic sequence dataset (label_kind "regression") and its hidden factors: name "synthetic-seq"
    with ``interaction="cue-product"``, "synthetic-fusion" with "key-value", "synthetic-shared" with
    "cue-product" and ``shared_factor``.

    Each speaker s has one video of ``utterances_per_speaker`` utterances in order (ids ``spk<NNN>_<k>``).
    With ``rng = np.random.default_rng(seed)``, every draw N(0, 1) unless said otherwise, for utterance k:

    - mood: ``mood[0] ~ N(0, 1)``, ``mood[k] = 0.8 mood[k-1] + 0.6 e[k]``: it drifts across the video
      (stationary variance 1, correlation 0.8 between neighbours);
    - verbal ``z_t[k]``, paralinguistic ``z_p[k]``, and two cue values ``c_t[k]``, ``c_a[k]``;
    - label ``y = clip(1.2 (0.6 z_t + 0.5 z_p + 0.6 mood + w i) + 0.3 e, -3, 3)``, with the interaction
      term ``i = c_t c_a`` and w = 0.5 ("cue-product"), or the sum of two lookups and w = 0.6, each lookup
      weighing as much as the verbal part ("key-value", below);
    - valid lengths, unaligned: text ``L_t ~ U{4..T_t}``, audio ``L_a ~ U{8..T_a}``, visual
      ``L_v ~ U{6..T_v}`` (``steps`` = (T_t, T_a, T_v), padding zeros);
    - text step j < L_t: ``(z_t + 0.8 mood) w_t + n``, and feature 0 of one random valid step (the cue word)
      is ``3 c_t`` + noise instead: one utterance's text confounds z_t with the mood, its neighbours'
      text tells them apart (context);
    - audio step j < L_a: ``0.8 z_p w_a + 2.0 m_a[s] + n``, and feature 0 of a run of L_a // 4 frames at a
      random place is ``3 c_a`` + noise (the cue's prosody);
    - visual step j < L_v: ``0.6 z_p w_v + 1.5 m_v[s] + n``;

    ``w_*`` are fixed random directions (``w_t`` and ``w_a`` zero on feature 0, so the cues stand apart),
    ``m_a[s]``, ``m_v[s]`` the speaker's voice and face signatures, ``n`` unit frame noise. z_p (25% of the
    label's signal variance) is only in audio/visual; c_t c_a only in the product of a text step and an
    audio step. Pooling does not hide it: with the pooled audio centred per speaker (as the models'
    per-speaker standardisation does), the product of the two cue features' masked means still correlates
    0.62-0.68 with c_t c_a, against 0.92-0.93 for the cue word times the cue run's contrast read from the
    steps (seeds 0-2; ``tests/test_sequences.py::test_pooling_keeps_part_of_the_planted_interaction``).

    With "key-value" the cues are keys instead (``k_t = sign(c_t)``, ``k_a = sign(c_a)``), and values sit in
    runs of steps that only the key tells apart (each run L // 4 frames, one in each half of the valid frames,
    which half holds the +1 run drawn at random):

    - text: feature 0 of the cue word is ``3 k_t`` + noise;
    - audio: feature 2 of every valid frame carries the audio key, ``1.5 k_a``; two runs carry values
      ``u+``, ``u-`` ~ N(0, 1): feature 1 is ``+3`` or ``-3`` (the run's key) and feature 0 ``3 u±``;
    - visual: two runs the same way, values ``v+``, ``v-``: feature 1 the key (±3), feature 0 ``3 v±``;
    - ``i = k_t (u+ - u-) / sqrt 2 + k_a (v+ - v-) / sqrt 2``: the audio value that the text's key selects
      (less the other), and the visual value that the audio's key selects. Both terms have mean 0 and
      variance 1. The label's corr with what remains without both lookups is about 0.74, without one of
      them about 0.88.

    A pooled vector holds ``u+ + u-`` (feature 0's mean) but not which value sits with which key, and
    ``u+ - u-`` is independent of ``u+ + u-`` (likewise for v): mean pooling keeps nothing of either
    lookup, while the steps hold them exactly
    (``tests/test_sequences.py::test_pooling_loses_the_key_value_lookups``). The first is what LMR-CBT's
    cross-modal blocks are for (text attends to audio steps), the second what CFN-SR's are for (audio's
    summary attends over the visual steps). Cross-modal attention is not the only way, though: a key takes
    two values, so each lookup is also the key times a summary of the other modality that is nonlinear per
    step (feature 0 signed by feature 1, averaged over the frames), which a model that transforms each step
    nonlinearly before pooling can form (``hydiscgan probe-lookups`` measures who does).

    With ``shared_factor`` one more factor ``z_s`` is drawn per utterance (after every other draw, so the
    rest is the same as without it), added to every step of each modality as ``0.8 z_s u_m`` (``u_m``
    a fixed unit direction per modality, zero on the cue feature 0) and to the label's signal as ``1.0 z_s``,
    its largest part (about 45% of the signal variance). Each modality alone then holds z_s (its pooled
    steps, fitted linearly, correlate above 0.8 with it on the test speakers,
    ``tests/test_sequences.py::test_every_modality_holds_the_shared_factor``), so a missing modality's share
    of it can be recovered from any other; z_p stays in audio/visual only and z_t, the mood and the cue in
    text. The generative model that FSRF's factorisation into modality-homogeneous and -specific parts
    assumes.

    The split is speaker independent, as in :func:`~hydiscgan_fl.data.make_synthetic`.
    """
    if interaction not in INTERACTIONS:
        raise DataError(f"synthetic sequences: interaction must be one of {list(INTERACTIONS)}, got {interaction!r}")
    if shared_factor and interaction != "cue-product":
        raise DataError(f"synthetic sequences: the shared factor is built on interaction 'cue-product', got "
                        f"{interaction!r}")
    dataset_name = "synthetic-shared" if shared_factor else INTERACTIONS[interaction]
    if num_speakers < 2 or utterances_per_speaker < 1:
        raise DataError(f"{dataset_name}: need at least 2 speakers and 1 utterance each, got {num_speakers} and "
                        f"{utterances_per_speaker}")
    names = ("text", "audio", "visual")
    for name, dim, count in zip(names, dims, steps, strict=True):
        if dim < 2 or count < _MIN_STEPS[name]:
            raise DataError(f"{dataset_name}: {name} needs at least 2 features and {_MIN_STEPS[name]} steps, got "
                            f"{dim} and {count}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"{dataset_name}: test_fraction must be in (0, 1), got {test_fraction}")

    rng = np.random.default_rng(seed)
    n = num_speakers * utterances_per_speaker
    speaker_index = np.repeat(np.arange(num_speakers), utterances_per_speaker)
    position = np.tile(np.arange(utterances_per_speaker), num_speakers)
    text_dim, audio_dim, visual_dim = dims

    w_t, w_a, w_v = (direction(rng, dim, dim) for dim in dims)
    w_t[0] = w_a[0] = 0.0  # feature 0 of text and audio carries the cues alone
    m_a = rng.standard_normal((num_speakers, audio_dim))
    m_v = rng.standard_normal((num_speakers, visual_dim))

    mood = np.empty(n)
    innovation = rng.standard_normal(n)
    for row in range(n):
        fresh = position[row] == 0
        mood[row] = innovation[row] if fresh else (_MOOD_PERSISTENCE * mood[row - 1]
                                                   + np.sqrt(1 - _MOOD_PERSISTENCE**2) * innovation[row])
    z_t, z_p, c_t, c_a = rng.standard_normal((4, n))
    label_noise = rng.standard_normal(n)

    lengths = {name: rng.integers(_MIN_STEPS[name], count + 1, n) for name, count in zip(names, steps, strict=True)}
    frames = {name: _FRAME_NOISE * rng.standard_normal((n, count, dim))
              for name, count, dim in zip(names, steps, dims, strict=True)}
    if interaction == "key-value":  # features 0-2 of audio, 0-1 of visual carry keys and values alone
        w_a[:3] = w_v[:2] = 0.0
    frames["text"] += ((z_t + _TEXT_MOOD * mood)[:, None] * w_t[None, :])[:, None, :]
    frames["audio"] += (_AUDIO_SENTIMENT_SCALE * np.outer(z_p, w_a)
                        + _AUDIO_SPEAKER_SCALE * m_a[speaker_index])[:, None]
    frames["visual"] += (_VISUAL_SENTIMENT_SCALE * np.outer(z_p, w_v)
                         + _VISUAL_SPEAKER_SCALE * m_v[speaker_index])[:, None]
    cue_word = (rng.random(n) * lengths["text"]).astype(np.int64)
    if interaction == "cue-product":
        frames["text"][np.arange(n), cue_word, 0] += _CUE_SCALE * c_t
        run = np.maximum(lengths["audio"] // 4, 1)
        run_start = (rng.random(n) * (lengths["audio"] - run + 1)).astype(np.int64)
        frames["audio"][:, :, 0] += _CUE_SCALE * c_a[:, None] * _in_run(run_start, run, steps[1])
        term, weight = c_t * c_a, _LABEL_WEIGHTS["interaction"]
        planted = {"cue_text": c_t, "cue_audio": c_a, "cue_word": cue_word, "cue_run_start": run_start,
                   "cue_run_length": run}
    else:
        text_key, audio_key = np.where(c_t >= 0, 1.0, -1.0), np.where(c_a >= 0, 1.0, -1.0)
        frames["text"][np.arange(n), cue_word, 0] += _CUE_SCALE * text_key
        frames["audio"][:, :, 2] += _AUDIO_KEY_SCALE * audio_key[:, None] * valid_steps(lengths["audio"], steps[1])
        audio_values, audio_runs, audio_run = _plant_keyed_runs(rng, frames["audio"], lengths["audio"])
        visual_values, visual_runs, visual_run = _plant_keyed_runs(rng, frames["visual"], lengths["visual"])
        text_audio = text_key * (audio_values[:, 0] - audio_values[:, 1]) / np.sqrt(2)
        audio_visual = audio_key * (visual_values[:, 0] - visual_values[:, 1]) / np.sqrt(2)
        term, weight = text_audio + audio_visual, _LOOKUP_WEIGHT
        planted = {"text_key": text_key, "audio_key": audio_key, "cue_word": cue_word,
                   "audio_values": audio_values, "visual_values": visual_values, "audio_runs": audio_runs,
                   "visual_runs": visual_runs, "audio_run_length": audio_run, "visual_run_length": visual_run,
                   "text_audio": text_audio, "audio_visual": audio_visual}
    signal = (_LABEL_WEIGHTS["verbal"] * z_t + _LABEL_WEIGHTS["para"] * z_p + _LABEL_WEIGHTS["mood"] * mood
              + weight * term)
    split = speaker_test_split(rng, speaker_index, num_speakers, test_fraction)
    z_s = None
    if shared_factor:  # drawn last: everything else is the same as without it
        z_s = rng.standard_normal(n)
        for name, dim in zip(names, dims, strict=True):
            u = direction(rng, dim, dim)
            u[0] = 0.0  # the cue feature stands apart
            frames[name] += (_SHARED_SCALE * np.outer(z_s, u / np.linalg.norm(u)))[:, None]
        signal = signal + _SHARED_WEIGHT * z_s
    labels = np.clip(_LABEL_SCALE * signal + _LABEL_NOISE * label_noise, -3.0, 3.0)

    speaker_names = np.array([f"spk{s:03d}" for s in range(num_speakers)])
    ids = np.array([f"{speaker_names[s]}_{k + 1}" for s, k in zip(speaker_index.tolist(), position.tolist())])
    dataset = MultimodalDataset(
        name=dataset_name,
        ids=ids,
        speakers=speaker_names[speaker_index],
        text=frames["text"],  # padding is zeroed by the dataset from the lengths
        audio=frames["audio"],
        visual=frames["visual"],
        labels=labels,
        split=split,
        label_kind="regression",
        videos=speaker_names[speaker_index],
        positions=position + 1,
        lengths=lengths,
        source=f"synthetic_sequences_with_latents(seed={seed}, num_speakers={num_speakers}, utterances_per_speaker="
               f"{utterances_per_speaker}, dims={dims}, steps={steps}, test_fraction={test_fraction}, "
               f"interaction={interaction!r}, shared_factor={shared_factor})",
    )
    return dataset, SequenceLatents(mood=mood, verbal=z_t, para=z_p, interaction=term, planted=planted, shared=z_s)


def _plant_keyed_runs(rng: np.random.Generator, frames: np.ndarray, lengths: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adds, in place, two runs of ``lengths // 4`` frames to each sequence, one in each half of its valid
    frames: feature 1 is the run's key (+3 for the first value, -3 for the second), feature 0 three times its
    value. Returns the values (n x 2), the runs' first frames (n x 2) and the run length (n)."""
    n, count = frames.shape[:2]
    values = rng.standard_normal((n, 2))
    run = np.maximum(lengths // 4, 1)
    half = lengths // 2
    offsets = np.stack([(rng.random(n) * (half - run + 1)).astype(np.int64),
                        half + (rng.random(n) * (lengths - half - run + 1)).astype(np.int64)], axis=1)
    plus_first = rng.random(n) < 0.5
    starts = np.where(plus_first[:, None], offsets, offsets[:, ::-1])  # starts[:, 0]: the run keyed +1
    for which, key in ((0, 1.0), (1, -1.0)):
        in_run = _in_run(starts[:, which], run, count)
        frames[:, :, 1] += _CUE_SCALE * key * in_run
        frames[:, :, 0] += _CUE_SCALE * values[:, which, None] * in_run
    return values, starts, run


def _in_run(start: np.ndarray, length: np.ndarray, count: int) -> np.ndarray:
    """(n, count) bool: True on frames start[i] .. start[i] + length[i] - 1 of row i."""
    frame = np.arange(count)[None, :]
    return (frame >= start[:, None]) & (frame < (start + length)[:, None])
