"""HyDiscGAN core: configuration, data, models, training, metrics and privacy (no Flower imports)."""
