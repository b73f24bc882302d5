"""HyDiscGAN's networks, plain PyTorch.

Who holds what:
- server and clients: the generator G(t, z) -> (fake audio, fake visual) and the MSA model M(t, a, v);
- clients only (never sent): the feature encoders E_a, E_v and the text-conditioned discriminators D_a, D_v.
  With adversarial identity unlearning (adv-lambda > 0) also a speaker adversary behind a gradient-reversal
  layer (models.adversary).
All features are utterance-level vectors; G writes into the real feature spaces (per-speaker standardised),
so fake and real features can be compared directly.
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
    SharedModels,
    TextOnlyModel,
    build_client_discriminators,
    build_shared_models,
)

__all__ = [
    "ClientDiscriminators",
    "ConditionalGenerator",
    "Discriminator",
    "FeatureEncoder",
    "GradientReversal",
    "MSAModel",
    "SharedModels",
    "SpeakerAdversary",
    "TextOnlyModel",
    "build_client_discriminators",
    "build_shared_models",
    "build_speaker_adversary",
    "reverse_gradient",
]
