"""Prompt Modifications on token sequences, and attention-localised img2img with a learned-token pipeline.

Why img2img from the *normal* image's noised latent: the untouched components keep their layout; only what the
edited prompt changes is re-synthesised. The edited tokens' cross-attention maps, aggregated over denoising
steps and layers, say *where* it changed (the soft gate); with ``local_blend`` the latents outside the running
gate are reset to the noised source every step, so the image changes only where the gate says it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from comgen.generate.diffusion.attention import AttentionStore

LD_TOKEN = "<ld>"  # one reserved slot whose embedding is overwritten by each low-density sample


@dataclass
class TokenEdit:
    """An edit of a token sequence: the edited sequence and which positions to read the gate from."""

    kind: str
    source_seq: list[str]
    edited_seq: list[str]
    source_gate_pos: list[int] = field(default_factory=list)  # positions (in source_seq) of removed/replaced tokens
    edited_gate_pos: list[int] = field(default_factory=list)  # positions (in edited_seq) of new tokens
    target: list[int] = field(default_factory=list)  # component occurrence indices in source_seq
    classes: list[int] = field(default_factory=list)


def plan_token_edit(kind: str, seq: list[str], cls: list[int], fg_classes: list[int], tokens_of: dict[int, str],
                    rng: np.random.Generator) -> TokenEdit | None:
    """Draw one edit of ``kind`` on a token sequence (``cls[i]`` is the class of ``seq[i]``); None if impossible."""
    fg_pos = [i for i, c in enumerate(cls) if c in fg_classes]
    present = sorted({cls[i] for i in fg_pos})
    if not fg_pos:
        return None
    if kind == "remove":
        i = int(rng.choice(fg_pos))
        return TokenEdit(kind, seq, seq[:i] + seq[i + 1:], [i], [], [i], [cls[i]])
    if kind == "add":
        i = int(rng.choice(fg_pos))
        edited = seq[:i + 1] + [seq[i]] + seq[i + 1:]
        return TokenEdit(kind, seq, edited, [], [i + 1], [i], [cls[i]])
    if kind == "replace":
        i = int(rng.choice(fg_pos))
        others = [c for c in fg_classes if c != cls[i]]
        if not others:
            return None
        b = int(rng.choice(others))
        edited = seq[:i] + [tokens_of[b]] + seq[i + 1:]
        return TokenEdit(kind, seq, edited, [i], [i], [i], [cls[i], b])
    if kind == "swap":  # exchange one instance of a with one of b: same counts, different arrangement
        if len(present) < 2:
            return None
        a, b = (int(x) for x in rng.choice(present, 2, replace=False))
        i = int(rng.choice([p for p in fg_pos if cls[p] == a]))
        j = int(rng.choice([p for p in fg_pos if cls[p] == b]))
        edited = list(seq)
        edited[i], edited[j] = seq[j], seq[i]
        pos = sorted((i, j))
        return TokenEdit(kind, seq, edited, pos, pos, pos, [a, b])
    # recolor / resize / texture: one occurrence becomes a low-density variant of its own token
    i = int(rng.choice(fg_pos))
    edited = seq[:i] + [LD_TOKEN] + seq[i + 1:]
    return TokenEdit(kind, seq, edited, [], [i], [i], [cls[i]])


def placeholder_positions(tokenizer, ids: torch.Tensor, seq: list[str], wanted: list[int]) -> list[int]:
    """Map positions in a token sequence to positions in the tokenised prompt (placeholders are single ids)."""
    pids = tokenizer.convert_tokens_to_ids(seq)
    special = set(pids)
    where = [j for j, t in enumerate(ids.tolist()) if t in special]
    # the k-th placeholder id in the prompt is seq[k] (placeholders are whole tokens, in order)
    return [where[k] for k in wanted if k < len(where)]


@dataclass
class EditResult:
    image: np.ndarray  # HxWx3 uint8 composite (source outside the gate)
    raw: np.ndarray  # HxWx3 uint8 full img2img output
    gate: np.ndarray  # HxW float32 in [0, 1]
    mask: np.ndarray  # HxW bool


def _max_norm(m: torch.Tensor) -> torch.Tensor:
    return m / (m.flatten(-2).amax(-1)[..., None, None] + 1e-8)


class Img2ImgEditor:
    """Runs the attention-captured img2img edit on a loaded pipeline (UNet already has the capture processor)."""

    def __init__(self, pipe, store: AttentionStore, device, dtype) -> None:
        from diffusers import DDIMScheduler

        self.pipe, self.store, self.device, self.dtype = pipe, store, device, dtype
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scaling = float(pipe.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.pipe.tokenizer
        ids = tok(prompts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                  return_tensors="pt").input_ids.to(self.device)
        return self.pipe.text_encoder(ids)[0].to(self.dtype), ids

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
        return self.pipe.vae.encode(x.to(self.device, self.dtype)).latent_dist.mean.float() * self.scaling

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        x = self.pipe.vae.decode((latents / self.scaling).to(self.dtype)).sample
        return ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    def _unet(self, x: torch.Tensor, t, ctx: torch.Tensor, guidance: float, uncond: torch.Tensor | None):
        self.store.reset()
        self.store.latent_hw = tuple(x.shape[-2:])
        x = x.to(self.dtype)  # latents stay float32 between steps; the UNet runs in the pipeline's dtype
        if uncond is None or guidance == 1.0:
            return self.pipe.unet(x, t, encoder_hidden_states=ctx).sample.float()
        eps = self.pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, ctx])).sample.float()
        e_u, e_c = eps.chunk(2)
        return e_u + guidance * (e_c - e_u)

    def _cond_maps(self, size: tuple[int, int]) -> torch.Tensor:
        m = self.store.layer_mean(size)
        self.store.reset()
        return m[-1]  # the conditional half (last) -> [T, h, w]

    @torch.no_grad()
    def edit(self, source: np.ndarray, src_prompt: str, src_pos: list[int], edit_prompt: str, edit_pos: list[int],
             steps: int, strength: float, guidance: float, threshold: float, local_blend: bool, dilate: int,
             generator: torch.Generator) -> EditResult:
        h, w = source.shape[:2]
        lat0 = self.encode_image(source)
        lh, lw = lat0.shape[-2:]
        sch = self.scheduler
        sch.set_timesteps(steps, device=self.device)
        n_run = max(1, min(steps, int(round(steps * strength))))
        timesteps = sch.timesteps[steps - n_run:]
        noise = torch.randn(lat0.shape, generator=generator).to(self.device)
        x = sch.add_noise(lat0, noise, timesteps[:1])
        ctx_src, _ = self.encode_prompt([src_prompt])
        ctx_edit, _ = self.encode_prompt([edit_prompt])
        uncond = self.encode_prompt([""])[0] if guidance != 1.0 else None
        size = (lh, lw)
        gate_src = torch.zeros(size, device=self.device)
        if src_pos:  # where the removed / replaced token was, read on the source prompt at the start step
            self._unet(x, timesteps[0], ctx_src, 1.0, None)
            gate_src = _max_norm(self._cond_maps(size)[src_pos].float()).amax(0)
        acc = torch.zeros((len(edit_pos),) + size, device=self.device)
        for i, t in enumerate(timesteps):
            eps = self._unet(x, t, ctx_edit, guidance, uncond)
            if edit_pos:
                acc += self._cond_maps(size)[edit_pos].float()
            else:
                self.store.reset()
            x = sch.step(eps, t, x).prev_sample
            if local_blend:
                g = self._gate(gate_src, acc)
                m = (g >= threshold).float()[None, None]
                if dilate > 0:
                    m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
                nxt = timesteps[i + 1:i + 2]
                ref = sch.add_noise(lat0, noise, nxt) if len(nxt) else lat0
                x = m.to(x.dtype) * x + (1 - m.to(x.dtype)) * ref
        raw = self.decode(x)
        gate = self._gate(gate_src, acc)[None, None]
        gate = F.interpolate(gate, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
        gate_np = gate.cpu().numpy().astype(np.float32)
        mask = gate_np >= threshold
        alpha = mask.astype(np.float32)
        sigma = max(0.5, h / 128)
        alpha = np.maximum(alpha, cv2.GaussianBlur(alpha, (0, 0), sigma))[..., None]
        comp = (source.astype(np.float32) * (1 - alpha) + raw.astype(np.float32) * alpha).round().astype(np.uint8)
        return EditResult(comp, raw, gate_np, alpha[..., 0] > 0.5)

    @staticmethod
    def _gate(gate_src: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        g = gate_src
        if acc.shape[0] and float(acc.max()) > 0:
            g = torch.maximum(g, _max_norm(acc).amax(0))
        return g
