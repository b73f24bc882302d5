"""HyDiscGAN's networks, plain PyTorch.

Who holds what:
- server and clients: the generator G(t, z) -> (fake audio, fake visual) and the MSA model M(t, a, v);
- clients only (never sent): the feature encoders E_a, E_v and the text-conditioned discriminators D_a, D_v.
  With adversarial identity unlearning (adv-lambda > 0) also a speaker adversary behind a gradient-reversal
  layer (models.adversary).
G and M are chosen by name in the run config (models.registry: `generator-model`, `msa-model`); M may
read whole videos of utterances (`context-gru`). The networks read utterance-level vectors (sequence data is
pooled by the MSA family first; step-reading families also get the steps, models.steps); G writes into the real feature spaces (per-speaker
standardised, pooled), so fake and real features can be compared directly.
"""

from hydiscgan_fl.models.adversary import (
    GradientReversal,
    SpeakerAdversary,
    build_speaker_adversary,
    reverse_gradient,
)
from hydiscgan_fl.models.networks import (
    ClientDiscriminators,
    ConditionalGenerator,
    Discriminator,
    FeatureEncoder,
    MSAModel,
    TextOnlyModel,
    build_client_discriminators,
)
from hydiscgan_fl.models.components import GENERATOR, MSA, SHARED_COMPONENTS
from hydiscgan_fl.models.registry import (
    AFFECT_MODELS,
    AffectModelEntry,
    build_affect_model,
    GENERATORS,
    MSA_MODELS,
    MSAFamily,
    GeneratorEntry,
    build_text_only_model,
    needs_context,
    parameter_counts,
    reads_steps,
)
from hydiscgan_fl.models.shared import SharedModels, StudentModels, build_federated_models, build_shared_models
from hydiscgan_fl.models.steps import StepTensors
from hydiscgan_fl.models.video_layout import VideoLayout

__all__ = [
    "AFFECT_MODELS",
    "AffectModelEntry",
    "build_affect_model",
    "GENERATOR",
    "GENERATORS",
    "MSA",
    "MSA_MODELS",
    "SHARED_COMPONENTS",
    "ClientDiscriminators",
    "GeneratorEntry",
    "MSAFamily",
    "VideoLayout",
    "build_text_only_model",
    "needs_context",
    "parameter_counts",
    "reads_steps",
    "StepTensors",
    "ConditionalGenerator",
    "Discriminator",
    "FeatureEncoder",
    "GradientReversal",
    "MSAModel",
    "SharedModels",
    "StudentModels",
    "SpeakerAdversary",
    "TextOnlyModel",
    "build_client_discriminators",
    "build_federated_models",
    "build_shared_models",
    "build_speaker_adversary",
    "reverse_gradient",
]
