"""Class-conditional diffusion: UNet profiles, the trainer and the guided sampler."""
