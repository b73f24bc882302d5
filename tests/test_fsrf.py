"""The fsrf family (models/fsrf.py): presence masks (a missing modality changes a prediction only through the
model's recovery path), each loss on hand-made cases, what each ablation removes, the training loops' hook
for a family's own losses, and one federated run with clients missing modalities."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.in_process import run_in_process
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import load_dataset
from hydiscgan_fl.data.missing import Missingness
from hydiscgan_fl.models import MSA_MODELS, StepTensors, build_shared_models, parameter_counts
from hydiscgan_fl.models.fsrf import FSRF, FSRFWeights, Parts, _kl, central_moment_discrepancy, orthogonality
from hydiscgan_fl.training import local_msa, tensor_view, to_tensors, train_multimodal

FAMILY = ("fsrf", "fsrf-nofact", "fsrf-nodistill", "fsrf-dropout")
DIMS = {"text": 6, "audio": 5, "visual": 4}
MOSI_DIMS = {"text": 100, "audio": 73, "visual": 100}
FACTOR_TERMS = {"fsrf_sim", "fsrf_orth", "fsrf_recon", "fsrf_noise"}
DISTILL_TERMS = {"fsrf_distill", "fsrf_distribution"}


def _model(name: str, **weights) -> FSRF:
    torch.manual_seed(0)
    cfg = HyDiscGANConfig(msa_model=name, hidden_dim=32, **weights)
    return MSA_MODELS.get(name).build(DIMS, cfg)


def _inputs(n: int = 8, seed: int = 0) -> tuple[StepTensors, torch.Tensor, StepTensors]:
    """Text and visual as steps (sequence data), audio as vectors (utterance-vector data)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 5, (n,), generator=g)
    text = torch.randn(n, 4, DIMS["text"], generator=g) * (torch.arange(4)[None, :, None] < lengths[:, None, None])
    return (StepTensors(text, lengths), torch.randn(n, DIMS["audio"], generator=g),
            StepTensors(torch.randn(n, 3, DIMS["visual"], generator=g), torch.full((n,), 3)))


