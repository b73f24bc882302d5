"""Utterance-level (record-level) DP-SGD with Opacus, for the client steps that read private audio/visual.

The unit is one utterance (t, a, v, y) of a client. Every local step whose loss touches a client's real
audio or visual features is a DP-SGD step (Abadi et al. 2016) through Opacus:

* the discriminator/encoder step (E_a, E_v, D_a, D_v on real vs fake features) and
* the generator alignment step (G, and the speaker adversary when adversarial unlearning is on),

each on its own Poisson-sampled batch (every utterance included independently with probability
q = 1 / batches-per-epoch). Opacus's ``GradSampleModule`` computes one gradient per utterance, and its
``DPOptimizer`` clips each to ``dp-clip-norm`` C, sums them, adds N(0, (sigma C)^2) and divides by the
expected batch size. Each step is recorded in the client's `PrivacyLedger` (one Poisson-subsampled
Gaussian step at (sigma, q); the Wasserstein figure from the per-utterance clipped gradients).

Per-utterance clipping bounds one utterance's influence only if the loss of a batch is the mean of
per-utterance losses. HyDiscGAN's in-batch contrastive term couples utterances (the other utterances
of the batch are the negatives), so under this unit it is replaced by a per-utterance cosine alignment
(`training.losses.per_utterance_alignment`); every other term (real/fake BCE, reconstruction, the
speaker adversary's cross-entropy) is already a mean over utterances.

What the guarantee covers, and why stage 2 needs no DP-SGD. Stage 2 (MSA) trains M and fine-tunes G
from the text and labels and the client's frozen discriminators. Text and labels of the training
utterances are held by the server anyway (it needs them for its own evaluation and baseline), so they
are not what this unit protects; the discriminators and encoders are outputs of DP-SGD. Stage 2 is
therefore post-processing of DP outputs and public data and spends no further budget: the epsilon
reported after stage 1 bounds what the released G and M (after both stages) reveal about any one
utterance's audio and visual features. It follows that (1) the bound says nothing about text or
labels, which this design shares with the server in the clear; (2) any future stage-2 term that reads
real audio/visual (or speaker ids) would have to run under DP-SGD too. Caveats: the audio/visual
features are standardised per speaker before training (statistics over the speaker's own utterances),
so strictly the bound is for the standardised features given those per-speaker statistics; for the raw
features one utterance also shifts its speaker's statistics (group privacy over that speaker's
utterances would cover it). The speaker unit, whose record is a whole client, has no such caveat.
The Poisson batches and the noise are drawn from secret generators (`privacy.secret_rng`: seeded from
the OS, never from the run seed, which the server knows): amplification by subsampling needs a secret
sample. Opacus's ``secure_mode`` (which needs torchcsprng) is not used, so floating-point attacks on the
noise are not ruled out.
"""

from __future__ import annotations

import warnings
from types import TracebackType

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.privacy.ledger import PrivacyLedger
from hydiscgan_fl.privacy.secret_rng import secret_torch_generator


class UtteranceDP:
    """DP-SGD for one client's local round: Poisson batches, private optimisers, accounting.

    Use as a context manager; it removes Opacus's hooks from the modules it made private on exit.
    """

    def __init__(self, cfg: HyDiscGANConfig, num_rows: int, ledger: PrivacyLedger):
        if num_rows < 1:
            raise ValueError("utterance-level DP needs at least one utterance")
        self.noise_multiplier = cfg.dp_noise_multiplier
        self.clip_norm = cfg.dp_clip_norm
        self.num_rows = num_rows
        self.batches_per_epoch = max(1, round(num_rows / cfg.batch_size))
        self.sample_rate = 1.0 / self.batches_per_epoch
        self.ledger = ledger
        self._sampler = secret_torch_generator()  # the Poisson batches: secret, so that subsampling amplifies
        self._wrapped: list[tuple[DPOptimizer, GradSampleModule]] = []
        self._warnings = warnings.catch_warnings()

    def __enter__(self) -> UtteranceDP:
        self._warnings.__enter__()
        # Opacus's backward hooks on a first layer (whose input needs no gradient) make torch say so each step.
        warnings.filterwarnings("ignore", "Full backward hook is firing when gradients are computed")
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for _, module in self._wrapped:
            module.cleanup()  # removes the hooks and the per-sample attributes from the parameters
        self._wrapped.clear()
        self._warnings.__exit__(exc_type, exc, tb)

    def make_private(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> DPOptimizer:
        """Per-utterance gradients for `module` (hooks on its layers) and a DP version of `optimizer`.

        `optimizer` must update exactly `module`'s trainable parameters. Calling the module's own
        methods keeps working: Opacus's hooks sit on its layers.
        """
        wrapped = GradSampleModule(module, loss_reduction="mean")
        device = next(module.parameters()).device
        optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.clip_norm,
            expected_batch_size=self.sample_rate * self.num_rows,
            loss_reduction="mean",
            generator=secret_torch_generator(device),
        )
        optimizer.attach_step_hook(self._account)
        self._wrapped.append((optimizer, wrapped))
        return optimizer

    def activate(self, optimizer: DPOptimizer) -> None:
        """Call before a step of `optimizer`: only its module records per-sample gradients. The other
        private modules' hooks are off, since gradients still flow through their layers (D's, into G)."""
        for owner, module in self._wrapped:
            if owner is optimizer:
                module.enable_hooks()
            else:
                module.disable_hooks()

    def epoch(self) -> list[torch.Tensor]:
        """One epoch of Poisson batches: each utterance in each batch with probability q, independently,
        drawn from this round's secret generator."""
        return [torch.nonzero(torch.rand(self.num_rows, generator=self._sampler) < self.sample_rate).flatten()
                for _ in range(self.batches_per_epoch)]

    def noise_only_step(self, optimizer: DPOptimizer) -> None:
        """The step of an empty Poisson batch: no gradient, but the noise is still added (and accounted)."""
        optimizer.zero_grad(set_to_none=True)
        for param in optimizer.params:
            param.grad_sample = param.new_zeros((0, *param.shape))
        optimizer.step()

    def _account(self, optimizer: DPOptimizer) -> None:
        """Opacus's step hook (after clipping and noise): one subsampled Gaussian step in the ledger,
        with the per-utterance clipped gradients for the Wasserstein figure."""
        per_sample = torch.cat([g.flatten(1) for g in optimizer.grad_samples], dim=1)
        scale = (self.clip_norm / (per_sample.norm(dim=1) + 1e-6)).clamp(max=1.0)  # DP-SGD's clipping factor
        self.ledger.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                         clip_norm=self.clip_norm, clipped_rows=(per_sample * scale[:, None]).detach().cpu().numpy())
