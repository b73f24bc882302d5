"""What leaves a client: only G (stage 1) or G and M (stage 2), as parameters, plus scalar metrics.

The handlers run on the real MOSI features; the reply is inspected array by array.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clients import handlers
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.models import build_shared_models
from strategies import HyDiscGANStrategy
from tests.grids import StaticGrid

NUM_PARTITIONS = 5


def mosi_context(cfg: HyDiscGANConfig, partition_id: int) -> Context:
    return Context(run_id=1, node_id=100 + partition_id, node_config={"partition-id": partition_id,
                   "num-partitions": NUM_PARTITIONS}, state=RecordDict(), run_config=cfg.to_run_config())


@pytest.mark.parametrize("server_round", [1, 2])
def test_reply_holds_only_shared_parameters_and_scalars(task_identity, server_round):
    cfg = HyDiscGANConfig(local_epochs=1)
    dims = cfg.load_dataset().dims
    shared = build_shared_models(dims, cfg, cfg.seed)
    strategy = HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0)
    arrays = ArrayRecord(shared.state_dict())
    context = mosi_context(cfg, partition_id=2)
    if server_round == 2:  # stage 2 needs the client's stage-1 state, as in a real run
        handlers.train(next(iter(strategy.configure_train(1, arrays, ConfigRecord(), StaticGrid([102])))), context)
    message = next(iter(strategy.configure_train(server_round, arrays, ConfigRecord(), StaticGrid([102]))))
    reply = handlers.train(message, context)

    content = reply.content
    assert set(content.array_records) == {"arrays"} and not content.config_records
    sent, returned = message.content["arrays"], content["arrays"]
    expected_prefixes = ("generator.",) if server_round == 1 else ("generator.", "msa.")
    assert set(returned) == set(sent)
    assert all(key.startswith(expected_prefixes) for key in returned)
    parameter_shapes = {key: tuple(value.shape) for key, value in shared.state_dict().items()}
    num_utterances = int(content["metrics"]["num-examples"])
    assert num_utterances not in {d for shape in parameter_shapes.values() for d in shape}  # so the check bites
    for key in returned:
        shape = tuple(returned[key].shape)
        assert shape == parameter_shapes[key], key
        assert num_utterances not in shape, f"{key} has an utterance dimension"
    assert not any(k.startswith(("encoder_", "disc_")) or ".encoder_" in k or ".disc_" in k for k in returned)
    for key, value in content["metrics"].items():
        assert isinstance(value, (int, float)), f"metric {key} is not a scalar"
    # The private models stayed on the client.
    private_keys = set(context.state["private-models"].keys())
    assert private_keys and not private_keys & set(returned)
    assert any(k.startswith("disc_audio.") for k in private_keys)
    assert not np.allclose(returned["generator.audio_head.weight"].numpy(), sent["generator.audio_head.weight"].numpy())
