"""``DiffusionConfig``: options of the Stable-Diffusion back-end (token learning + generation + sampling).

Why nested sections: ``learn`` options change the learned tokens (their hash decides whether saved tokens are
reused), ``sample`` options only change generation, so a new generation config never retrains tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from comgen.config import ConfigBase
from comgen.errors import ConfigError
from comgen.records import LOGICAL_EDITS

PRECISIONS = ("auto", "no", "fp16", "bf16")
DIFFUSION_EDITS: tuple[str, ...] = ("remove", "add", "replace", "swap", "recolor", "resize", "texture")


@dataclass
class TokenLearnConfig(ConfigBase):
    """Multi-Component token learning (textual inversion of <c_k> and <bg>, optional UNet LoRA)."""

    steps: int = 800
    batch_size: int = 4
    lr: float = 5e-3
    lora_rank: int = 0  # 0 = no LoRA; else rank of peft LoRA on UNet attention (to_q/k/v/out)
    lora_lr: float = 1e-4
    attn_weight: float = 1.0  # weight of the cross-attention binding loss
    contrastive_weight: float = 0.1  # weight of the token-separation term
    contrastive_margin: float = 0.2  # token pairs with cosine above this are pushed apart
    bg_loss_weight: float = 0.25  # weight of background pixels in the masked diffusion loss
    attn_pixels: int = 32 * 32  # cross-attention layers up to this many pixels are captured
    max_t: float = 1.0  # timesteps are drawn from [0, max_t * T)
    init_std: float = 0.0  # 0: start each token at the mean vocabulary embedding (+ tiny jitter)
    checkpoint_every: int = 100
    snapshot_every: int = 10  # embedding trajectory samples (for Low-Density Sampling)
    mixed_precision: str = "auto"  # auto: bf16 on a bf16-capable GPU, fp16 on other GPUs, fp32 on CPU
    prompt_template: str = "a photo of {tokens}"
    min_instance_area: float = 0.002  # smaller connected pieces are not counted as instances

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("diffusion.learn", "steps and batch_size must be >= 1")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError("diffusion.learn.mixed_precision",
                              f"{self.mixed_precision!r} is not one of {', '.join(PRECISIONS)}")
        if "{tokens}" not in self.prompt_template:
            raise ConfigError("diffusion.learn.prompt_template", "must contain {tokens}")
        if self.lora_rank < 0:
            raise ConfigError("diffusion.learn.lora_rank", "must be >= 0")


@dataclass
class SampleConfig(ConfigBase):
    """Generation: img2img from a normal image with an edited prompt, attention-localised."""

    steps: int = 30
    strength: float = 0.6  # img2img: fraction of the noise schedule re-run from the noised normal latent
    guidance_scale: float = 5.0  # classifier-free guidance (1.0 = off, one UNet pass per step)
    mask_threshold: float = 0.5  # mask = gate >= threshold * max(gate)
    local_blend: bool = True  # keep latents outside the running attention mask equal to the noised source
    blend_dilate: int = 1  # latent pixels of dilation of the blend mask
    edit_kinds: list[str] = field(default_factory=lambda: list(DIFFUSION_EDITS))
    shell: tuple[float, float] = (0.99, 0.9999)  # chi-square quantiles of the Mahalanobis tail shell
    perturb_scale: float = 0.05  # isotropic std (relative to the embedding norm / sqrt(D)) when no trajectory
    tries: int = 8  # low-density samples drawn per kept one before giving up
    min_mask_area: float = 0.002  # fraction of the image; smaller edits are dropped
    density_filter: bool = True  # keep only edits whose re-segmented composition is low-density (needs RUN/components)
    batch_size: int = 1

    def __post_init__(self) -> None:
        bad = [k for k in self.edit_kinds if k not in DIFFUSION_EDITS]
        if bad or not self.edit_kinds:
            raise ConfigError("diffusion.sample.edit_kinds",
                              f"unknown or empty {bad or self.edit_kinds}; valid: {', '.join(DIFFUSION_EDITS)}")
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError("diffusion.sample.strength", f"must be in (0, 1], got {self.strength}")
        if not 0.0 < self.shell[0] < self.shell[1] < 1.0:
            raise ConfigError("diffusion.sample.shell", f"need 0 < lo < hi < 1, got {self.shell}")
        if self.steps < 1:
            raise ConfigError("diffusion.sample.steps", "must be >= 1")


@dataclass
class DiffusionConfig(ConfigBase):
    """Stable-Diffusion back-end; ``sd_model`` is a local diffusers folder (SD 1.5 / 2.1 saved with save_pretrained)."""

    sd_model: str = ""
    image_size: int = 512
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    token_dir: str = ""  # where learned tokens live; default RUN/diffusion
    reuse_tokens: bool = True
    learn: TokenLearnConfig = field(default_factory=TokenLearnConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 8:
            raise ConfigError("diffusion.image_size", f"{self.image_size}: need a multiple of 8, >= 16")


def is_logical(kind: str) -> bool:
    return kind in LOGICAL_EDITS
