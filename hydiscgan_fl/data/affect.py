"""Continuous affect data: per-participant facial action units, an audio descriptor stream and
rater-averaged valence/arousal traces, cut into windows with one (valence, arousal) target each.

Sources (dataset specs of :func:`load_affect_dataset`):

- ``affect-synthetic`` / ``affect-synthetic:<participants>``: :func:`make_affect_synthetic`, a seeded
  RECOLA-like generator (RECOLA itself is licence-restricted and not bundled);
- ``openface:<absolute dir>``: the user's own recordings, :func:`load_openface_dir`.

Windowing (the seed paper's public code): non-overlapping windows of ``window`` frames; AUs (and audio)
z-scored per participant over that participant's valid frames (the statistics never leave the device
that holds the recording); frames OpenFace did not track (``success=0``) are excluded from the statistics
and set to 0 (the participant's mean) after z-scoring, and the model pools over valid frames only. A
window's target is the mean of the gold traces over its labelled frames; a window with fewer than half of
its frames valid is dropped. Non-overlapping windows keep the identity attack honest: no frame is in
both the attack's training and held-out windows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from .dataset import DataError

# OpenFace 2.x's 17 AU intensity channels (0..5), in its column order.
AU_CHANNELS = ("AU01_r", "AU02_r", "AU04_r", "AU05_r", "AU06_r", "AU07_r", "AU09_r", "AU10_r", "AU12_r",
               "AU14_r", "AU15_r", "AU17_r", "AU20_r", "AU23_r", "AU25_r", "AU26_r", "AU45_r")
OPENFACE_META = ("frame", "timestamp", "confidence", "success")
AFFECT_TARGETS = ("valence", "arousal")
AUDIO_DESCRIPTORS = ("loudness", "f0", "jitter", "shimmer", "hnr", "spectral_slope")
SYNTHETIC_FPS = 5.0  # frames per second of affect-synthetic (RECOLA's video is 25 fps; 5 keeps CPU runs short)
SYNTHETIC_SECONDS = 300  # per participant, as RECOLA's 5-minute sessions
SYNTHETIC_PARTICIPANTS = 18
TEST_FRACTION = 0.2  # of the participants; validation participants: valid-fraction (both at least 1)
MIN_VALID_SHARE = 0.5  # a window needs at least this share of tracked frames


@dataclass(frozen=True)
class Recording:
    """One participant's frame-level streams."""

    participant: str
    au: np.ndarray  # (F, 17) raw AU intensities, 0 where not tracked
    tracked: np.ndarray  # (F,) bool: OpenFace success
    labels: np.ndarray  # (F, 2) gold valence/arousal, NaN where unlabelled
    audio: np.ndarray  # (F, A) audio descriptors; A = 0 when there is no audio stream
    fps: float


@dataclass(frozen=True)
class AffectWindows:
    """Windows of every participant: z-scored inputs (what the model reads), the raw ones (for the identity
    attack), a validity mask per frame, one target per window, the participant and split of each window."""

    au: np.ndarray  # (N, T, 17) float32, per-participant z-scored, 0 on untracked frames
    raw_au: np.ndarray  # (N, T, 17)
    audio: np.ndarray  # (N, T, A) per-participant z-scored
    raw_audio: np.ndarray  # (N, T, A)
    valid: np.ndarray  # (N, T) bool
    targets: np.ndarray  # (N, 2) float32 in [-1, 1]
    participants: np.ndarray  # (N,) str
    split: np.ndarray  # (N,) "train" / "valid" / "test"
    fps: float
    source: str = field(default="")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def input_dim(self) -> int:
        return self.au.shape[2]

    def subset(self, rows: np.ndarray) -> AffectWindows:
        return AffectWindows(self.au[rows], self.raw_au[rows], self.audio[rows], self.raw_audio[rows], self.valid[rows],
                             self.targets[rows], self.participants[rows], self.split[rows], self.fps, self.source)

    def split_subset(self, name: str) -> AffectWindows:
        return self.subset(np.flatnonzero(self.split == name))

    def participant_list(self) -> list[str]:
        return sorted(set(self.participants.tolist()))


