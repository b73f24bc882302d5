"""The server side of the affect task (task "affect", docs/affect.md), without Flower.

The federated model is the recurrent affect model, held as the shared component "msa" (M). Training
participants' windows stay on their clients; the server holds the windows of the held-out validation and
test participants only (whole participants, hydiscgan_fl.data.affect.participant_splits), evaluates M on
them after every round (CCC per dimension) and reports the test metrics of the round best on validation
(mean CCC). Recording, checkpoint and resume are ServerRun's. There is no text-only baseline: the affect
task's reference is the central model of `hydiscgan bench --task affect`.
"""

from __future__ import annotations

from typing import Any

import torch

from hydiscgan_fl.models import MSA, build_affect_model
from hydiscgan_fl.server_run import ServerRun
from hydiscgan_fl.training.affect import AffectTensors, evaluate_affect


class AffectServerRun(ServerRun):
    components = (MSA,)

    def _load_data(self) -> None:
        windows = self.cfg.load_affect()
        self.input_dim = windows.input_dim
        self.dims = {"au": windows.input_dim}
        self.label_kind = "affect"
        self.train_ids: list[str] = []  # the server holds no training window: nothing for clients to check
        self.valid = AffectTensors.of(windows.split_subset("valid"), self.device)
        self.test = AffectTensors.of(windows.split_subset("test"), self.device)
        self.param_counts = {"affect_model": sum(p.numel() for p in self._model().parameters())}
        print(f"affect: {len(windows.participant_list())} participants, {len(windows)} windows of "
              f"{self.cfg.affect_window} frames at {windows.fps:g} fps; held-out windows valid {len(self.valid)}, "
              f"test {len(self.test)}; affect-model={self.cfg.affect_model} "
              f"({self.param_counts['affect_model']:,} parameters)")

    def _model(self) -> torch.nn.Module:
        torch.manual_seed(self.cfg.seed)  # the initial weights depend on the seed only
        return build_affect_model(self.input_dim, self.cfg).to(self.device)

    def initial_state(self) -> dict[str, torch.Tensor]:
        if self.resumed:
            return dict(self.resumed["arrays"])
        return {f"{MSA}.{key}": value for key, value in self._model().state_dict().items()}

    def evaluate(self, state: dict[str, torch.Tensor], split: str = "test") -> dict[str, float]:
        """CCC (valence, arousal, mean) and MSE of M on the held-out participants of `split`."""
        model = self._model()
        model.load_state_dict({key.removeprefix(f"{MSA}."): value for key, value in state.items()})
        return evaluate_affect(model, {"valid": self.valid, "test": self.test}[split])

    def baseline_summary(self) -> dict[str, Any]:
        return {}
