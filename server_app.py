"""Flower ServerApp of HyDiscGAN (entry point named in pyproject.toml)."""

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.server_run import ServerRun
from strategies import HyDiscGANStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = HyDiscGANConfig.from_run_config(context.run_config)
    server = ServerRun(cfg, run_name=f"-run{context.run_id}")
    strategy = HyDiscGANStrategy(
        rounds_align=cfg.rounds_align,
        train_config={"local-epochs": cfg.local_epochs},
        fraction_train=cfg.fraction_train,
        min_train_replies=cfg.min_train_replies,
    )

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        summary = strategy.rounds[-1]
        metrics = server.record_round(summary.as_row(), summary.clients, arrays.to_torch_state_dict(),
                                      summary.started_at)
        return MetricRecord({key: float(value) for key, value in metrics.items()})

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(server.initial_state()),
        num_rounds=cfg.total_rounds,
        timeout=cfg.round_timeout_s,
        train_config=ConfigRecord(),
        evaluate_fn=evaluate,
    )
    num_clients = max((r.sent for r in strategy.rounds), default=0)
    summary = server.finish(result.arrays.to_torch_state_dict(), num_clients, {})
    print("final test metrics (text-only inputs): "
          + ", ".join(f"{k}={summary[k]:.4f}" for k in summary if k in ("acc2", "f1", "mae", "corr")))
    print("text-only baseline: "
          + ", ".join(f"{k}={summary[k]:.4f}" for k in summary if k in ("text_only_acc2", "text_only_f1")))
    print(f"run directory: {server.run_dir.path}")