# -- the synthetic generator -------------------------------------------------------------------------
def _smooth(rng: np.random.Generator, frames: int, tau_frames: float, dims: int = 1) -> np.ndarray:
    """A stationary AR(1) process of unit variance and time constant tau_frames (burn-in dropped)."""
    a = float(np.exp(-1.0 / tau_frames))
    burn = int(5 * tau_frames)
    noise = rng.standard_normal((frames + burn, dims))
    return lfilter([np.sqrt(1.0 - a * a)], [1.0, -a], noise, axis=0)[burn:]


# How the true affect drives each AU (valence, arousal): smiles (AU06, AU12) with positive valence, brow
# lowering and lip-corner depression (AU04, AU15) with negative valence, brow raising, lid raising and mouth
# opening (AU01, AU02, AU05, AU25, AU26) with arousal; the rest weakly.
_AU_LOADINGS = np.array([
    [0.0, 0.6], [0.0, 0.5], [-0.9, 0.2], [0.0, 0.7], [1.0, 0.2], [-0.2, 0.1], [-0.3, 0.0], [0.1, 0.1], [1.3, 0.3],
    [0.2, 0.0], [-0.7, -0.1], [-0.2, 0.0], [0.0, 0.2], [-0.2, 0.1], [0.3, 0.8], [0.1, 0.6], [0.0, 0.0]])
# Audio: arousal raises loudness, pitch and spectral slope and lowers jitter; valence weakly.
_AUDIO_LOADINGS = np.array([[0.1, 1.0], [0.3, 0.8], [-0.1, -0.4], [-0.1, -0.3], [0.3, 0.2], [0.0, 0.6]])


