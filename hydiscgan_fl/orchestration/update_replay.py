"""What a curious server sees of each client: one alignment round replayed through the real ClientApp.

After a federated run, the attacks of hydiscgan_fl.privacy.attacks need the individual replies that the
server receives. The strategy aggregates them and keeps none, so this module asks every client for one
more alignment round, exactly as the server can at any time:

- the global state is the run's last one (state.pt: G and M after the final round);
- each client's `context.state` (its discriminators, speaker adversary, utterance-level DP ledger) is
  the one it saved after that round (every client saves it when the server names a `client-state`,
  which HyDiscGAN's ServerApp always does), read without writing anything back;
- the message is built by HyDiscGANStrategy.configure_train as in a run, the reply by the real
  `clients.handlers.train`, with the run's config: under utterance-level DP the reply is the
  DP-SGD-noised update; under speaker-level DP it is the client's raw update, as the server receives
  it (DP-FedAvg clips and noises only the aggregate, so it protects the released model, not this);
  under secure aggregation the server sees each client's masked update only (a uint32 vector mod 2^32):
  the replay runs SecAgg+'s key stages through the real ClientApp (`ClientAppGrid`) and gives the attack
  the server's reading of the masked vector as an update of G.

Nothing of the replay is sent anywhere or saved; the ground truth (which utterances each client holds,
their real features) is read here by the evaluator, never given to the attack.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client_app import app as client_app
from clients import handlers
from clients.local_data import client_dataset
from clients.persistence import client_state_dir, restore_client_state
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.models import build_shared_models
from hydiscgan_fl.privacy.attacks import update_attacks
from hydiscgan_fl.run_files import load_state
from hydiscgan_fl.training import pick_device, tensor_view, to_tensors
from hydiscgan_fl.training.central import generated_features, real_features
from secagg.protocol import MASKED, RECORD, dequantised_sum
from strategies import HyDiscGANStrategy
from strategies.aggregation import component_rules
from strategies.secure_aggregation import secure_aggregation

UPDATE_ATTACK_COLUMNS = ("update_membership_auc_mean", "update_membership_auc_max", "update_reconstruction_gain")
FIRST_NODE_ID = 1001  # node ids of the replayed clients: FIRST_NODE_ID + partition id


class ListedNodes(Grid):
    """A federation of fixed node ids for `configure_train`, which only lists nodes; nothing is sent."""

    def __init__(self, node_ids: Iterable[int]):
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def set_run(self, run) -> None:  # noqa: ANN001
        raise NotImplementedError("nothing is sent")

    @property
    def run(self):  # noqa: ANN201
        raise NotImplementedError("nothing is sent")

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001, ANN201
        raise NotImplementedError("nothing is sent")

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        raise NotImplementedError("nothing is sent")

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        raise NotImplementedError("nothing is sent")

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        raise NotImplementedError("nothing is sent")


class ClientAppGrid(ListedNodes):
    """In-process clients: the project's ClientApp (`client`) answers each message with its node's Context,
    routed by message type as Flower routes it, one node after the other. As in Flower, a ClientApp that
    raises becomes an error reply, and a reply that took longer than `timeout` is dropped. The replay's
    secure-aggregation round trips use it, and examples/in_process.py runs whole runs over it."""

    def __init__(self, contexts: dict[int, Context], client: Callable[[Message, Context], Message] | None = None):
        super().__init__(contexts)
        self.contexts = contexts
        self.client = client or client_app

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            started = time.monotonic()
            try:
                reply = self.client(message, self.contexts[message.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - Flower turns any ClientApp exception into an error reply
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                                reply_to=message)
            if timeout is None or time.monotonic() - started <= timeout:
                replies.append(reply)
        return replies


def masked_reading(sent: ArrayRecord, masked: ArrayRecord, protocol: ConfigRecord) -> dict[str, torch.Tensor]:
    """What a curious server can make of one masked update: the uint32 vector read as the client's quantised
    scaled update (dequantised, rescaled by max-weight / weight), added to what it sent. Without the other
    clients' masks this is uniform noise over +-clipping-range x max-weight / weight."""
    keys = sorted(masked)
    values = dequantised_sum([masked[key].numpy() for key in keys], 1, float(protocol["clipping-range"]),
                             int(protocol["quantization-range"]))
    scale = int(protocol["max-weight"]) / int(protocol["weight"])
    return {key: torch.from_numpy((sent[key].numpy().astype(np.float64) + scale * value).astype(np.float32))
            for key, value in zip(keys, values)}


