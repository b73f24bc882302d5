"""Privacy attacks: speaker identification on real MOSI features, membership-inference AUC."""

from pathlib import Path

import numpy as np
import pytest


from hydiscgan_fl.privacy.attacks import (  # noqa: E402
    generator_membership_scores,
    membership_inference_auc,
    speaker_attack,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "mosi-bclstm"
needs_data = pytest.mark.skipif(
    not (DATA / "audio_train0.csv").exists(), reason=f"MOSI bc-LSTM CSVs not found under {DATA}"
)


def _load_train_audio_and_speakers():
    """Audio train features (73-d) and speaker ids, read directly with pandas."""
    pd = pytest.importorskip("pandas")
    audio = pd.read_csv(DATA / "audio_train0.csv", header=None).to_numpy()
    feats = audio[:, :-1].astype(np.float64)  # last column is the binary label
    index = pd.read_csv(DATA / "text_train.csv", header=None).iloc[:, 0].astype(int).to_numpy()
    transcripts = pd.read_csv(DATA / "transcripts.csv", header=None)
    ids = transcripts.iloc[index, 0].astype(str).to_numpy()
    speakers = np.array([i.rsplit("_", 1)[0] for i in ids])
    assert feats.shape == (1447, 73) and speakers.shape == (1447,)
    return feats, speakers


@pytest.fixture(scope="module")
def mosi_audio():
    return _load_train_audio_and_speakers()


@needs_data
def test_speaker_attack_real_audio_far_above_chance(mosi_audio):
    feats, speakers = mosi_audio
    r = speaker_attack(feats, speakers, seed=0)
    assert set(r) == {
        "speaker_attack_acc",
        "speaker_attack_chance",
        "num_speakers",
        "num_train",
        "num_test",
    }
    assert r["num_speakers"] == 62
    assert r["num_train"] + r["num_test"] == 1447
    assert r["speaker_attack_acc"] > 0.6
    assert r["speaker_attack_acc"] > 5 * r["speaker_attack_chance"]


@needs_data
def test_speaker_attack_random_features_near_chance(mosi_audio):
    feats, speakers = mosi_audio
    noise = np.random.default_rng(1).standard_normal(feats.shape)
    r = speaker_attack(noise, speakers, seed=0)
    assert r["speaker_attack_acc"] < 3 * r["speaker_attack_chance"] + 0.05


def test_speaker_attack_split_and_determinism():
    rng = np.random.default_rng(0)
    # 3 speakers with 10 utterances, one with a single utterance (dropped)
    speakers = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 10 + ["d"])
    centers = {"a": 0.0, "b": 5.0, "c": -5.0, "d": 0.0}
    feats = np.stack([rng.standard_normal(4) + centers[s] for s in speakers])
    r1 = speaker_attack(feats, speakers, seed=3, epochs=50)
    r2 = speaker_attack(feats, speakers, seed=3, epochs=50)
    assert r1 == r2
    assert r1["num_speakers"] == 3
    # 30% of 10 = 3 held out per speaker
    assert (r1["num_train"], r1["num_test"]) == (21, 9)
    assert r1["speaker_attack_chance"] == pytest.approx(1 / 3)
    assert r1["speaker_attack_acc"] == 1.0


def test_speaker_attack_rejects_bad_input():
    with pytest.raises(ValueError):
        speaker_attack(np.zeros((4, 2)), np.array([0, 0, 1]))
    with pytest.raises(ValueError):
        speaker_attack(np.zeros((4, 2)), np.array([0, 1, 2, 3]))  # nobody has 2 utterances
    with pytest.raises(ValueError):
        speaker_attack(np.full((4, 2), np.nan), np.array([0, 0, 1, 1]))


def test_mia_auc_identical_distributions_is_half():
    rng = np.random.default_rng(0)
    auc = membership_inference_auc(rng.standard_normal(4000), rng.standard_normal(4000))
    assert abs(auc - 0.5) < 0.03
    # exactly the same multiset of scores -> exactly 0.5
    s = rng.standard_normal(100)
    assert membership_inference_auc(s, s.copy()) == pytest.approx(0.5)


def test_mia_auc_separated_is_one():
    assert membership_inference_auc([5.0, 6.0, 7.0], [1.0, 2.0]) == 1.0
    assert membership_inference_auc([1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0


def test_mia_auc_hand_computed_ties():
    # members [1, 2, 3], non-members [2, 2, 0]; 9 pairs (m, n):
    #   m=1: vs 2 lose, vs 2 lose, vs 0 win  -> 1
    #   m=2: vs 2 tie,  vs 2 tie,  vs 0 win  -> 1 + 0.5 + 0.5 = 2
    #   m=3: wins all three                  -> 3
    #   AUC = (1 + 2 + 3) / 9 = 2/3
    assert membership_inference_auc([1, 2, 3], [2, 2, 0]) == pytest.approx(2 / 3)
    # all tied -> 0.5
    assert membership_inference_auc([1, 1], [1, 1, 1]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        membership_inference_auc([], [1.0])


def test_generator_membership_scores():
    real = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    gen = np.array([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(generator_membership_scores(gen, real), [-5.0, 0.0, -5.0])
    # a generator that memorised its members: members reproduced closely, non-members not
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 8))
    g = a + np.where(np.arange(200)[:, None] < 100, 0.05, 1.0) * rng.standard_normal((200, 8))
    s = generator_membership_scores(g, a)
    assert membership_inference_auc(s[:100], s[100:]) > 0.99
    with pytest.raises(ValueError):
        generator_membership_scores(np.zeros((3, 2)), np.zeros((3, 3)))
