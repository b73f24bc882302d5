"""The one configuration model of a run, built from Flower's run config and validated at start.

Run-config keys are kebab-case (``rounds-align``); fields are snake_case. Every default here is
mirrored in ``pyproject.toml`` under ``[tool.flwr.app.config]`` (a test keeps the two equal).
Choices the HyDiscGAN paper leaves open (sizes, loss weights, epochs) are fields with documented
defaults so that they can be changed without touching code.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from hydiscgan_fl.data import MultimodalDataset, load_dataset
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_PARTITION_RE = re.compile(r"^(speaker|iid|dirichlet:(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)$")
# What the federation trains: HyDiscGAN (text-only at test), or the privacy-violating baseline that
# federates M(t, a, v) with FedAvg and needs real audio/visual at test time (no alignment stage).
METHODS = ("hydiscgan", "fedavg-multimodal")
LOCAL_RULE = "local"
# Stage 2 on the server (msa-site "server"): M and G trained on the server's own text and labels.
SERVER_STAGE = "server-msa"
# Rules whose aggregate is a function of the clients' example-weighted mean update alone: the only ones
# secure aggregation can run, since the server sees that sum and no individual update (median, trimmed
# mean and Krum need every update; a user's rule 'pkg.module:Class' cannot be checked).
SECURE_AGGREGATION_RULES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad")
_RULE_RE = re.compile(r"^([a-z][a-z0-9-]*|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")


class ConfigError(ValueError):
    """A run-config key or value is wrong; the message names it."""


class HyDiscGANConfig(BaseModel):
    """Every setting of a HyDiscGAN run (run-config key in brackets)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              alias_generator=lambda name: name.replace("_", "-"))

    # What to train on and where to write [dataset, data-dir, output-dir, partition, seed].
    dataset: str = "mosi-bclstm"
    data_dir: str = ""  # "" = the data/ folder of the project checkout
    output_dir: str = ""  # "" = the runs/ folder of the project checkout
    partition: str = "speaker"
    seed: int = 0
    method: str = "hydiscgan"  # one of METHODS

    # Federated schedule [rounds-align, rounds-msa, local-epochs, batch-size].
    rounds_align: int = Field(12, ge=0)
    rounds_msa: int = Field(12, ge=1)
    local_epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=2)
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    min_train_replies: int = Field(1, ge=1)
    round_timeout_s: float = Field(600.0, gt=0.0)

    # Model sizes.
    noise_dim: int = Field(16, ge=0)
    hidden_dim: int = Field(128, ge=8)
    embed_dim: int = Field(64, ge=4)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    # Optimisation (Adam) and loss weights.
    lr_generator: float = Field(1e-3, gt=0.0)
    lr_discriminator: float = Field(1e-3, gt=0.0)
    lr_msa: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    lambda_adv: float = Field(0.02, ge=0.0)
    lambda_contrastive: float = Field(0.2, ge=0.0)
    lambda_recon: float = Field(1.0, ge=0.0)
    lambda_adv_msa: float = Field(0.05, ge=0.0)
    temperature: float = Field(0.2, gt=0.0)

    # Aggregation (docs/aggregation.md) [aggregation, aggregation-generator, aggregation-msa, proximal-mu,
    # trimmed-beta, krum-malicious]: a rule name, or a user's Strategy class as 'package.module:Class';
    # per component "" = the `aggregation` rule, "local" = personalised (never sent back or aggregated).
    aggregation: str = "fedavg"
    aggregation_generator: str = ""
    aggregation_msa: str = ""
    proximal_mu: float = Field(0.01, ge=0.0)
    trimmed_beta: float = Field(0.2, ge=0.0, lt=0.5)
    krum_malicious: int = Field(0, ge=0)

    # Robustness experiments [fault-rate, byzantine-clients, byzantine-mode]: injected client failures
    # (probability per client per round; half crash, half time out) and poisoned replies of the clients
    # with partition-id < byzantine-clients ("scale": -10 x the update; "random": random weights;
    # "inflate": -10 x the update and a claimed num-examples of 10^9).
    fault_rate: float = Field(0.0, ge=0.0, le=1.0)
    byzantine_clients: int = Field(0, ge=0)
    byzantine_mode: Literal["scale", "random", "inflate"] = "scale"

    # Checkpoint and resume [resume-from, stop-after-round]: continue the run saved in an absolute run
    # directory from its last completed round; stop (resumably) after this round (0 = run to the end).
    resume_from: str = ""
    stop_after_round: int = Field(0, ge=0)

    # Privacy (docs/privacy.md) [dp-unit, dp-clip-norm, dp-noise-multiplier, dp-delta, adv-lambda]:
    # "speaker" = DP-FedAvg on the server (a client's whole update of G and M clipped, noise on the
    # aggregate); "utterance" = DP-SGD (Opacus) on every client step that reads audio/visual.
    # adv-lambda > 0 adds a client-private speaker adversary behind a gradient-reversal layer.
    dp_unit: Literal["none", "speaker", "utterance"] = "none"
    dp_clip_norm: float = Field(1.0, gt=0.0)
    dp_noise_multiplier: float = Field(1.0, gt=0.0)
    dp_delta: float = Field(1e-5, gt=0.0, lt=1.0)
    adv_lambda: float = Field(0.0, ge=0.0)

    # Weight cap [max-examples-ratio] (docs/aggregation.md): in example-weighted rules a client counts
    # for at most this multiple of the round's median claimed num-examples (clients' claims are unverified).
    max_examples_ratio: float = Field(3.0, ge=1.0)
    # Model selection [valid-fraction, valid-from]: round(valid-fraction x training speakers) speakers of the
    # split valid-from (seeded by `seed`) are validation speakers, on no client; the reported round is the
    # best on them. "auto": the test speakers for mosi-bclstm (its training features are fitted to the
    # training labels, hydiscgan_fl.data.VALID_FROM_TEST), the training speakers otherwise. Data with its own
    # "valid" split (MMSA's) keeps it.
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    valid_from: Literal["auto", "train", "test"] = "auto"
    # Models (hydiscgan_fl.models.registry) [msa-model, generator-model]: a registry name, or a user's entry as
    # 'package.module:NAME'. "context-gru" reads whole videos: batches of videos; iid/dirichlet partitions
    # then assign whole videos to clients.
    msa_model: str = "mlp"
    generator_model: str = "mlp"
    # Simulated misalignment [misalign-rate, misalign-shift] (hydiscgan_fl.data.misalign): per sequence of
    # audio/visual steps (per utterance; per video of utterance vectors), drop each step with this
    # probability and roll the rest by up to this many steps, seeded by `seed`, at train and test time.
    misalign_rate: float = Field(0.0, ge=0.0, lt=1.0)
    misalign_shift: int = Field(0, ge=0)
    # Client cost [msa-site, transport-dtype]: "server" runs stage 2 on the server's own text and labels
    # (stage "server-msa", no client work; clients only align); "float16" sends G and M in half precision
    # both ways (cast back to float32 before aggregation and training).
    msa_site: Literal["clients", "server"] = "clients"
    transport_dtype: Literal["float32", "float16"] = "float32"
    # Secure aggregation [secure-aggregation, secagg-shares, secagg-threshold, secagg-clipping-range,
    # secagg-quantization-range] (docs/secure-aggregation.md): "secaggplus" = the server receives masked
    # updates and learns only their sum (SecAgg+). Each client's secrets are shared among `secagg-shares` of the
    # round's clients (1.0 = all: SecAgg), `secagg-threshold` of those shares reconstruct one; each coordinate of a
    # client's weighted update is clipped to +-`secagg-clipping-range` and rounded onto `secagg-quantization-range`
    # integer levels (the aggregate's error per coordinate is below n x 2 x range / levels x w_max / sum w).
    secure_aggregation: Literal["none", "secaggplus"] = "none"
    secagg_shares: float = Field(1.0, gt=0.0, le=1.0)
    secagg_threshold: float = Field(0.6, gt=0.5, le=1.0)
    secagg_clipping_range: float = Field(1.0, gt=0.0)
    secagg_quantization_range: int = Field(2**22, ge=2, lt=2**32)

    @field_validator("dataset")
    @classmethod
    def _dataset_form(cls, value: str) -> str:
        if value in ("mosi-bclstm", "synthetic", "synthetic-seq") or re.fullmatch(r"synthetic:\d+", value):
            return value
        if value.startswith("mmsa:"):
            if not Path(value[5:]).is_absolute():
                raise ValueError(f"mmsa dataset needs an absolute path to a .pkl, got {value!r}")
            return value
        if value.startswith("partitions:"):  # the server reads <dir>/server.npz (see `hydiscgan partition`)
            if not Path(value[11:]).is_absolute():
                raise ValueError(f"partitions dataset needs an absolute folder holding server.npz, got {value!r}")
            return value
        raise ValueError(f"unknown dataset {value!r}; use 'mosi-bclstm', 'synthetic', 'synthetic:<speakers>', 'synthetic-seq', "
                         "'mmsa:/abs/path.pkl' "
                         "or 'partitions:/abs/dir'")

    @field_validator("partition")
    @classmethod
    def _partition_form(cls, value: str) -> str:
        if not _PARTITION_RE.match(value) or value == "dirichlet:0":
            raise ValueError(f"unknown partition {value!r}; use 'speaker', 'iid' or 'dirichlet:<alpha > 0>'")
        return value

    @field_validator("data_dir", "output_dir", "resume_from")
    @classmethod
    def _absolute_or_empty(cls, value: str) -> str:
        # The app runs from a copy under $FLWR_HOME, so a relative path would point nowhere useful.
        if value and not Path(value).is_absolute():
            raise ValueError(f"must be an absolute path (or empty for the default), got {value!r}")
        return value

    @field_validator("aggregation", "aggregation_generator", "aggregation_msa")
    @classmethod
    def _rule_form(cls, value: str, info) -> str:  # noqa: ANN001 - pydantic's ValidationInfo
        # The rule itself is resolved (and an unknown name reported) by strategies.aggregation.make_rule.
        per_component = info.field_name != "aggregation"
        if value in ("", LOCAL_RULE):
            if per_component:
                return value
            raise ValueError(f"{value!r} is only allowed per component (aggregation-generator, aggregation-msa)")
        if _RULE_RE.match(value):
            return value
        raise ValueError(f"{value!r} is neither a rule name such as 'fedavg' nor 'package.module:Class'")

    @field_validator("msa_model", "generator_model")
    @classmethod
    def _model_form(cls, value: str) -> str:
        # The entry itself is resolved (and an unknown name reported) by hydiscgan_fl.models.registry.
        if _RULE_RE.match(value):
            return value
        raise ValueError(f"{value!r} is neither a model name such as 'mlp' nor 'package.module:NAME'")

    @field_validator("method")
    @classmethod
    def _method_known(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; use one of {list(METHODS)}")
        return value

    @model_validator(mode="after")
    def _dp_unit_fits_method(self) -> HyDiscGANConfig:
        if self.dp_unit == "utterance" and self.method == "fedavg-multimodal":
            raise ValueError("dp-unit 'utterance' runs HyDiscGAN's alignment steps under DP-SGD; the "
                             "fedavg-multimodal baseline has none (use dp-unit 'speaker')")
        if self.msa_site == "server" and self.method == "fedavg-multimodal":
            raise ValueError("msa-site 'server' moves HyDiscGAN's stage 2 to the server; the fedavg-multimodal "
                             "baseline trains M on the clients' real audio/visual (use msa-site 'clients')")
        if self.secure_aggregation != "none":
            self._check_secure_aggregation()
        if self.msa_site == "server" and self.local_components:
            raise ValueError("msa-site 'server' trains G and M on the server; a personalised component "
                             f"({', '.join(self.local_components)}) would never be trained by it")
        return self

    def _check_secure_aggregation(self) -> None:
        """Secure aggregation hides each update: refuse what needs one (docs/secure-aggregation.md)."""
        for field in ("aggregation", "aggregation_generator", "aggregation_msa"):
            rule = getattr(self, field)
            if rule in ("", LOCAL_RULE) or rule in SECURE_AGGREGATION_RULES:
                continue
            why = ("a user's rule cannot be checked to need only the sum" if ":" in rule
                   else "it needs every client's individual update, which the server no longer sees")
            raise ValueError(f"secure-aggregation 'secaggplus' cannot run {field.replace('_', '-')} {rule!r}: {why}; "
                             f"use one of {list(SECURE_AGGREGATION_RULES)}")
        if self.dp_unit == "speaker" and self.secagg_clipping_range < self.dp_clip_norm:
            # Each client clips its update to L2 norm dp-clip-norm before masking: then no coordinate exceeds it.
            raise ValueError(f"secure-aggregation with dp-unit 'speaker' needs secagg-clipping-range >= dp-clip-norm "
                             f"({self.secagg_clipping_range} < {self.dp_clip_norm}): a clipped update's coordinates "
                             "reach dp-clip-norm")

    @property
    def total_rounds(self) -> int:
        """fedavg-multimodal has no alignment stage: it runs rounds-msa rounds and ignores rounds-align."""
        return self.rounds_msa if self.method == "fedavg-multimodal" else self.rounds_align + self.rounds_msa

    @property
    def local_components(self) -> tuple[str, ...]:
        """Shared components that stay personalised on the clients (aggregation-<component> = "local")."""
        return tuple(name for name, rule in (("generator", self.aggregation_generator), ("msa", self.aggregation_msa))
                     if rule == LOCAL_RULE)

    def stage_of_round(self, server_round: int) -> str:
        return stage_of_round(server_round, self.rounds_align, self.method, self.msa_site)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> HyDiscGANConfig:
        """Validate Flower's run config; a wrong key or value raises ConfigError naming it."""
        known = {name.replace("_", "-") for name in cls.model_fields}
        unknown = sorted(set(run_config) - known)
        if unknown:
            raise ConfigError(f"unknown run-config key(s) {unknown}; known keys: {sorted(known)}")
        try:
            return cls.model_validate(dict(run_config))
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in err.errors()
            )
            raise ConfigError(f"invalid run config: {problems}") from None

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case run-config form (what `--run-config` and pyproject.toml use)."""
        return self.model_dump(by_alias=True)

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else project_root() / "data"

    def load_dataset(self, text_only: bool = False, cached: bool = True) -> MultimodalDataset:
        """The run's dataset, validation speakers carved out (valid-fraction, valid-from);
        ``text_only``: the server's view, read without touching audio/video (hydiscgan_fl.data).
        data-dir is resolved only for the spec that reads it (mosi-bclstm), so a deployed server
        reading `partitions:<dir>` needs no project checkout."""
        data_dir = self.resolved_data_dir() if self.dataset == "mosi-bclstm" else None
        return load_dataset(self.dataset, data_dir, self.seed, valid_fraction=self.valid_fraction,
                            valid_from=self.valid_from, text_only=text_only, cached=cached)

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else project_root() / "runs"


def stage_of_round(server_round: int, rounds_align: int, method: str, msa_site: str = "clients") -> str:
    """Rounds 1..rounds-align align the modalities; the rest train the MSA model, on the clients
    ("msa") or, with msa-site "server", on the server (SERVER_STAGE).

    fedavg-multimodal trains M(t, a, v) on real audio/visual in every round (stage "multimodal")."""
    if method == "fedavg-multimodal":
        return "multimodal"
    if server_round <= rounds_align:
        return "align"
    return SERVER_STAGE if msa_site == "server" else "msa"


def project_root() -> Path:
    """The project checkout: where this file lives, or where the package was installed from.

    `flwr run` executes a copy of the app under $FLWR_HOME/apps that holds only source files, so the
    copy falls back to the checkout recorded by pip at install time (PEP 610 direct_url.json).
    """
    here = Path(__file__).resolve().parents[1]
    if _is_checkout(here):
        return here
    try:
        direct_url = json.loads(metadata.distribution("hydiscgan-fl").read_text("direct_url.json") or "{}")
    except metadata.PackageNotFoundError:
        direct_url = {}
    url = direct_url.get("url", "")
    if url.startswith("file://"):
        root = Path(unquote(urlparse(url).path))
        if _is_checkout(root):
            return root
    raise ConfigError(
        "cannot locate the project checkout; install it with `pip install -e .` or set the run-config "
        "keys data-dir and output-dir to absolute paths"
    )


def _is_checkout(path: Path) -> bool:
    # The app copy under $FLWR_HOME also has data/ (its .md files travel), but not the CSVs.
    return (path / "data" / "mosi-bclstm" / "transcripts.csv").is_file()
