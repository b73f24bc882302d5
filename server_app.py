"""Flower ServerApp of HyDiscGAN (entry point named in pyproject.toml)."""

from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from hydiscgan_fl.affect_server_run import AffectServerRun
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.models.registry import generator_heads
from hydiscgan_fl.server_run import ServerRun
from strategies import HyDiscGANStrategy
from strategies.hydiscgan import RoundEndHook, ServerStage
from strategies.aggregation import component_rules
from strategies.bookkeeping import RoundSummary
from strategies.dp import speaker_level_dp
from strategies.secure_aggregation import secure_aggregation

app = ServerApp()


def round_recorder(server: ServerRun) -> RoundEndHook:
    """After every round: evaluate on validation and test and write the round's rows (metrics.csv,
    clients.csv), then save the server's state (state.pt) for resume."""

    def record(summary: RoundSummary, arrays: ArrayRecord, strategy_state: dict) -> None:
        state = arrays.to_torch_state_dict()
        metrics = server.record_round(summary.as_row(), summary.clients, state, summary.started_at)
        log(INFO, "round %d (%s) recorded: %s;", summary.server_round, summary.stage,
            ", ".join(f"{key}={value:.4f}" for key, value in metrics.items()))  # test metrics, then valid_*
        server.save_state(summary.server_round, state, strategy_state)

    return record


def server_msa_stage(server: ServerRun) -> ServerStage:
    """msa-site "server": stage 2 rounds train on the server's own text and labels (ServerRun.train_msa)."""

    def train(server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, dict[str, float]]:
        state, losses = server.train_msa(arrays.to_torch_state_dict(), server_round)
        return ArrayRecord(state), losses

    return train


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = HyDiscGANConfig.from_run_config(context.run_config)
    server = (AffectServerRun if cfg.task == "affect" else ServerRun)(cfg, run_name=f"-run{context.run_id}")
    strategy = HyDiscGANStrategy(
        rounds_align=cfg.rounds_align,
        train_config={"local-epochs": cfg.local_epochs},
        aggregation=component_rules(cfg),
        fraction_train=cfg.fraction_train,
        min_train_replies=cfg.min_train_replies,
        method=cfg.method,
        known_ids=server.train_ids,
        seed=cfg.seed,
        client_state=server.lineage,
        dp=speaker_level_dp(cfg),
        dp_unit=cfg.dp_unit,
        max_examples_ratio=cfg.max_examples_ratio,
        msa_site=cfg.msa_site,
        server_stage=server_msa_stage(server) if cfg.msa_site == "server" else None,
        transport_dtype=cfg.transport_dtype,
        secure_aggregation=secure_aggregation(cfg),
        on_round_end=round_recorder(server),
        task=cfg.task,
        generator_heads=generator_heads(cfg),
    )
    if server.resumed:
        strategy.load_state_dict(server.resumed["strategy"])
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(server.initial_state()),
        num_rounds=server.last_round - strategy.round_offset,
        timeout=cfg.round_timeout_s,
        train_config=ConfigRecord(),
    )
    if server.last_round < cfg.total_rounds:
        print(f"stopped after round {server.last_round} (stop-after-round); continue it with "
              f"--run-config 'resume-from=\"{server.run_dir.path}\"'")
        return
    num_clients = max((r.sent for r in strategy.rounds), default=0)
    summary = server.finish(result.arrays.to_torch_state_dict(), num_clients, strategy.privacy)
    inputs = ("AU windows of held-out participants" if cfg.task == "affect" else
              "real audio/visual inputs" if cfg.method == "fedavg-multimodal" else "text-only inputs")
    shown = ("acc2", "f1", "mae", "corr", "ccc_valence", "ccc_arousal", "ccc_mean")
    if "selected_round" in summary:
        print(f"test metrics at round {summary['selected_round']}, the best on validation by "
              f"{summary['selection_metric']} ({inputs}): " + ", ".join(f"{k}={summary[k]:.4f}" for k in shown if k in summary))
    print(f"test metrics at the last round {summary['last_round']}: "
          + ", ".join(f"{k}={summary['last_' + k]:.4f}" for k in shown if "last_" + k in summary))
    if "text_only_selected_epoch" in summary:
        print(f"text-only baseline (epoch {summary['text_only_selected_epoch']}, selected on validation): "
              + ", ".join(f"{k}={summary['text_only_' + k]:.4f}" for k in shown if "text_only_" + k in summary))
    print(f"run directory: {server.run_dir.path}")