def make_affect_synthetic(seed: int = 0, participants: int = SYNTHETIC_PARTICIPANTS,
                          seconds: int = SYNTHETIC_SECONDS, fps: float = SYNTHETIC_FPS) -> list[Recording]:
    """RECOLA-like recordings: per participant a true valence/arousal trajectory (smooth AR(1) around a
    participant's mood, tanh-squashed), six raters who follow it with their own reaction lag (0.5-2.5 s),
    bias and noise, averaged into the gold trace; AU intensities driven by the true trajectory through
    fixed loadings, on top of a per-participant baseline and expressivity (the identity signature),
    rectified and clipped to OpenFace's 0..5 (hence sparse); blinks (AU45) as short bursts, more frequent
    with arousal; face-tracking losses in bursts (about 3% of frames, success=0, AUs 0); audio
    descriptors driven by arousal (and weakly valence) around a per-participant voice signature."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * fps)
    baseline_mean = rng.uniform(0.2, 1.2, len(AU_CHANNELS))
    recordings = []
    for p in range(participants):
        mood = rng.normal(0.0, 0.4, 2)
        true = np.tanh(mood + 0.8 * np.concatenate([_smooth(rng, frames, 15 * fps), _smooth(rng, frames, 10 * fps)],
                                                    axis=1))
        ratings = []
        for _ in range(6):
            lag = int(rng.uniform(0.5, 2.5) * fps)
            lagged = np.concatenate([np.repeat(true[:1], lag, axis=0), true[:frames - lag]])
            ratings.append(lagged + rng.normal(0.0, 0.1, 2) + 0.15 * _smooth(rng, frames, 3 * fps, 2))
        labels = np.clip(np.mean(ratings, axis=0), -1.0, 1.0)

        baseline = baseline_mean + rng.normal(0.0, 0.6, len(AU_CHANNELS))
        expressivity = float(np.exp(rng.normal(0.0, 0.3)))
        drive = true @ _AU_LOADINGS.T * expressivity
        au = baseline + drive + 0.35 * _smooth(rng, frames, 1.0 * fps, len(AU_CHANNELS)) - 0.6
        blink_rate = (0.25 + 0.15 * true[:, 1]) / fps  # per frame
        onsets = np.flatnonzero(rng.random(frames) < blink_rate)
        au[:, -1] = -1.0
        for start in onsets:
            au[start:start + rng.integers(2, 4), -1] = rng.uniform(1.0, 3.0)
        au = np.clip(au, 0.0, 5.0)

        tracked = np.empty(frames, dtype=bool)
        state = True
        draws = rng.random(frames)
        for t in range(frames):  # two-state Markov chain: lose the face rarely, recover quickly
            state = draws[t] >= 0.005 if state else draws[t] < 0.15
            tracked[t] = state
        au[~tracked] = 0.0

        voice = rng.normal(0.0, 1.0, len(AUDIO_DESCRIPTORS))
        audio = voice + true @ _AUDIO_LOADINGS.T + 0.5 * _smooth(rng, frames, 0.5 * fps, len(AUDIO_DESCRIPTORS))
        recordings.append(Recording(f"P{p:02d}", au.astype(np.float32), tracked, labels.astype(np.float32),
                                    audio.astype(np.float32), fps))
    return recordings


# -- OpenFace CSVs -----------------------------------------------------------------------------------
def load_openface_dir(root: Path | str) -> list[Recording]:
    """Recordings from `root/au/<participant>.csv` (OpenFace's output: frame, timestamp, confidence,
    success, AU01_r .. AU45_r; header spaces are ignored) and `root/labels/<participant>.csv` (time in
    seconds, valence, arousal at any rate), joined by time: each frame gets the labels linearly
    interpolated at its timestamp, NaN outside the labelled span. Frames with success=0 are not tracked.
    An optional `root/audio/<participant>.csv` (time, then descriptor columns) is joined the same way.
    Bad input raises DataError naming the file and column."""
    root = Path(root)
    au_dir, label_dir, audio_dir = root / "au", root / "labels", root / "audio"
    if not au_dir.is_dir():
        raise DataError(f"{root}: no au/ folder of OpenFace CSVs (au/<participant>.csv)")
    files = sorted(au_dir.glob("*.csv"))
    if not files:
        raise DataError(f"{au_dir}: no <participant>.csv file")
    recordings = []
    for path in files:
        frames = _read_csv(path, (*OPENFACE_META, *AU_CHANNELS))
        times = frames["timestamp"].to_numpy(np.float64)
        if len(times) < 2 or np.any(np.diff(times) <= 0):
            raise DataError(f"{path}: column 'timestamp' must increase strictly (at least 2 frames)")
        label_path = label_dir / path.name
        if not label_path.is_file():
            raise DataError(f"{path}: no label file {label_path} (columns time, valence, arousal)")
        labels = _join_by_time(_read_csv(label_path, ("time", *AFFECT_TARGETS)), AFFECT_TARGETS, times, label_path)
        if np.nanmax(np.abs(labels)) > 1.0:
            raise DataError(f"{label_path}: valence/arousal must lie in [-1, 1]")
        tracked = frames["success"].to_numpy() == 1
        au = frames[list(AU_CHANNELS)].to_numpy(np.float32)
        au[~tracked] = 0.0
        audio = np.zeros((len(times), 0), np.float32)
        if (audio_path := audio_dir / path.name).is_file():
            table = _read_csv(audio_path, ("time",))
            columns = [c for c in table.columns if c != "time"]
            audio = np.nan_to_num(_join_by_time(table, columns, times, audio_path)).astype(np.float32)
        recordings.append(Recording(path.stem, au, tracked, labels.astype(np.float32), audio,
                                    float(1.0 / np.median(np.diff(times)))))
    if len({r.audio.shape[1] for r in recordings}) > 1:
        raise DataError(f"{audio_dir}: every participant needs the same audio columns (or none has audio)")
    return recordings


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read as CSV ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    for column in table.columns:
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any() and not table[column].isna().all():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(f"{path}: column {column!r} row {row + 1} is not a number ({table[column].iloc[row]!r})")
        table[column] = values
    return table


def _join_by_time(table: pd.DataFrame, columns, times: np.ndarray, path: Path) -> np.ndarray:
    source = table["time"].to_numpy(np.float64)
    if len(source) < 2 or np.any(np.diff(source) <= 0):
        raise DataError(f"{path}: column 'time' must increase strictly (at least 2 rows)")
    out = np.stack([np.interp(times, source, table[c].to_numpy(np.float64)) for c in columns], axis=1)
    out[(times < source[0]) | (times > source[-1])] = np.nan
    return out


# -- windows -----------------------------------------------------------------------------------------
def _zscore(values: np.ndarray, tracked: np.ndarray) -> np.ndarray:
    if values.shape[1] == 0:
        return values
    mean, std = values[tracked].mean(axis=0), values[tracked].std(axis=0)
    out = (values - mean) / np.where(std > 1e-6, std, 1.0)
    out[~tracked] = 0.0
    return out.astype(np.float32)


def participant_splits(participants: list[str], seed: int, valid_fraction: float) -> dict[str, str]:
    """Whole participants to train / valid / test (seeded): TEST_FRACTION and valid_fraction of them, at
    least one each, at least one left to train."""
    n = len(participants)
    n_test, n_valid = max(1, round(TEST_FRACTION * n)), max(1, round(valid_fraction * n))
    if n - n_test - n_valid < 1:
        raise DataError(f"{n} participant(s) cannot make {n_test} test, {n_valid} validation and >= 1 training")
    order = np.random.default_rng(seed).permutation(sorted(participants))
    return {str(p): "test" if i < n_test else "valid" if i < n_test + n_valid else "train" for i, p in enumerate(order)}


def make_windows(recordings: list[Recording], window: int, splits: dict[str, str], source: str = "") -> AffectWindows:
    """Non-overlapping windows of `window` frames per participant (see the module docstring)."""
    parts: dict[str, list] = {k: [] for k in ("au", "raw_au", "audio", "raw_audio", "valid", "targets", "who")}
    for rec in recordings:
        labelled = ~np.isnan(rec.labels).any(axis=1)
        if rec.tracked.sum() < 2:
            raise DataError(f"participant {rec.participant}: fewer than 2 tracked frames (success=1)")
        au, audio = _zscore(rec.au, rec.tracked), _zscore(rec.audio, np.ones(len(rec.audio), bool))
        for start in range(0, len(rec.au) - window + 1, window):
            span = slice(start, start + window)
            valid = rec.tracked[span] & labelled[span]
            if valid.mean() < MIN_VALID_SHARE:
                continue
            for key, value in (("au", au[span]), ("raw_au", rec.au[span]), ("audio", audio[span]),
                               ("raw_audio", rec.audio[span]), ("valid", valid),
                               ("targets", rec.labels[span][labelled[span]].mean(axis=0)), ("who", rec.participant)):
                parts[key].append(value)
    if not parts["targets"]:
        raise DataError(f"{source or 'affect data'}: no window of {window} frames with >= {MIN_VALID_SHARE:.0%} "
                        "tracked, labelled frames")
    who = np.array(parts["who"])
    return AffectWindows(*(np.stack(parts[k]).astype(np.float32) for k in ("au", "raw_au", "audio", "raw_audio")),
                         np.stack(parts["valid"]), np.stack(parts["targets"]).astype(np.float32), who,
                         np.array([splits.get(p, "train") for p in who]), float(recordings[0].fps), source)


def affect_recordings(spec: str, seed: int) -> list[Recording]:
    """The recordings of an affect dataset spec (see the module docstring)."""
    if spec == "affect-synthetic" or spec.startswith("affect-synthetic:"):
        participants = int(spec.split(":", 1)[1]) if ":" in spec else SYNTHETIC_PARTICIPANTS
        return make_affect_synthetic(seed, participants)
    if spec.startswith("openface:"):
        return load_openface_dir(spec.removeprefix("openface:"))
    raise DataError(f"unknown affect dataset {spec!r}; use 'affect-synthetic', 'affect-synthetic:<participants>' "
                    "or 'openface:<absolute dir>'")


@functools.lru_cache(maxsize=4)
def load_affect_dataset(spec: str, seed: int, valid_fraction: float, window: int) -> AffectWindows:
    """Windows of a dataset spec, whole participants split into train / valid / test (seeded)."""
    recordings = affect_recordings(spec, seed)
    splits = participant_splits([r.participant for r in recordings], seed, valid_fraction)
    return make_windows(recordings, window, splits, spec)
