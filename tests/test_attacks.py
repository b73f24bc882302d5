"""Privacy attacks: speaker identification on real MOSI features, membership-inference AUC, and a curious
server's attacks on one client's update (membership of its utterances, reconstruction of its features)."""

from pathlib import Path

import numpy as np
import pytest
import torch


from hydiscgan_fl.privacy.attacks import (  # noqa: E402
    generator_membership_scores,
    membership_inference_auc,
    speaker_attack,
    update_attacks,
    update_membership_aucs,
    update_membership_scores,
    update_reconstruction_gain,
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


# -- a curious server's attacks on one client's update ------------------------------------------------

def _memorising_updates(num_clients=4, per_client=60, text_dim=512, out_dim=6, steps=50):
    """A linear generator G on nearly orthogonal texts (random directions in 512 dimensions), and each
    client's G_k fine-tuned from G on its own (text, features) pairs with features no text predicts
    (noise): G_k demonstrably memorises its own utterances and hardly moves on the others'."""
    gen = torch.Generator().manual_seed(0)
    n = num_clients * per_client
    text = torch.nn.functional.normalize(torch.randn(n, text_dim, generator=gen), dim=1)
    real = torch.randn(n, out_dim, generator=gen)
    owner = np.repeat(np.arange(num_clients), per_client)
    torch.manual_seed(0)
    model = torch.nn.Linear(text_dim, out_dim, bias=False)
    with torch.no_grad():
        global_out = model(text).numpy()
    client_outs = []
    for k in range(num_clients):
        local = torch.nn.Linear(text_dim, out_dim, bias=False)
        local.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(local.parameters(), lr=20.0)
        rows = torch.as_tensor(np.flatnonzero(owner == k))
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.mse_loss(local(text[rows]), real[rows]).backward()
            opt.step()
        with torch.no_grad():
            client_outs.append(local(text).numpy())
    return global_out, client_outs, real.numpy(), [owner == k for k in range(num_clients)]


def test_update_membership_finds_the_utterances_an_update_memorised():
    global_out, client_outs, real, masks = _memorising_updates()
    aucs = update_membership_aucs(global_out, client_outs, masks)
    assert aucs.shape == (4,) and aucs.min() > 0.9
    row = update_attacks(global_out, client_outs, real, masks)
    assert set(row) == {"update_membership_auc_mean", "update_membership_auc_max", "update_reconstruction_gain"}
    assert row["update_membership_auc_mean"] == pytest.approx(aucs.mean())
    assert row["update_membership_auc_max"] == pytest.approx(aucs.max())
    # ... and each G_k moved toward its own client's features, not toward the others'
    assert row["update_reconstruction_gain"] > 0.2
    assert all(update_reconstruction_gain(global_out, out, real, mask) > 0.2 for out, mask in zip(client_outs, masks))


def test_update_membership_zero_or_noise_update_is_chance():
    rng = np.random.default_rng(0)
    n, clients = 4000, 4
    global_out = rng.standard_normal((n, 8))
    masks = [np.arange(n) % clients == k for k in range(clients)]
    # a client that returns what it was sent: every score ties, exactly chance
    assert np.all(update_membership_aucs(global_out, [global_out.copy()] * clients, masks) == 0.5)
    # updates of pure noise, unrelated to who holds what
    noisy = [global_out + 0.1 * rng.standard_normal((n, 8)) for _ in range(clients)]
    assert np.all(np.abs(update_membership_aucs(global_out, noisy, masks) - 0.5) < 0.05)
    # a single client: no reference update to calibrate against, nothing learnt
    assert update_membership_aucs(global_out, noisy[:1], masks[:1])[0] == 0.5


def test_update_membership_scores_are_calibrated_across_clients():
    # utterance 0 moves a lot under every update (a steep spot of G), utterance 1 only under client 0's
    global_out = np.zeros((3, 2))
    client_outs = [np.array([[4.0, 0.0], [2.0, 0.0], [0.0, 0.0]]), np.array([[4.0, 0.0], [0.0, 0.0], [0.0, 0.0]])]
    scores = update_membership_scores(global_out, client_outs)
    np.testing.assert_allclose(scores[0], [1.0, 2.0, 0.0])
    np.testing.assert_allclose(scores[1], [1.0, 0.0, 0.0])


def test_update_reconstruction_gain():
    rng = np.random.default_rng(1)
    n = 3000
    real = rng.standard_normal((n, 5))
    global_out = rng.standard_normal((n, 5))
    own = np.arange(n) < 1000
    assert update_reconstruction_gain(global_out, global_out.copy(), real, own) == 0.0
    toward_own = np.where(own[:, None], 0.5 * (global_out + real), global_out)
    assert update_reconstruction_gain(global_out, toward_own, real, own) > 0.5
    # the same step toward everyone's features teaches the task, not the client: no gain
    toward_all = 0.5 * (global_out + real)
    assert abs(update_reconstruction_gain(global_out, toward_all, real, own)) < 0.1
    # hand-computed: own improves 4 -> 0, others unchanged: gain 4
    assert update_reconstruction_gain(np.array([[2.0], [1.0]]), np.array([[0.0], [1.0]]), np.zeros((2, 1)),
                                      np.array([True, False])) == pytest.approx(4.0)


def test_update_attacks_reject_bad_input():
    out = np.zeros((4, 2))
    mask = np.array([True, True, False, False])
    with pytest.raises(ValueError, match="client_outs"):
        update_membership_aucs(out, [], [])
    with pytest.raises(ValueError, match="rows"):
        update_membership_aucs(out, [np.zeros((3, 2))], [mask])
    with pytest.raises(ValueError, match="member_masks"):
        update_membership_aucs(out, [out], [np.ones(4, bool)])  # every utterance the client's: no AUC
    with pytest.raises(ValueError, match="NaN"):
        update_reconstruction_gain(out, out, np.full((4, 2), np.nan), mask)
    with pytest.raises(ValueError, match="shape"):
        update_reconstruction_gain(out, out, np.zeros((4, 3)), mask)


def test_update_attacks_on_a_replayed_round_of_a_federated_run(tmp_path):
    """The replay asks every client of a finished run for one more alignment round through the real
    ClientApp, from the state the client saved, and writes nothing (its saved state stays as it was)."""
    pytest.importorskip("flwr")
    from examples.in_process import run_in_process
    from hydiscgan_fl.orchestration.update_replay import (
        UPDATE_ATTACK_COLUMNS,
        replay_alignment_round,
        update_attack_row,
    )

    run = run_in_process({"dataset": "synthetic", "rounds-align": 1, "rounds-msa": 1, "local-epochs": 1,
                          "output-dir": str(tmp_path)}, num_nodes=3)
    saved = sorted((path, path.stat().st_mtime_ns) for path in (tmp_path / "client-state").rglob("*") if path.is_file())
    replayed = replay_alignment_round(run.run_dir, num_clients=3)
    assert sorted(replayed.replies) == [0, 1, 2]
    generator_keys = {key for key in replayed.sent if key.startswith("generator.")}
    assert generator_keys and set(replayed.sent) == generator_keys  # an alignment round sends G only
    for reply in replayed.replies.values():
        assert set(reply) == generator_keys
        assert not torch.equal(reply["generator.audio_head.weight"], replayed.sent["generator.audio_head.weight"])
    row = update_attack_row(run.run_dir, num_clients=3)
    assert set(row) == set(UPDATE_ATTACK_COLUMNS)
    assert 0.0 <= row["update_membership_auc_mean"] <= row["update_membership_auc_max"] <= 1.0
    assert np.isfinite(row["update_reconstruction_gain"])
    assert sorted((path, path.stat().st_mtime_ns) for path in (tmp_path / "client-state").rglob("*")
                  if path.is_file()) == saved

    for path, _ in saved:  # without the clients' saved state the replay would not be their round: refused
        path.unlink()
    with pytest.raises(FileNotFoundError, match="partition-id=0"):
        replay_alignment_round(run.run_dir, num_clients=3)


@pytest.mark.parametrize("setting, why", [({"method": "fedavg-multimodal"}, "no generator"),
                                          ({"aggregation-generator": "local"}, "never receives an update of G")])
def test_replay_refuses_runs_whose_server_sees_no_update_of_g(tmp_path, setting, why):
    pytest.importorskip("flwr")
    from hydiscgan_fl.config import HyDiscGANConfig
    from hydiscgan_fl.orchestration.update_replay import replay_alignment_round
    from hydiscgan_fl.run_files import RunDirectory

    run_dir = RunDirectory(tmp_path, "run")
    config = HyDiscGANConfig.from_run_config({"dataset": "synthetic", **setting}).to_run_config()
    run_dir.save_state({"round": 1, "stage": "align", "lineage": "run", "config": config, "arrays": {}, "strategy": {}})
    with pytest.raises(ValueError, match=why):
        replay_alignment_round(run_dir.path, num_clients=2)