def _present(n: int = 8) -> torch.Tensor:
    rows = [[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]
    return torch.tensor(rows[:n], dtype=torch.bool)


def _garbage_where_missing(inputs, present: torch.Tensor, fill: float):
    """The same inputs with every missing modality's values replaced by `fill` (NaN included)."""
    out = []
    for column, value in enumerate(inputs):
        gone = ~present[:, column]
        if isinstance(value, StepTensors):
            values = value.values.clone()
            values[gone] = fill
            out.append(StepTensors(values, value.lengths))
        else:
            values = value.clone()
            values[gone] = fill
            out.append(values)
    return out


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("fill", [0.0, 1e3, float("nan")])
def test_a_missing_modality_never_changes_a_prediction(name: str, fill: float) -> None:
    model, inputs, present = _model(name).eval(), _inputs(), _present()
    with torch.no_grad():
        before = model(*inputs, present=present)
        after = model(*_garbage_where_missing(inputs, present, fill), present=present)
    torch.testing.assert_close(after, before)
    assert torch.isfinite(after).all()


@pytest.mark.parametrize("name", FAMILY)
def test_a_missing_modality_changes_nothing_in_training_either(name: str) -> None:
    model, inputs, present = _model(name).train(), _inputs(), _present()

    def losses(values):
        torch.manual_seed(5)  # the same views and dropout
        terms = model.training_losses(*values, None, present, task_loss=lambda out: out.pow(2).mean())
        return {key: term.item() for key, term in terms.items()}

    clean, noisy = losses(inputs), losses(_garbage_where_missing(inputs, present, float("nan")))
    assert clean == pytest.approx(noisy) and all(np.isfinite(list(clean.values())))


def test_the_recovery_path_is_how_a_missing_modality_is_filled() -> None:
    """Audio missing: its slot is R_a(pooled shared part); changing R_a changes that prediction only."""
    model, inputs, present = _model("fsrf").eval(), _inputs(), _present()
    with torch.no_grad():
        before = model(*inputs, present=present)
        model.recover["audio"][2].bias.add_(1.0)
        after = model(*inputs, present=present)
    changed = (after - before).abs() > 1e-6
    assert torch.equal(changed, ~present[:, 1])
    # a present modality does change its prediction
    with torch.no_grad():
        shifted = model(inputs[0], inputs[1] + 1.0, inputs[2], present=present)
    assert torch.equal((shifted - after).abs() > 1e-6, present[:, 1])


def test_the_noise_part_never_reaches_the_head() -> None:
    model, inputs = _model("fsrf").eval(), _inputs()
    with torch.no_grad():
        before = model(*inputs)
        for noise in model.noise.values():
            noise[0].weight.normal_()
        torch.testing.assert_close(model(*inputs), before)


def test_cmd_is_zero_for_identical_samples_and_the_mean_gap_for_a_shift() -> None:
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    assert central_moment_discrepancy(x, x).item() == pytest.approx(0.0, abs=1e-5)
    shift = torch.tensor([3.0, 0.0, 4.0])  # same central moments, means 5 apart
    assert central_moment_discrepancy(x, x + shift).item() == pytest.approx(5.0, abs=1e-4)
    assert central_moment_discrepancy(x, 2 * x).item() > 0.1  # other spread: higher moments differ
    x.requires_grad_(True)
    central_moment_discrepancy(x, x.detach()).backward()
    assert torch.isfinite(x.grad).all()  # finite at zero distance


def test_orthogonality_is_zero_for_orthogonal_columns_and_scale_free() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    b = torch.tensor([[1.0], [-1.0], [3.0], [-3.0]])  # orthogonal (over the rows) to both columns of a
    assert orthogonality(a, b).item() == pytest.approx(0.0, abs=1e-7)
    single = torch.tensor([[1.0], [1.0]])
    assert orthogonality(single, 5 * single).item() == pytest.approx(4.0)  # rows normalised: (1 + 1)^2


def _hand_parts(model: FSRF, n: int = 6) -> tuple[Parts, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    width = model.head[0].in_features // 4
    shared = torch.randn(n, width, generator=g)
    projected, shared_d, specific, noise = {}, {}, {}, {}
    for m in ("text", "audio", "visual"):
        specific[m], shared_d[m] = torch.randn(n, width, generator=g), shared
        noise[m] = torch.zeros(n, width)
        projected[m] = shared + specific[m] + noise[m]
    return Parts(projected, shared_d, specific, noise), torch.ones(n, 3, dtype=torch.bool)


def test_factor_losses_on_hand_made_parts() -> None:
    model = _model("fsrf", fsrf_lambda_orth=1.0, fsrf_lambda_noise=1.0)
    for decoder in model.decode.values():  # the identity
        torch.nn.init.eye_(decoder.weight)
        torch.nn.init.zeros_(decoder.bias)
    parts, present = _hand_parts(model)
    with torch.no_grad():
        terms = model.factor_losses(parts, present)
    assert terms["fsrf_sim"].item() == pytest.approx(0.0, abs=1e-5)  # one shared sample for every modality
    assert terms["fsrf_recon"].item() == pytest.approx(0.0, abs=1e-10)  # s + p + n rebuilds h exactly
    assert terms["fsrf_noise"].item() == pytest.approx(0.0, abs=1e-7)  # zero noise
    expected = np.mean([orthogonality(parts.shared[m], parts.specific[m]).item() for m in parts.shared])
    assert terms["fsrf_orth"].item() == pytest.approx(expected, rel=1e-5)
    # only utterances that hold a modality count: a modality held by fewer than two counts zero
    lonely = present.clone()
    lonely[1:, 2] = False
    noisy = Parts(parts.projected, parts.shared, parts.specific,
                  {**parts.noise, "visual": torch.full_like(parts.noise["visual"], 9.0)})
    with torch.no_grad():
        assert model.factor_losses(noisy, lonely)["fsrf_noise"].item() == pytest.approx(0.0, abs=1e-7)
        assert model.factor_losses(noisy, present)["fsrf_noise"].item() > 0.01


def test_self_distillation_is_zero_for_identical_views_and_its_teacher_side_is_detached() -> None:
    model, inputs = _model("fsrf", fsrf_view_drop=0.0).eval(), _inputs()  # no drop, no dropout: equal views
    terms = model.training_losses(*inputs, None, None, task_loss=lambda out: out.pow(2).mean())
    assert terms["fsrf_distill"].item() == pytest.approx(0.0, abs=1e-10)
    assert terms["fsrf_distribution"].item() == pytest.approx(0.0, abs=1e-6)
    student, teacher = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    _kl(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None


def test_the_complete_teacher_distils_every_held_modality_into_one_masked_view() -> None:
    """fsrf-distill-teacher "complete": one direction, from the sample as held to its masked view; the
    members without distillation keep two masked views."""
    model, inputs, present = _model("fsrf", fsrf_distill_teacher="complete").eval(), _inputs(), _present()
    text_alone = present & torch.tensor([True, False, False])
    model.view = lambda held: text_alone
    terms = model.training_losses(*inputs, None, present, task_loss=lambda out: out.pow(2).mean())
    with torch.no_grad():
        complete, student = model(*inputs, None, present), model(*inputs, None, text_alone)
    assert terms["fsrf_distill"].item() == pytest.approx(torch.nn.functional.mse_loss(student, complete).item())
    assert terms["task"].item() == pytest.approx(0.5 * (complete.pow(2).mean() + student.pow(2).mean()).item())
    dropout = _model("fsrf-dropout", fsrf_distill_teacher="complete").eval()
    views = []
    dropout.view = lambda held: views.append(held) or text_alone
    dropout.training_losses(*inputs, None, present, task_loss=lambda out: out.pow(2).mean())
    assert len(views) == 2


def test_views_drop_modalities_but_keep_one_present() -> None:
    model, present = _model("fsrf", fsrf_view_drop=0.9), _present().repeat(50, 1)
    torch.manual_seed(0)
    view = model.view(present)
    assert not (view & ~present).any() and view.any(dim=1).all()
    assert (view.sum(dim=1) == 1).float().mean().item() > 0.7  # at 0.9, mostly the one kept by force
    torch.manual_seed(0)
    assert torch.equal(_model("fsrf", fsrf_view_drop=0.0).view(present), present)


@pytest.mark.parametrize("name, terms, factorised", [
    ("fsrf", {"task"} | FACTOR_TERMS | DISTILL_TERMS, True),
    ("fsrf-nofact", {"task"} | DISTILL_TERMS, False),
    ("fsrf-nodistill", {"task"} | FACTOR_TERMS, True),
    ("fsrf-dropout", {"task"}, False),
])
def test_each_ablation_removes_what_it_claims(name: str, terms: set[str], factorised: bool) -> None:
    model = _model(name).train()
    got = model.training_losses(*_inputs(), None, _present(), task_loss=lambda out: out.abs().mean())
    assert set(got) == terms
    assert all(hasattr(model, part) == factorised for part in ("shared", "specific", "noise", "decode"))


def test_parameter_counts() -> None:
    counts = {name: parameter_counts(MOSI_DIMS, HyDiscGANConfig(msa_model=name))["msa"] for name in FAMILY}
    print("msa parameters on MOSI dims:", counts)
    assert counts["fsrf"] == counts["fsrf-nodistill"] == 101_249
    assert counts["fsrf-nofact"] == counts["fsrf-dropout"] == 59_649


def test_the_loops_add_the_familys_own_losses() -> None:
    """The hook: train_multimodal (fedavg-multimodal, central-multimodal) and local_msa (HyDiscGAN stage 2)
    train on the family's terms; a family without `training_losses` keeps the sentiment loss alone."""
    dataset = load_dataset("synthetic-seq", None, 0).split_subset("train").subset(np.arange(40))
    cfg = HyDiscGANConfig(dataset="synthetic-seq", method="fedavg-multimodal", msa_model="fsrf", hidden_dim=16,
                          batch_size=16, missing_modality_rate=0.5)
    data = to_tensors(dataset, torch.device("cpu"), tensor_view(cfg))
    shared = build_shared_models(dataset.dims, cfg, 0)
    losses = train_multimodal(shared.msa, data, cfg, 1, 0, dataset.label_kind)
    assert {f"loss_{term}" for term in {"task"} | FACTOR_TERMS | DISTILL_TERMS} == set(losses)
    stage2 = local_msa(shared, None, data, cfg.model_copy(update={"method": "hydiscgan", "missing_modality_rate": 0}),
                       1, 0, dataset.label_kind)
    assert {"loss_task", "loss_fsrf_sim", "loss_fsrf_distill"} <= set(stage2)
    plain_cfg = HyDiscGANConfig(dataset="synthetic-seq", msa_model="mlp", hidden_dim=16, batch_size=16)
    plain = build_shared_models(dataset.dims, plain_cfg, 0)
    assert set(train_multimodal(plain.msa, to_tensors(dataset, torch.device("cpu"), tensor_view(plain_cfg)),
                                plain_cfg, 1, 0, dataset.label_kind)) == {"loss_task"}


def test_a_federated_run_with_clients_missing_modalities(tmp_path: Path) -> None:
    """fedavg-multimodal with fsrf, every kind of missingness, 3 clients (one holds neither audio nor visual
    under seed 0): every round completes and metrics.csv sums the clients' modality counts."""
    run_config = {"dataset": "synthetic-seq", "method": "fedavg-multimodal", "rounds-align": 0, "rounds-msa": 2,
                  "local-epochs": 1, "batch-size": 64, "hidden-dim": 32, "msa-model": "fsrf", "missing-rate": 0.3,
                  "missing-modality-rate": 0.3, "missing-client-audio": 0.5, "missing-client-visual": 0.5,
                  "output-dir": str(tmp_path)}
    run = run_in_process(run_config, num_nodes=3)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["selected_round"] in (1, 2) and np.isfinite(summary["mae"])
    rounds = list(csv.DictReader((run.run_dir / "metrics.csv").open()))
    clients = list(csv.DictReader((run.run_dir / "clients.csv").open()))
    assert [int(r["replies_ok"]) for r in rounds] == [3, 3]
    holds = [Missingness(0.3, 0.3, 0.5, 0.5, seed=0).client_holds(pid) for pid in range(3)]
    assert (False, False) in holds and (True, True) in holds  # the seed gives a client with neither
    for row in rounds:
        mine = [c for c in clients if c["server_round"] == row["round"]]
        for modality in ("text", "audio", "visual"):
            assert int(row[f"examples_{modality}"]) == sum(int(c[f"examples_{modality}"]) for c in mine)
        by_node = {int(c["node_id"]) - 1001: c for c in mine}  # in-process node ids are 1001 + partition id
        for pid, (audio, visual) in enumerate(holds):
            assert (int(by_node[pid]["examples_audio"]) > 0) == audio
            assert (int(by_node[pid]["examples_visual"]) > 0) == visual
