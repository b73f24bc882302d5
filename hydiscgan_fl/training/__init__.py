"""Local training of HyDiscGAN: loss terms, one function per step, per-round loops (no Flower)."""

from hydiscgan_fl.training.data import TensorView, UtteranceTensors, minibatches, pick_device, tensor_view, to_tensors
from hydiscgan_fl.training.loops import (
    alignment_error,
    local_alignment,
    local_msa,
    predict,
    predict_multimodal,
    predict_text_only,
    train_multimodal,
    train_text_only,
)
from hydiscgan_fl.training.steps import discriminator_step, generator_alignment_step, msa_step

__all__ = [
    "TensorView",
    "UtteranceTensors",
    "alignment_error",
    "discriminator_step",
    "generator_alignment_step",
    "local_alignment",
    "local_msa",
    "minibatches",
    "msa_step",
    "pick_device",
    "predict",
    "predict_multimodal",
    "predict_text_only",
    "tensor_view",
    "to_tensors",
    "train_multimodal",
    "train_text_only",
]
