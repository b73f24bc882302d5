"""`hydiscgan privacy`: the privacy-utility sweep of HyDiscGAN through real federated runs.

    hydiscgan privacy --dataset mosi-bclstm --out DIR

Grid: for each DP unit (``none``, ``speaker``, ``utterance``) every noise multiplier (one point with no
noise for ``none``), crossed with every adv-lambda (adversarial identity unlearning). Each point is one
federated run through LocalFederation (--num-clients SuperNodes, speaker partition, the run config's
schedule unless overridden); the released model is then attacked:

- speaker_attack_acc: speaker identification from G(t, 0) of the training speakers' utterances
  (attack-trained on some utterances of each speaker, tested on the others; as in `hydiscgan bench`);
- mia_auc: membership inference on the released G, training utterances as members and the held-out
  (test-speaker) utterances as non-members, the attacker holding their real features (0.5 = chance);
- update_membership_auc_mean / _max, update_reconstruction_gain: a curious server's attacks on the
  individual updates of G that it receives (one more alignment round of every client, replayed through
  the real ClientApp after the run: hydiscgan_fl.orchestration.update_replay): AUC of finding a client's
  utterances among all training texts (0.5 = chance), mean and max over clients, and how much closer the
  update brings G to the client's own real audio/visual than to everyone else's (0 = nothing).

epsilon_rdp / epsilon_prv are (epsilon, dp-delta)-DP guarantees at the end of the run (inf: no DP);
wdp_loss is the Wasserstein accountant's EMPIRICAL figure, not a guarantee (it grows with the noise).
acc2/f1 are the test metrics at the round best on the validation speakers (`selected_round`, whose G is
the one attacked); valid_acc2 / valid_mae are that round's validation metrics. Every point runs for the
seeds --seed .. --seed + --seeds - 1. The RECOMMENDED setting is chosen on validation only: among the
points with a DP guarantee, the best mean validation metric over seeds (acc2 for binary labels, mae for
continuous ones; ties go to the smaller epsilon_rdp). It is printed and written to privacy.md, which
gives every point's mean ± std and, with more than one seed, the 95% t-interval over seeds.
Writes DIR/privacy.csv (rows already there are skipped, so an interrupted sweep resumes), DIR/privacy.md,
DIR/privacy.png and each run directory under DIR/runs/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import DataError
from hydiscgan_fl.metrics import SELECTION_METRIC, mean_interval
from hydiscgan_fl.models import build_shared_models
from hydiscgan_fl.orchestration.flwr_runner import FederatedRunError, LocalFederation
from hydiscgan_fl.orchestration.result_table import append_row, pyplot, read_rows
from hydiscgan_fl.orchestration.schedule import SCHEDULE_KEYS, add_schedule_arguments, schedule_overrides
from hydiscgan_fl.orchestration.update_replay import UPDATE_ATTACK_COLUMNS, update_attack_row
from hydiscgan_fl.privacy.attacks import generator_membership_attack, speaker_attack
from hydiscgan_fl.privacy.ledger import PRIVACY_COLUMNS
from hydiscgan_fl.training import pick_device, tensor_view, to_tensors
from hydiscgan_fl.training.central import generated_features, real_features

COLUMNS = ("dp_unit", "noise_multiplier", "adv_lambda", "seed", *PRIVACY_COLUMNS, "selected_round", "valid_acc2",
           "valid_mae", "acc2", "f1", "speaker_attack_acc", "mia_auc", *UPDATE_ATTACK_COLUMNS)
POINT = ("dp_unit", "noise_multiplier", "adv_lambda")
# Summarised over seeds in privacy.md.
REPORTED = ("epsilon_rdp", "epsilon_prv", "valid_acc2", "valid_mae", "acc2", "f1", "speaker_attack_acc", "mia_auc",
            *UPDATE_ATTACK_COLUMNS)
UNITS = ("none", "speaker", "utterance")
DEFAULT_NOISE_MULTIPLIERS = (0.5, 2.0)
DEFAULT_ADV_LAMBDAS = (0.0, 1.0)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "privacy",
        help="privacy-utility sweep: DP unit x noise multiplier x adv-lambda, with attacks on the released G",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default="mosi-bclstm",
                        help="mosi-bclstm, synthetic or mmsa:<path to .pkl> (default: %(default)s)")
    parser.add_argument("--data-dir", default="", help="folder holding mosi-bclstm/ (default: the checkout's data/)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--units", type=_units, default=UNITS,
                        help=f"comma-separated DP units from {','.join(UNITS)} (default: all)")
    parser.add_argument("--noise-multipliers", type=_floats, default=DEFAULT_NOISE_MULTIPLIERS,
                        help="dp-noise-multiplier values of the DP units (default: %(default)s)")
    parser.add_argument("--adv-lambdas", type=_floats, default=DEFAULT_ADV_LAMBDAS,
                        help="adv-lambda values, 0 = no speaker adversary (default: %(default)s)")
    parser.add_argument("--clip-norm", type=float, default=None, help="dp-clip-norm (default: the run config's)")
    parser.add_argument("--delta", type=float, default=None, help="dp-delta (default: the run config's)")
    parser.add_argument("--num-clients", type=int, default=8, help="simulated SuperNodes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="first run seed (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds per point: --seed .. --seed + N - 1 (default: %(default)s)")
    add_schedule_arguments(parser)
    parser.set_defaults(handler=run)


def _units(text: str) -> tuple[str, ...]:
    units = tuple(u.strip() for u in text.split(",") if u.strip())
    if not units or any(u not in UNITS for u in units):
        raise argparse.ArgumentTypeError(f"DP units must come from {','.join(UNITS)}, got {text!r}")
    return units


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers >= 0, got {text!r}")
    return values


def grid(units: tuple[str, ...], noise_multipliers: tuple[float, ...],
         adv_lambdas: tuple[float, ...]) -> list[tuple[str, float, float]]:
    """(dp_unit, noise_multiplier, adv_lambda) points; the unit "none" has no noise (0)."""
    return [(unit, noise, adv) for unit in units for noise in ((0.0,) if unit == "none" else noise_multipliers)
            for adv in adv_lambdas]


def point_config(base: HyDiscGANConfig, unit: str, noise: float, adv: float) -> HyDiscGANConfig:
    update: dict[str, Any] = {"dp_unit": unit, "adv_lambda": adv}
    if unit != "none":
        update["dp_noise_multiplier"] = noise
    return HyDiscGANConfig.model_validate({**base.model_dump(), **update})


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    try:
        base = HyDiscGANConfig.from_run_config({
            "dataset": args.dataset, "data-dir": args.data_dir, "seed": args.seed, **schedule_overrides(args),
            **({"dp-clip-norm": args.clip_norm} if args.clip_norm is not None else {}),
            **({"dp-delta": args.delta} if args.delta is not None else {}),
        })
        if args.num_clients < 1 or args.seeds < 1:
            raise ConfigError("--num-clients and --seeds must be >= 1")
        points = [(*point, seed) for point in grid(args.units, args.noise_multipliers, args.adv_lambdas)
                  for seed in range(args.seed, args.seed + args.seeds)]
        # every point valid before any run
        configs = [point_config(base.model_copy(update={"seed": seed}), *point) for *point, seed in points]
        out.mkdir(parents=True, exist_ok=True)
    except (ConfigError, DataError, OSError) as err:
        print(f"hydiscgan privacy: error: {err}", file=sys.stderr)
        return 2
    done = {_key(row) for row in read_rows(out / "privacy.csv")}
    federation: LocalFederation | None = None
    try:
        for point, cfg in zip(points, configs):
            label = f"dp-unit={point[0]} noise={point[1]:g} adv-lambda={point[2]:g} seed={point[3]}"
            if _key(dict(zip((*POINT, "seed"), point))) in done:
                print(f"[{label}] already in privacy.csv, skipped", flush=True)
                continue
            started = time.time()
            federation = federation or LocalFederation()
            row = sweep_row(federation, cfg, args.num_clients, out / "runs")
            append_row(out / "privacy.csv", row, COLUMNS)
            print(f"[{label}] done in {time.time() - started:.0f} s: acc2={row['acc2']:.4f} "
                  f"epsilon_rdp={row['epsilon_rdp']:.3g} speaker attack={row['speaker_attack_acc']:.3f} "
                  f"mia auc={row['mia_auc']:.3f} update membership auc={row['update_membership_auc_mean']:.3f}",
                  flush=True)
    except FederatedRunError as err:
        print(f"hydiscgan privacy: a federated run failed: {err}", file=sys.stderr)
        return 1
    finally:
        if federation is not None:
            federation.close()
    rows = read_rows(out / "privacy.csv")
    label_kind = base.load_dataset(text_only=True).label_kind
    summary = summarise(rows)
    best = recommend(summary, label_kind)
    (out / "privacy.md").write_text(report(summary, best, label_kind))
    plot(rows, out / "privacy.png")
    if best is not None:
        print(f"recommended (best mean validation {SELECTION_METRIC[label_kind][0]} among DP settings): "
              f"{recommended_flags(best, base)}")
    print(f"results in {out}: privacy.csv ({len(rows)} rows), privacy.md, privacy.png")
    return 0


def _key(row: dict[str, Any]) -> tuple[str, float, float, int]:
    return str(row["dp_unit"]), float(row["noise_multiplier"]), float(row["adv_lambda"]), int(row["seed"])


def _number(cell: Any) -> float:
    return math.nan if cell in ("", None) else float(cell)


def summarise(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One entry per (dp_unit, noise_multiplier, adv_lambda): the seeds and, per REPORTED column, the
    mean_interval over them (grid order kept)."""
    groups: dict[tuple[str, float, float], list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(_key(row)[:3], []).append(row)
    return [{**dict(zip(POINT, point)), "seeds": sorted(int(r["seed"]) for r in members),
             **{column: mean_interval([_number(r.get(column)) for r in members]) for column in REPORTED}}
            for point, members in groups.items()]


def recommend(summary: list[dict[str, Any]], label_kind: str) -> dict[str, Any] | None:
    """The DP point (finite epsilon) with the best mean validation metric; ties: the smaller epsilon_rdp.
    Test metrics play no part. None when no DP point has a validation metric."""
    name, sign = SELECTION_METRIC[label_kind]
    candidates = [p for p in summary if p["dp_unit"] != "none" and math.isfinite(p["epsilon_rdp"]["mean"])
                  and not math.isnan(p[f"valid_{name}"]["mean"])]
    if not candidates:
        return None
    return min(candidates, key=lambda p: (-sign * p[f"valid_{name}"]["mean"], p["epsilon_rdp"]["mean"]))


def recommended_flags(point: dict[str, Any], base: HyDiscGANConfig) -> str:
    return (f"dp-unit=\"{point['dp_unit']}\" dp-noise-multiplier={point['noise_multiplier']:g} "
            f"dp-clip-norm={base.dp_clip_norm:g} dp-delta={base.dp_delta:g} adv-lambda={point['adv_lambda']:g}")


def _cell(summary: dict[str, float]) -> str:
    if summary["n"] == 0:
        return ""
    if not math.isfinite(summary["mean"]):
        return f"{summary['mean']}"
    if summary["n"] == 1:
        return f"{summary['mean']:.4g}"
    return f"{summary['mean']:.4g} ± {summary['std']:.2g} [{summary['low']:.4g}, {summary['high']:.4g}]"


def report(summary: list[dict[str, Any]], best: dict[str, Any] | None, label_kind: str) -> str:
    """privacy.md: every point's mean ± std [95% t-interval] over its seeds, and the recommendation."""
    columns = [c for c in REPORTED if any(p[c]["n"] for p in summary)]
    lines = ["# HyDiscGAN privacy sweep", "",
             "acc2/f1: test metrics at the round best on validation; mean ± sample std [95% t-interval] over "
             "seeds (a single value with one seed).", "",
             "| dp_unit | sigma | adv_lambda | seeds | " + " | ".join(columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    for p in summary:
        lines.append(f"| {p['dp_unit']} | {p['noise_multiplier']:g} | {p['adv_lambda']:g} | {len(p['seeds'])} | "
                     + " | ".join(_cell(p[c]) for c in columns) + " |")
    name = SELECTION_METRIC[label_kind][0]
    lines += ["", f"Recommended, on mean validation {name} among the settings with a DP guarantee: "
              + (f"dp-unit {best['dp_unit']}, sigma {best['noise_multiplier']:g}, adv-lambda {best['adv_lambda']:g}"
                 if best is not None else "none (no DP point in the table)"), ""]
    return "\n".join(lines)


def sweep_row(federation: LocalFederation, cfg: HyDiscGANConfig, num_clients: int, runs: Path) -> dict[str, Any]:
    """Run one point federated, then attack what it released and what its clients send the server."""
    run_config = {key: value for key, value in cfg.to_run_config().items()
                  if key in ("dataset", "data-dir", "seed", "dp-unit", "dp-clip-norm", "dp-noise-multiplier",
                             "dp-delta", "adv-lambda", *SCHEDULE_KEYS)}
    run_config["output-dir"] = str(runs)
    outcome = federation.run(run_config, num_clients)
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    checkpoint = torch.load(outcome.run_dir / "checkpoint.pt", weights_only=True)  # the selected round's G and M
    generator = build_shared_models(checkpoint["dims"], cfg, cfg.seed).generator
    generator.load_state_dict(checkpoint["generator"])
    privacy = {column: summary.get(column, math.inf if column.startswith("epsilon") else math.nan)
               for column in PRIVACY_COLUMNS}
    return {"dp_unit": cfg.dp_unit, "noise_multiplier": cfg.dp_noise_multiplier if cfg.dp_unit != "none" else 0.0,
            "adv_lambda": cfg.adv_lambda, "seed": cfg.seed, **privacy, "selected_round": summary["selected_round"],
            "valid_acc2": summary["valid_acc2"], "valid_mae": summary.get("valid_mae"), "acc2": summary["acc2"],
            "f1": summary["f1"], **release_attacks(generator, cfg),
            **update_attack_row(outcome.run_dir, num_clients)}


def release_attacks(generator: torch.nn.Module, cfg: HyDiscGANConfig) -> dict[str, float]:
    """Speaker identification on G(t, 0) of the training speakers; membership inference on G."""
    dataset = cfg.load_dataset()
    device = pick_device()
    train = to_tensors(dataset.split_subset("train"), device, tensor_view(cfg))
    test = to_tensors(dataset.split_subset("test"), device, tensor_view(cfg))
    generator = generator.to(device)
    fakes = generated_features(generator, train.text)
    speaker = speaker_attack(fakes, dataset.split_subset("train").speakers, seed=cfg.seed)
    mia = generator_membership_attack(
        lambda text: generated_features(generator, torch.as_tensor(text, device=device)),
        train.text.cpu().numpy(), real_features(train), test.text.cpu().numpy(), real_features(test))
    return {"speaker_attack_acc": speaker["speaker_attack_acc"], "mia_auc": mia["mia_auc"]}


def plot(rows: list[dict[str, str]], target: Path) -> None:
    """Utility (acc2) against epsilon (RDP) and against the speaker attack's accuracy, one series per unit
    and adv-lambda. Runs without DP have no finite epsilon: dashed lines in the first panel."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    series: dict[tuple[str, float], list[dict[str, float]]] = {}
    for row in rows:
        values = {key: _number(row[key]) for key in COLUMNS if key != "dp_unit"}
        series.setdefault((row["dp_unit"], values["adv_lambda"]), []).append(values)
    any_finite = False
    for number, ((unit, adv), points) in enumerate(sorted(series.items())):
        points.sort(key=lambda p: p["noise_multiplier"])
        style = {"color": plt.cm.tab10(number % 10), "label": f"{unit}, adv-lambda={adv:g}"}
        finite = [p for p in points if np.isfinite(p["epsilon_rdp"])]
        any_finite = any_finite or bool(finite)
        if finite:
            left.plot([p["epsilon_rdp"] for p in finite], [p["acc2"] for p in finite], "o-", **style)
            for p in finite:
                left.annotate(f"σ={p['noise_multiplier']:g}", (p["epsilon_rdp"], p["acc2"]), fontsize=7,
                              textcoords="offset points", xytext=(3, 3))
        else:
            left.axhline(points[0]["acc2"], linestyle="--", **{**style, "label": f"{style['label']} (no DP)"})
        right.plot([p["speaker_attack_acc"] for p in points], [p["acc2"] for p in points], "o", **style)
    if any_finite:
        left.set_xscale("log")
    left.set_xlabel("epsilon (RDP, at dp-delta; lower = more private)")
    right.set_xlabel("speaker-attack accuracy on G(t, 0) (lower = more private)")
    for ax in (left, right):
        ax.set_ylabel("test acc2")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle("HyDiscGAN privacy-utility sweep")
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
