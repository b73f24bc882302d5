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

from hydiscgan_fl.data import GENERATED_DATASETS, MultimodalDataset, load_dataset
from hydiscgan_fl.data.affect import AffectWindows, load_affect_dataset
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_PARTITION_RE = re.compile(r"^(speaker|iid|dirichlet:(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)$")
# What the federation trains: HyDiscGAN (text-only at test); the privacy-violating baseline that federates
# M(t, a, v) with FedAvg and needs real audio/visual at test time; or one of two privileged-information
# baselines that use the clients' audio/visual at training time only and federate the text-only model of
# M's family: "distill" (a client-private multimodal teacher distilled into it) and "multitask" (it also
# predicts the client's audio/visual features from text through a client-private head). These three have
# one stage in every round (SINGLE_STAGE), no alignment stage and no generator.
METHODS = ("hydiscgan", "fedavg-multimodal", "distill", "multitask")
SINGLE_STAGE = {"fedavg-multimodal": "multimodal", "distill": "distill", "multitask": "multitask"}
_INFERENCE_RE = re.compile(r"^(z0|(mean-pred|mean-fake):([1-9]\d*))$")
LOCAL_RULE = "local"
# Stage 2 on the server (msa-site "server"): M and G trained on the server's own text and labels.
SERVER_STAGE = "server-msa"
# The affect task's one stage: clients train the recurrent affect model on their own windows every round.
AFFECT_STAGE = "affect"
_AFFECT_DATASET_RE = re.compile(r"^(affect-synthetic(:\d+)?|openface:.+)$")
# Rules whose aggregate is a function of the clients' example-weighted mean update alone: the only ones
# secure aggregation can run, since the server sees that sum and no individual update (median, trimmed
# mean and Krum need every update; a user's rule 'pkg.module:Class' cannot be checked).
SECURE_AGGREGATION_RULES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad")
# Rules whose aggregate is a stateless example-weighted mean: HyDiscGAN's stage 1 with clients missing modalities
# aggregates G part by part with them (strategies.aggregation.generator_parts).
PART_WEIGHTED_RULES = ("fedavg", "fedprox")
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

    # Ablations and inference of HyDiscGAN (docs/ablations.md) [ablation, inference]. A loss term is ablated
    # by its weight 0 (lambda-adv, lambda-contrastive, lambda-recon, lambda-adv-msa: the term is then not
    # computed, and D and E are not trained when no term uses them); stage 1 is skipped by rounds-align 0.
    # inference: how the server predicts from text: "z0" = M(t, G(t, 0)); "mean-pred:K" = the mean of K
    # predictions M(t, G(t, z_k)); "mean-fake:K" = M(t, mean of K fakes G(t, z_k)); z_k ~ N(0, I) seeded by `seed`.
    # ablation: "frozen-generator" keeps G as stage 1 left it (stage 2 trains M only, no frozen-D term);
    # "zero-fakes" feeds M zeros in place of G(t) at training and test time (the same schedule, no fake
    # features: M(t, 0, 0) is a federated text model of M's architecture; G never reaches M).
    ablation: Literal["none", "frozen-generator", "zero-fakes"] = "none"
    inference: str = "z0"
    # Privileged-information baselines [lambda-distill, lambda-multitask]: the weight of the distillation
    # term (student vs the client's multimodal teacher) and of the auxiliary audio/visual prediction loss.
    lambda_distill: float = Field(1.0, ge=0.0)
    lambda_multitask: float = Field(1.0, ge=0.0)

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
    # then assign whole videos to clients. The default is context-gru: on bundled MOSI it beat mlp on the
    # validation speakers, +0.023 Acc-2 [+0.011, +0.034] paired over 5 seeds (docs/benchmark.md).
    msa_model: str = "context-gru"
    generator_model: str = "mlp"
    # Simulated misalignment [misalign-rate, misalign-shift] (hydiscgan_fl.data.misalign): per sequence of
    # audio/visual steps (per utterance; per video of utterance vectors), drop each step with this
    # probability and roll the rest by up to this many steps, seeded by `seed`, at train and test time.
    misalign_rate: float = Field(0.0, ge=0.0, lt=1.0)
    misalign_shift: int = Field(0, ge=0)
    # Simulated missing modalities [missing-rate, missing-modality-rate, missing-client-audio,
    # missing-client-visual] (hydiscgan_fl.data.missing, seeded by `seed`, the same on every client, at train and
    # test time): each audio/visual step (a frame of a sequence; an utterance of a video for utterance vectors)
    # missing with probability missing-rate; with probability missing-modality-rate an utterance's pattern is one
    # of the six proper non-empty subsets of {t, a, v}; each client holds no audio (no visual) with probability
    # missing-client-audio (missing-client-visual). Missing entries are masked: they need an msa-model that reads
    # presence masks (`fsrf` and its ablations). HyDiscGAN's stage 1 trains each modality's D, E and head of G on
    # the utterances holding it and aggregates G part by part (needs rule fedavg/fedprox, no secure aggregation,
    # no speaker-level DP); the distill/multitask baselines refuse missing modalities.
    missing_rate: float = Field(0.0, ge=0.0, lt=1.0)
    missing_modality_rate: float = Field(0.0, ge=0.0, le=1.0)
    missing_client_audio: float = Field(0.0, ge=0.0, le=1.0)
    missing_client_visual: float = Field(0.0, ge=0.0, le=1.0)
    # The fsrf family's loss weights (hydiscgan_fl.models.fsrf) [fsrf-lambda-sim, fsrf-lambda-orth,
    # fsrf-lambda-recon, fsrf-lambda-noise, fsrf-lambda-distill, fsrf-lambda-distribution]: similarity (CMD) of
    # the shared parts, orthogonality of shared vs specific parts, reconstruction, noise separation, and the
    # self-distillation between two masked views of a sample (predictions; representation distributions);
    # [fsrf-view-drop]: probability that a view drops each present modality (at least one is kept);
    # [fsrf-distill-teacher]: "view" distils two masked views into each other, "complete" the sample with every
    # modality it holds into one masked view.
    fsrf_lambda_sim: float = Field(1.0, ge=0.0)
    fsrf_lambda_orth: float = Field(0.3, ge=0.0)
    fsrf_lambda_recon: float = Field(1.0, ge=0.0)
    fsrf_lambda_noise: float = Field(0.3, ge=0.0)
    fsrf_lambda_distill: float = Field(1.0, ge=0.0)
    fsrf_lambda_distribution: float = Field(0.1, ge=0.0)
    fsrf_view_drop: float = Field(0.3, ge=0.0, lt=1.0)
    fsrf_distill_teacher: Literal["view", "complete"] = "view"
    # Client cost [msa-site, transport-dtype]: "server" runs stage 2 on the server's own text and labels
    # (stage "server-msa", no client work; clients only align); "float16" sends G and M in half precision
    # both ways (cast back to float32 before aggregation and training).
    msa_site: Literal["clients", "server"] = "clients"
    transport_dtype: Literal["float32", "float16"] = "float32"
    # Task [task]: "sentiment" (HyDiscGAN, MSA datasets) or "affect" (continuous valence/arousal from facial
    # action units, docs/affect.md): dataset affect-synthetic[:<participants>] or openface:<absolute dir>, one
    # stage "affect" of rounds-msa rounds in which each client (a participant) trains the affect model "M"
    # with lr-msa, batch-size, local-epochs and dropout. [affect-model, affect-layers, affect-hidden]: the
    # recurrent variant (hydiscgan_fl.models.registry.AFFECT_MODELS) and its depth and width;
    # [affect-loss]: "ccc" (1 - CCC, mean over valence and arousal) or "mse"; [affect-window]: frames per
    # non-overlapping window (20 = 4 s of affect-synthetic's 5 fps).
    task: Literal["sentiment", "affect"] = "sentiment"
    affect_model: str = "bigru"
    affect_layers: int = Field(2, ge=1)
    affect_hidden: int = Field(32, ge=2)
    affect_loss: Literal["ccc", "mse"] = "ccc"
    affect_window: int = Field(20, ge=2)
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
        if _AFFECT_DATASET_RE.match(value):
            if value.startswith("openface:") and not Path(value[9:]).is_absolute():
                raise ValueError(f"openface dataset needs an absolute folder (au/, labels/), got {value!r}")
            return value
        family, colon, count = value.partition(":")
        if value == "mosi-bclstm" or (family in GENERATED_DATASETS and (not colon or count.isdecimal())):
            return value
        if value.startswith("mmsa:"):
            if not Path(value[5:]).is_absolute():
                raise ValueError(f"mmsa dataset needs an absolute path to a .pkl, got {value!r}")
            return value
        if value.startswith("partitions:"):  # the server reads <dir>/server.npz (see `hydiscgan partition`)
            if not Path(value[11:]).is_absolute():
                raise ValueError(f"partitions dataset needs an absolute folder holding server.npz, got {value!r}")
            return value
        generated = ", ".join(f"'{family}', '{family}:<speakers>'" for family in GENERATED_DATASETS)
        raise ValueError(f"unknown dataset {value!r}; use 'mosi-bclstm', {generated}, 'mmsa:/abs/path.pkl', "
                         "'partitions:/abs/dir' or, for task 'affect', 'affect-synthetic[:<participants>]' or "
                         "'openface:/abs/dir'")

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

    @field_validator("msa_model", "generator_model", "affect_model")
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

    @field_validator("inference")
    @classmethod
    def _inference_form(cls, value: str) -> str:
        if not _INFERENCE_RE.match(value):
            raise ValueError(f"unknown inference {value!r}; use 'z0', 'mean-pred:<K>' or 'mean-fake:<K>' (K >= 1)")
        return value

    @model_validator(mode="after")
    def _dp_unit_fits_method(self) -> HyDiscGANConfig:
        if self.dp_unit == "utterance" and self.method != "hydiscgan":
            # DP-SGD covers HyDiscGAN's alignment steps; the baselines' steps read audio/visual in other
            # places (teacher, distillation, auxiliary loss) that no accountant here covers.
            raise ValueError(f"dp-unit 'utterance' runs HyDiscGAN's alignment steps under DP-SGD; the "
                             f"{self.method} baseline has none (use dp-unit 'speaker')")
        if self.msa_site == "server" and self.method != "hydiscgan":
            raise ValueError(f"msa-site 'server' moves HyDiscGAN's stage 2 to the server; the {self.method} "
                             "baseline trains on the clients' real audio/visual (use msa-site 'clients')")
        if self.method == "hydiscgan" and self.rounds_align and not (self.lambda_adv or self.lambda_contrastive
                                                                      or self.lambda_recon):
            raise ValueError("stage 1 trains G on lambda-adv, lambda-contrastive and lambda-recon: at least one "
                             "must be > 0 (or skip stage 1 with rounds-align 0)")
        if self.method != "hydiscgan" and (self.ablation != "none" or self.inference != "z0"):
            raise ValueError(f"ablation and inference are HyDiscGAN's; method {self.method!r} has no generator "
                             "(leave them 'none' and 'z0')")
        self._check_task()
        if self.simulates_missing and (self.task != "sentiment" or self.method in ("distill", "multitask")):
            # The privileged baselines' teachers and auxiliary heads read the real audio/visual per utterance
            # without presence masks (they would take zeros for data); the affect task has no modalities to miss.
            raise ValueError("missing-rate, missing-modality-rate and missing-client-* (simulated missing modalities) "
                             "need task 'sentiment' and method 'hydiscgan' or 'fedavg-multimodal' (whose models honour "
                             f"presence masks); got task {self.task!r}, method {self.method!r}")
        if self.simulates_missing and self.method == "hydiscgan" and self.rounds_align:
            self._check_part_weighting()
        if self.secure_aggregation != "none":
            self._check_secure_aggregation()
        if self.msa_site == "server" and self.local_components:
            raise ValueError("msa-site 'server' trains G and M on the server; a personalised component "
                             f"({', '.join(self.local_components)}) would never be trained by it")
        return self

    def _check_task(self) -> None:
        affect_data = bool(_AFFECT_DATASET_RE.match(self.dataset))
        if affect_data != (self.task == "affect"):
            raise ValueError(f"dataset {self.dataset!r} does not fit task {self.task!r}: task 'affect' reads "
                             "'affect-synthetic[:<n>]' or 'openface:<dir>', task 'sentiment' the others")
        if self.task != "affect":
            return
        # What the affect task has no counterpart for: HyDiscGAN's stages, per-utterance DP-SGD, personalisation.
        refused = {"method": (self.method, self.method != "hydiscgan"),
                   "msa-site": (self.msa_site, self.msa_site != "clients"),
                   "adv-lambda": (self.adv_lambda, self.adv_lambda > 0),
                   "partition": (self.partition, self.partition != "speaker"),
                   "aggregation-msa": (self.aggregation_msa, self.aggregation_msa == LOCAL_RULE),
                   "ablation": (self.ablation, self.ablation != "none"),
                   "inference": (self.inference, self.inference != "z0")}
        for key, (value, wrong) in refused.items():
            if wrong:
                raise ValueError(f"task 'affect' runs one client per participant with one shared, federated model; "
                                 f"{key} {value!r} does not apply to it")
        if self.dp_unit == "utterance":
            raise ValueError("task 'affect' supports dp-unit 'speaker' (participant-level DP-FedAvg) only")

    def _check_part_weighting(self) -> None:
        """With clients missing modalities, stage 1 aggregates G part by part, each weighted by the examples
        that trained it (strategies.aggregation.generator_parts): a stateless example-weighted mean of
        individual updates is needed."""
        rule = self.aggregation_generator or self.aggregation
        problem = ("aggregation-generator " + repr(rule) if rule not in PART_WEIGHTED_RULES else
                   "secure-aggregation 'secaggplus' (no individual update)" if self.secure_aggregation != "none" else
                   "dp-unit 'speaker' (DP-FedAvg weighs clients equally)" if self.dp_unit == "speaker" else "")
        if problem:
            raise ValueError("simulated missing modalities (missing-*) in HyDiscGAN's stage 1 aggregate each part "
                             f"of G by the examples that trained it, with rule {' or '.join(PART_WEIGHTED_RULES)} on "
                             f"individual updates; {problem} cannot (or set rounds-align 0)")

    def _check_secure_aggregation(self) -> None:
        """Secure aggregation hides each update: refuse what needs one (docs/secure-aggregation.md)."""
        for field in ("aggregation", "aggregation_generator", "aggregation_msa"):
            rule = getattr(self, field)
            if rule in ("", LOCAL_RULE) or rule in SECURE_AGGREGATION_RULES:
                continue
            if ":" in rule:
                why = "a user's rule cannot be checked to need only the sum"
            elif rule == "mean":  # computable from a sum, but the protocol weighs clients by capped examples
                why = "the protocol weighs each client by its capped num-examples; an unweighted mean is not built in"
            else:
                why = "it needs every client's individual update, which the server no longer sees"
            raise ValueError(f"secure-aggregation 'secaggplus' cannot run {field.replace('_', '-')} {rule!r}: {why}; "
                             f"use one of {list(SECURE_AGGREGATION_RULES)}")
        if self.dp_unit == "speaker" and self.secagg_clipping_range < self.dp_clip_norm:
            # Each client clips its update to L2 norm dp-clip-norm before masking: then no coordinate exceeds it.
            raise ValueError(f"secure-aggregation with dp-unit 'speaker' needs secagg-clipping-range >= dp-clip-norm "
                             f"({self.secagg_clipping_range} < {self.dp_clip_norm}): a clipped update's coordinates "
                             "reach dp-clip-norm")

    @property
    def total_rounds(self) -> int:
        """The single-stage methods (SINGLE_STAGE) and the affect task have no alignment stage: they run
        rounds-msa rounds and ignore rounds-align."""
        if self.method in SINGLE_STAGE or self.task == "affect":
            return self.rounds_msa
        return self.rounds_align + self.rounds_msa

    @property
    def simulates_missing(self) -> bool:
        """Whether any kind of simulated missing modality is on (hydiscgan_fl.data.missing)."""
        return bool(self.missing_rate or self.missing_modality_rate or self.missing_client_audio
                    or self.missing_client_visual)

    @property
    def generator_trains_in_stage2(self) -> bool:
        """Stage 2 fine-tunes G through M's loss (and the frozen-D term), unless G is frozen or never reaches M."""
        return self.ablation == "none"

    @property
    def uses_discriminator(self) -> bool:
        """Whether a loss term reads D's verdict: stage 1's adversarial term or stage 2's frozen-D term. When
        none does, D is not trained (nor its real/fake loss computed)."""
        return self.lambda_adv > 0 or (self.lambda_adv_msa > 0 and self.generator_trains_in_stage2)

    @property
    def inference_draws(self) -> tuple[str, int]:
        """The inference mode ("z0", "mean-pred", "mean-fake") and its number of noise draws K (1 for z0)."""
        mode, _, draws = self.inference.partition(":")
        return mode, int(draws or 1)

    @property
    def local_components(self) -> tuple[str, ...]:
        """Shared components that stay personalised on the clients (aggregation-<component> = "local")."""
        return tuple(name for name, rule in (("generator", self.aggregation_generator), ("msa", self.aggregation_msa))
                     if rule == LOCAL_RULE)

    def stage_of_round(self, server_round: int) -> str:
        return stage_of_round(server_round, self.rounds_align, self.method, self.msa_site, self.task)

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

    def load_affect(self) -> AffectWindows:
        """The affect task's windows, whole participants split into train / valid / test (seeded)."""
        return load_affect_dataset(self.dataset, self.seed, self.valid_fraction, self.affect_window)

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else project_root() / "runs"


def stage_of_round(server_round: int, rounds_align: int, method: str, msa_site: str = "clients",
                   task: str = "sentiment") -> str:
    """Rounds 1..rounds-align align the modalities; the rest train the MSA model, on the clients
    ("msa") or, with msa-site "server", on the server (SERVER_STAGE).

    The single-stage methods run their one stage in every round: fedavg-multimodal trains M(t, a, v) on real
    audio/visual ("multimodal"), distill and multitask the text model of M's family ("distill", "multitask");
    the affect task trains its model in every round (AFFECT_STAGE)."""
    if task == "affect":
        return AFFECT_STAGE
    if method in SINGLE_STAGE:
        return SINGLE_STAGE[method]
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
