"""The privacy spent by one DP mechanism, tracked by the RDP, PRV and Wasserstein accountants at once.

Both DP units of the project release Gaussian-noised sums of clipped vectors:

* ``speaker`` (server side, DP-FedAvg): per round, the sum of the clipped client updates plus
  N(0, (sigma C)^2), divided by the number of updates;
* ``utterance`` (client side, DP-SGD with Opacus): per local step, the sum of the clipped per-utterance
  gradients plus N(0, (sigma C)^2), divided by the expected batch size.

`PrivacyLedger.step` records one such release with its sampling rate. ``epsilon_rdp`` and
``epsilon_prv`` are (epsilon, delta)-DP guarantees for the recorded Poisson-subsampled Gaussian steps
(Opacus's arithmetic). ``wdp_loss`` is the Wasserstein accountant's loss W: an EMPIRICAL,
data-dependent figure computed from the observed clipped vectors, NOT a DP guarantee, and it grows
with the noise (see ``accountants.wdp``).

The Wasserstein figure needs distances between neighbouring outputs. The noise is added to the sum,
so the neighbours are the leave-one-out *sums* of the clipped rows: the leave-one-out means of
`leave_one_out_gradient_distances` times (rows - 1), with ``clip_norm`` C setting the noise std sigma C
on that same scale.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

from hydiscgan_fl.privacy.accountants import create_accountant, leave_one_out_gradient_distances

#: Columns of metrics.csv / privacy.csv, cumulative over the run.
PRIVACY_COLUMNS = ("epsilon_rdp", "epsilon_prv", "wdp_loss")
#: The same figures as kebab-case metric keys, as clients report them to the server.
PRIVACY_METRIC_KEYS = tuple(column.replace("_", "-") for column in PRIVACY_COLUMNS)
#: How many leave-one-out neighbours the Wasserstein accountant compares per step (the WDP recipe's 8).
WDP_NEIGHBOURS = 8


def leave_one_out_sum_distances(clipped_rows: np.ndarray, num_neighbours: int = WDP_NEIGHBOURS) -> np.ndarray:
    """Distances between the leave-one-out sums of the clipped rows (one row per record).

    With one row, its neighbour is the empty sum (distance = the row's norm); with none, 0.
    """
    rows = np.asarray(clipped_rows, dtype=np.float64)
    if rows.shape[0] == 0:
        return np.zeros(1)
    rows = rows.reshape(rows.shape[0], -1)
    if rows.shape[0] == 1:
        return np.linalg.norm(rows, axis=1)
    k = min(num_neighbours, rows.shape[0])
    return leave_one_out_gradient_distances(rows, k) * (rows.shape[0] - 1)


class PrivacyLedger:
    """One mechanism's privacy spent, under the ``rdp``, ``prv`` and ``wdp`` accountants."""

    def __init__(self, delta: float):
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = float(delta)
        self.accountants = {name: create_accountant(name) for name in ("rdp", "prv", "wdp")}
        self.wdp_complete = True  # False once a step came without its clipped rows (secure aggregation)

    def step(self, *, noise_multiplier: float, sample_rate: float, clip_norm: float,
             clipped_rows: np.ndarray | None) -> None:
        """Record one release: N(0, (noise_multiplier * clip_norm)^2) added to the sum of `clipped_rows`
        (each of norm <= clip_norm), the records sampled with probability `sample_rate`. `clipped_rows`
        None: the rows were not seen (secure aggregation); the Wasserstein figure, which needs them, is
        then unknown for the rest of the run (NaN)."""
        if clipped_rows is None:
            self.wdp_complete = False
        distances = leave_one_out_sum_distances(clipped_rows if clipped_rows is not None else np.zeros((0, 1)))
        for name, accountant in self.accountants.items():
            if name == "wdp" and clipped_rows is None:
                continue
            accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, clip_norm=clip_norm,
                            gradient_distances=distances)

    def __len__(self) -> int:
        return len(self.accountants["rdp"])

    def report(self) -> dict[str, float]:
        """Cumulative figures at this ledger's delta, keyed by PRIVACY_COLUMNS (0 before any step)."""
        with warnings.catch_warnings(), np.errstate(divide="ignore"):
            # Opacus's PRV code takes log(1 - q), which is -inf (and harmless) at sample rate 1.
            warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
            return {
                "epsilon_rdp": float(self.accountants["rdp"].get_epsilon(self.delta)),
                "epsilon_prv": float(self.accountants["prv"].get_epsilon(self.delta)),
                "wdp_loss": float(self.accountants["wdp"].get_loss()) if self.wdp_complete else float("nan"),
            }

    def to_json(self) -> str:
        return json.dumps({"delta": self.delta, "wdp-complete": self.wdp_complete,
                           **{n: a.state_dict() for n, a in self.accountants.items()}})

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        state = json.loads(text)
        ledger = cls(state["delta"])
        ledger.wdp_complete = bool(state.get("wdp-complete", True))
        for name, accountant in ledger.accountants.items():
            accountant.load_state_dict(state[name])
        return ledger