@dataclass(frozen=True)
class ReplayedRound:
    """The arrays the server sent (G) and each client's reply, by partition id."""

    cfg: HyDiscGANConfig
    sent: dict[str, torch.Tensor]
    replies: dict[int, dict[str, torch.Tensor]]


@contextlib.contextmanager
def _replay_process() -> Iterator[None]:
    """Flower builds Messages only under a task identity; the handler sets torch's thread count. Both are
    process-wide: put them back afterwards."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    threads = torch.get_num_threads()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
        torch.set_num_threads(threads)


def replay_alignment_round(run_dir: Path, num_clients: int) -> ReplayedRound:
    """Each of the run's `num_clients` simulated clients answers one more alignment round of the run's
    final global G, from its own saved state, through the real ClientApp handler."""
    state = load_state(run_dir)
    cfg = HyDiscGANConfig.from_run_config(state["config"])
    if cfg.method != "hydiscgan":
        raise ValueError(f"run {run_dir} trains method {cfg.method!r}, which has no generator to attack")
    if "generator" in cfg.local_components:
        raise ValueError(f"run {run_dir} keeps G on the clients (aggregation-generator=\"local\"): the server "
                         "never receives an update of G to attack")
    replay = int(state["round"]) + 1
    secure = secure_aggregation(cfg)
    strategy = HyDiscGANStrategy(rounds_align=replay, train_config={"local-epochs": cfg.local_epochs},
                                 aggregation=component_rules(cfg), node_settle_s=0.0, secure_aggregation=secure)
    node_ids = [FIRST_NODE_ID + pid for pid in range(num_clients)]
    global_arrays = ArrayRecord({key: value for key, value in state["arrays"].items()})
    replies: dict[int, dict[str, torch.Tensor]] = {}
    with _replay_process():
        contexts = {nid: _saved_context(cfg, state, nid - FIRST_NODE_ID, num_clients, replay) for nid in node_ids}
        messages = list(strategy.configure_train(replay, global_arrays, ConfigRecord(), ClientAppGrid(contexts)))
        for message in messages:
            pid = message.metadata.dst_node_id - FIRST_NODE_ID
            content = handlers.train(message, contexts[message.metadata.dst_node_id]).content
            replies[pid] = (masked_reading(message.content["arrays"], content[MASKED], message.content[RECORD])
                            if secure is not None else content["arrays"].to_torch_state_dict())
    return ReplayedRound(cfg, messages[0].content["arrays"].to_torch_state_dict(), replies)


def _saved_context(cfg: HyDiscGANConfig, state: dict, pid: int, num_clients: int, replay: int) -> Context:
    """Client `pid`'s Context as it saved it after the run's last round."""
    context = Context(run_id=1, node_id=FIRST_NODE_ID + pid, state=RecordDict(),
                      node_config={"partition-id": pid, "num-partitions": num_clients},
                      run_config=dict(state["config"]))
    folder = client_state_dir(cfg, context, state["lineage"])
    restore_client_state(context, folder, replay)
    if not context.state:
        raise FileNotFoundError(f"client partition-id={pid}: no saved state under {folder}; the replay "
                                "needs the state the client saved in the run")
    return context


def update_attack_row(run_dir: Path, num_clients: int) -> dict[str, float]:
    """The curious server's attacks (hydiscgan_fl.privacy.attacks.update_attacks) on the individual
    updates of G of one replayed alignment round of the run in `run_dir`."""
    round_ = replay_alignment_round(run_dir, num_clients)
    cfg = round_.cfg
    train = cfg.load_dataset().split_subset("train")  # every training text: the server knows them all
    device = pick_device()
    tensors = to_tensors(train, device, tensor_view(cfg))

    def outputs(arrays: dict[str, torch.Tensor]) -> np.ndarray:
        generator = build_shared_models(train.dims, cfg, cfg.seed).generator.to(device)
        generator.load_state_dict({key.removeprefix("generator."): value for key, value in arrays.items()
                                   if key.startswith("generator.")})
        return generated_features(generator, tensors.text)

    pids = sorted(round_.replies)
    members = [np.isin(train.ids, client_dataset(cfg, {"partition-id": pid, "num-partitions": num_clients}).ids)
               for pid in pids]
    return update_attacks(outputs(round_.sent), [outputs(round_.replies[pid]) for pid in pids],
                          real_features(tensors), members)
