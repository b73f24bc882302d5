"""HyDiscGAN's ablation switches, inference modes and the privileged-information baselines (distill,
multitask): each trains on a tiny synthetic client and changes what it claims to change, without Flower.
(tests/test_privacy_contract.py covers the baselines' replies key by key; tests/test_simulation_e2e.py a
real `flwr run` of one.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clients import handlers
from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import make_synthetic
from hydiscgan_fl.models import StudentModels, build_client_discriminators, build_federated_models, build_shared_models
from hydiscgan_fl.orchestration import bench
from hydiscgan_fl.training import local_alignment, local_msa, predict, to_tensors
from hydiscgan_fl.training.privileged import build_multitask_head, local_distill, local_multitask
from hydiscgan_fl.training.videos import Videos
from strategies import HyDiscGANStrategy
from tests.grids import StaticGrid

CPU = torch.device("cpu")
# The per-utterance model: these tests drive the steps on bare splits without a video layout.
TINY = {"msa_model": "mlp", "hidden_dim": 32, "embed_dim": 8, "batch_size": 16}


def tiny(**overrides) -> HyDiscGANConfig:
    return HyDiscGANConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def synthetic():
    dataset = make_synthetic(seed=3, num_speakers=6, utterances_per_speaker=12).split_subset("train")
    return dataset, to_tensors(dataset, CPU)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def scores(outputs: torch.Tensor, label_kind: str) -> np.ndarray:
    return (torch.sigmoid(outputs) if label_kind == "binary" else outputs).numpy()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[key], b[key]) for key in a)


# -- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "named"), [
    ({"inference": "mean-pred:0"}, "inference"),
    ({"inference": "mean"}, "inference"),
    ({"ablation": "no-generator"}, "ablation"),
    ({"method": "distill", "ablation": "zero-fakes"}, "no generator"),
    ({"method": "multitask", "inference": "mean-fake:4"}, "no generator"),
    ({"method": "distill", "dp-unit": "utterance"}, "dp-unit 'utterance'"),
    ({"method": "multitask", "msa-site": "server"}, "msa-site 'server'"),
    ({"lambda-adv": 0.0, "lambda-contrastive": 0.0, "lambda-recon": 0.0}, "at least one"),
])
def test_bad_ablation_inference_and_baseline_settings_are_named(overrides, named):
    with pytest.raises(ConfigError, match=named):
        HyDiscGANConfig.from_run_config(overrides)


def test_single_stage_baselines_and_the_stage_one_skip():
    for method in ("distill", "multitask"):
        cfg = HyDiscGANConfig(method=method, rounds_align=5, rounds_msa=3)
        assert cfg.total_rounds == 3 and {cfg.stage_of_round(r) for r in (1, 2, 3)} == {method}
    cfg = HyDiscGANConfig(rounds_align=0, rounds_msa=3, lambda_adv=0.0, lambda_contrastive=0.0, lambda_recon=0.0)
    assert cfg.total_rounds == 3 and cfg.stage_of_round(1) == "msa"  # stage 1 skipped: no weight needed
    assert HyDiscGANConfig(inference="mean-fake:7").inference_draws == ("mean-fake", 7)
    with pytest.raises(ValueError, match="multitask.*'mlp' or 'context-gru'"):
        StudentModels({"text": 4, "audio": 3, "visual": 2}, HyDiscGANConfig(method="multitask", msa_model="lmr-cbt"))


def test_every_bench_variant_is_a_valid_run_config():
    for name, keys in bench.FEDERATED_VARIANTS.items():
        HyDiscGANConfig.from_run_config(keys)
        assert name in bench.METHODS
    assert set(bench.ABLATIONS) | set(bench.INFERENCES) <= set(bench.FEDERATED_VARIANTS)


# -- ablations of the loss terms -------------------------------------------------------------------------
@pytest.mark.parametrize(("weight", "absent"), [("lambda_adv", "loss_gen_adv"),
                                                ("lambda_contrastive", "loss_contrastive"),
                                                ("lambda_recon", "loss_recon")])
def test_a_zero_weight_removes_its_stage_one_term(synthetic, weight, absent):
    dataset, data = synthetic
    full = local_alignment(build_shared_models(dataset.dims, tiny(), 0),
                           build_client_discriminators(dataset.dims, tiny(), 1), data, tiny(), 1, seed=5)
    cfg = tiny(**{weight: 0.0})
    shared = build_shared_models(dataset.dims, cfg, 0)
    before = weights(shared.generator)
    ablated = local_alignment(shared, build_client_discriminators(dataset.dims, cfg, 1), data, cfg, 1, seed=5)
    assert absent in full and absent not in ablated
    assert not same(before, weights(shared.generator))  # G still trains on the other terms


def test_without_any_term_reading_d_the_discriminators_are_not_trained(synthetic):
    dataset, data = synthetic
    cfg = tiny(lambda_adv=0.0, lambda_adv_msa=0.0)  # neither stage reads D: only E trains (contrastive)
    shared, private = build_shared_models(dataset.dims, cfg, 0), build_client_discriminators(dataset.dims, cfg, 1)
    disc_before, enc_before = weights(private.disc_audio), weights(private.encoder_audio)
    losses = local_alignment(shared, private, data, cfg, 1, seed=5)
    assert "loss_disc" not in losses and same(disc_before, weights(private.disc_audio))
    assert not same(enc_before, weights(private.encoder_audio))
    # lambda-adv 0 alone: stage 2's frozen-D term still reads D, so D is still trained in stage 1
    cfg = tiny(lambda_adv=0.0)
    private = build_client_discriminators(dataset.dims, cfg, 1)
    assert "loss_disc" in local_alignment(build_shared_models(dataset.dims, cfg, 0), private, data, cfg, 1, seed=5)
    assert not same(disc_before, weights(private.disc_audio))


@pytest.mark.parametrize("overrides", [{"lambda_adv_msa": 0.0}, {"ablation": "frozen-generator"},
                                       {"ablation": "zero-fakes"}])
def test_stage_two_drops_the_frozen_d_term_when_ablated(synthetic, overrides):
    dataset, data = synthetic
    private = build_client_discriminators(dataset.dims, tiny(), 1)
    assert "loss_gen_adv" in local_msa(build_shared_models(dataset.dims, tiny(), 0), private, data, tiny(), 1, 5,
                                       dataset.label_kind)
    cfg = tiny(**overrides)
    assert "loss_gen_adv" not in local_msa(build_shared_models(dataset.dims, cfg, 0), private, data, cfg, 1, 5,
                                           dataset.label_kind)


def test_frozen_generator_leaves_g_as_stage_one_left_it_and_trains_m(synthetic):
    dataset, data = synthetic
    cfg = tiny(ablation="frozen-generator")
    shared = build_shared_models(dataset.dims, cfg, 0)
    g_before, m_before = weights(shared.generator), weights(shared.msa)
    local_msa(shared, build_client_discriminators(dataset.dims, cfg, 1), data, cfg, 2, 5, dataset.label_kind)
    assert same(g_before, weights(shared.generator)) and not same(m_before, weights(shared.msa))


def test_zero_fakes_m_never_sees_g_in_training_or_inference(synthetic):
    dataset, data = synthetic
    cfg = tiny(ablation="zero-fakes")
    shared = build_shared_models(dataset.dims, cfg, 0)
    m_before = weights(shared.msa)

    def refuse(*args, **kwargs):
        raise AssertionError("G was run under the zero-fakes ablation")

    shared.generator.forward = refuse
    local_msa(shared, None, data, cfg, 1, 5, dataset.label_kind)
    assert not same(m_before, weights(shared.msa))
    zeros = [torch.zeros(len(data), dataset.dims[m]) for m in ("audio", "visual")]
    shared.eval()
    with torch.no_grad():
        expected = scores(shared.msa(data.text, *zeros), dataset.label_kind)
    assert np.allclose(predict(shared, data.text, dataset.label_kind), expected)


def test_a_client_without_a_stage_one_d_trains_stage_two_without_the_frozen_d_term(task_identity, caplog):
    cfg = tiny(dataset="synthetic", rounds_align=0, rounds_msa=1, local_epochs=1)
    shared = build_shared_models(cfg.load_dataset().dims, cfg, 0)
    strategy = HyDiscGANStrategy(rounds_align=0, node_settle_s=0.0)
    (message,) = strategy.configure_train(1, ArrayRecord(shared.state_dict()), ConfigRecord(), StaticGrid([101]))
    assert message.content["config"]["stage"] == "msa"
    context = Context(run_id=1, node_id=101, node_config={"partition-id": 1, "num-partitions": 4},
                      state=RecordDict(), run_config=cfg.to_run_config())
    caplog.set_level("INFO", logger="hydiscgan_fl.client")
    reply = handlers.train(message, context)
    assert set(reply.content["metrics"]) == {"num-examples", "train-s", "loss-task"}
    assert "loss-gen-adv" not in caplog.text  # not even computed (a random D's verdict would be noise)


# -- inference-time choices ------------------------------------------------------------------------------
def test_inference_modes_average_over_seeded_noise(synthetic):
    dataset, data = synthetic
    shared = build_shared_models(dataset.dims, tiny(), 0)
    label = dataset.label_kind
    z0 = predict(shared, data.text, label)
    mean_pred = predict(shared, data.text, label, inference=("mean-pred", 4), seed=1)
    mean_fake = predict(shared, data.text, label, inference=("mean-fake", 4), seed=1)
    assert not np.allclose(z0, mean_pred) and not np.allclose(z0, mean_fake) and not np.allclose(mean_pred, mean_fake)
    assert np.array_equal(mean_pred, predict(shared, data.text, label, inference=("mean-pred", 4), seed=1))
    # mean-pred is the mean of single draws: K=1 with the same noise stream is the first draw
    rng = torch.Generator().manual_seed(1)
    noise = shared.generator.sample_noise(len(data), rng)
    with torch.no_grad():
        first = scores(shared.predict(data.text, noise=noise), label)
    assert np.allclose(predict(shared, data.text, label, inference=("mean-pred", 1), seed=1), first)
    # without noise every mode is M(t, G(t, 0))
    no_noise = build_shared_models(dataset.dims, tiny(noise_dim=0), 0)
    for mode in (("mean-pred", 3), ("mean-fake", 3)):
        assert np.allclose(predict(no_noise, data.text, label, inference=mode), predict(no_noise, data.text, label),
                           atol=1e-6)


# -- privileged-information baselines --------------------------------------------------------------------
@pytest.mark.parametrize("model", ["mlp", "context-gru"])
def test_distillation_term_changes_the_student(synthetic, model):
    dataset, data = synthetic
    videos = Videos.of(dataset) if model == "context-gru" else None
    cfg = tiny(method="distill", msa_model=model)
    teacher = build_shared_models(dataset.dims, cfg, 7).msa
    students = {}
    for weight in (0.0, 1.0):
        student = build_federated_models(dataset.dims, cfg.model_copy(update={"lambda_distill": weight}), 0).msa
        losses = local_distill(student, teacher, data, cfg.model_copy(update={"lambda_distill": weight}), 1, 5,
                               dataset.label_kind, videos=videos)
        assert set(losses) == ({"loss_task", "loss_distill"} if weight else {"loss_task"})
        students[weight] = weights(student)
    assert not same(students[0.0], students[1.0])


@pytest.mark.parametrize("model", ["mlp", "context-gru"])
def test_multitask_head_reads_the_text_features_and_changes_the_model(synthetic, model):
    dataset, data = synthetic
    videos = Videos.of(dataset) if model == "context-gru" else None
    cfg = tiny(method="multitask", msa_model=model)
    trained = {}
    for weight in (0.0, 1.0):
        text_model = build_federated_models(dataset.dims, cfg, 0).msa
        head = build_multitask_head(text_model.feature_dim, dataset.dims, 3)
        head_before = weights(head)
        losses = local_multitask(text_model, head, data, cfg.model_copy(update={"lambda_multitask": weight}), 1, 5,
                                 dataset.label_kind, videos=videos)
        assert set(losses) == ({"loss_task", "loss_multitask"} if weight else {"loss_task"})
        assert same(head_before, weights(head)) == (weight == 0.0)  # weight 0: the head is not trained
        trained[weight] = weights(text_model)
    assert not same(trained[0.0], trained[1.0])


@pytest.mark.parametrize("method", ["distill", "multitask"])
def test_baseline_rounds_keep_teacher_and_head_on_the_client(task_identity, method):
    cfg = tiny(dataset="synthetic", method=method, rounds_msa=2, local_epochs=1)
    initial = build_federated_models(cfg.load_dataset().dims, cfg, 0).state_dict()
    strategy = HyDiscGANStrategy(rounds_align=cfg.rounds_align, node_settle_s=0.0, method=method)
    context = Context(run_id=1, node_id=101, node_config={"partition-id": 1, "num-partitions": 4},
                      state=RecordDict(), run_config=cfg.to_run_config())
    arrays = ArrayRecord(initial)
    private_key = handlers.TEACHER_STATE_KEY if method == "distill" else handlers.MULTITASK_STATE_KEY
    for server_round in (1, 2):
        (message,) = strategy.configure_train(server_round, arrays, ConfigRecord(), StaticGrid([101]))
        assert message.content["config"]["stage"] == method
        reply = handlers.train(message, context)
        assert set(reply.content["arrays"]) == set(initial) and all(k.startswith("msa.") for k in initial)
        assert set(reply.content["metrics"]) == {"num-examples", "train-s"}
        if server_round == 1:  # the reply is the text model alone; the teacher / head stays in the client's state
            private = {k: v.clone() for k, v in context.state[private_key].to_torch_state_dict().items()}
        arrays, _ = strategy.aggregate_train(server_round, [reply])
        assert [c.status for c in strategy.rounds[-1].clients] == ["ok"]
    assert handlers.PRIVATE_STATE_KEY not in context.state  # no discriminators in these baselines
    later = context.state[private_key].to_torch_state_dict()
    # the teacher is trained once and then fixed; the head keeps training with the text model
    assert same(private, later) == (method == "distill")
