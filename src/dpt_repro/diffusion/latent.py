"""Latent diffusion, DPT's ImageNet path: the generator learns in the space of the Stable Diffusion KL
autoencoder (diffusers' `AutoencoderKL`), as U-ViT does: 256x256x3 images become 32x32x4 latents, scaled by
the autoencoder's `scaling_factor` (0.18215 for SD). `stage2.autoencoder` names it (a local folder or a hub
id); pixel-space runs (the default) never load this module.

Images are encoded to the mean of the posterior (U-ViT samples from the stored moments each epoch; the mean
is the deterministic choice and the difference is below the autoencoder's reconstruction error).
"""

from __future__ import annotations

import numpy as np
import torch

from dpt_repro import distributed
from dpt_repro.errors import UserError

SD_AUTOENCODER = "stabilityai/sd-vae-ft-ema"


def load_autoencoder(name: str, device: torch.device):
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(name)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UserError(f"stage2.autoencoder {name!r} could not be loaded ({type(exc).__name__}): download it once "
                        f"with `huggingface-cli download {name if '/' in name else SD_AUTOENCODER}` (and unset "
                        "HF_HUB_OFFLINE), or set stage2.autoencoder to a local folder holding its config.json and "
                        "diffusion_pytorch_model.safetensors") from None
    return vae.eval().requires_grad_(False).to(device)


def downsampling(vae) -> int:
    """Image pixels per latent pixel along a side (8 for SD's autoencoder)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.inference_mode()
def encode(vae, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """uint8 images [N, H, W, C] -> scaled latents [N, h, w, c] (float32); ranks of a data-parallel stage
    encode their share and all get all."""
    from dpt_repro.diffusion.train import to_model_space

    part = images[distributed.shard(len(images))]
    out = [np.zeros((0, images.shape[1] // downsampling(vae), images.shape[2] // downsampling(vae),
                     vae.config.latent_channels), np.float32)]
    for start in range(0, len(part), batch_size):
        x = to_model_space(part[start:start + batch_size]).to(device)
        z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        out.append(z.float().permute(0, 2, 3, 1).cpu().numpy())
    return distributed.gather(np.concatenate(out))


def decoder(vae):
    """A function from model-space latents [N, c, h, w] to uint8 images [N, H, W, C], for the sampler."""

    @torch.inference_mode()
    def decode(latents: torch.Tensor) -> np.ndarray:
        x = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    return decode
