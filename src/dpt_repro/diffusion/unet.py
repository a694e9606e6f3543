"""Class-conditional UNet profiles on diffusers' `UNet2DModel`.

Index `num_classes` of the class embedding is the null label for classifier-free guidance. Every model is
rebuilt from its saved `config.json` (diffusers' `save_pretrained`/`from_pretrained`).
"""

from __future__ import annotations

from dpt_repro.errors import UserError

PROFILES: dict[str, dict] = {
    # 28x28 on CPU: two downsamplings (28 -> 14 -> 7), no attention (the mid-block attention alone costs +35%).
    "small28": dict(block_out_channels=(32, 64, 64), layers_per_block=1,
                    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
                    add_attention=False, norm_num_groups=8),
    # A wider CPU/GPU profile for 28x28 or 32x32 with attention at the lowest resolution.
    "medium": dict(block_out_channels=(64, 128, 128), layers_per_block=2,
                   down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                   norm_num_groups=16),
    # Ho et al. 2020's CIFAR-10 UNet (35.7M parameters): attention at 16x16, dropout 0.1.
    "ddpm-cifar10": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                         down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                         dropout=0.1, norm_num_groups=32),
    # 32x32x4 latents of 256x256 images (ImageNet, with stage2.autoencoder), ADM-like: attention at 16x16 and
    # 8x8 with 64-channel heads, 172M parameters (the paper's U-ViT-H/2 has 501M).
    "latent32": dict(block_out_channels=(256, 512, 768), layers_per_block=2,
                     down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                     up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                     attention_head_dim=64, norm_num_groups=32),
}


def build_unet(profile: str, image_size: int, channels: int, num_classes: int):
    from diffusers import UNet2DModel

    if profile not in PROFILES:
        raise UserError(f"unknown UNet profile {profile!r} (valid: {', '.join(PROFILES)})")
    spec = PROFILES[profile]
    levels = len(spec["block_out_channels"]) - 1
    if image_size % (2 ** levels):
        raise UserError(f"UNet profile {profile!r} downsamples {levels} times; base.image_size {image_size} "
                        f"must be divisible by {2 ** levels}")
    return UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels,
                       num_class_embeds=num_classes + 1, **spec)
