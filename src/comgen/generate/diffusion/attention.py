"""Cross-attention capture: a diffusers attention processor that records each text token's attention map.

Why: the token learner needs these maps *with gradients* (the binding loss pulls a token's map towards its
component mask), and the generator needs them *aggregated over steps and layers* (the edited token's map is the
soft localisation of the edit). One processor serves both; self-attention layers keep the fast SDPA processor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class AttentionStore:
    """Collects head-averaged cross-attention probabilities [B, T, h, w] of every captured UNet layer."""

    def __init__(self, max_pixels: int = 32 * 32) -> None:
        self.max_pixels = max_pixels  # layers finer than this are skipped (SD at 64x64 latents: 4096 px, costly)
        self.latent_hw: tuple[int, int] = (0, 0)
        self.enabled = True
        self.maps: list[torch.Tensor] = []
        self.sum: torch.Tensor | None = None  # running sum across steps (generation)
        self.count = 0

    def reset(self) -> None:
        self.maps = []

    def clear_all(self) -> None:
        self.maps, self.sum, self.count = [], None, 0

    def record(self, probs: torch.Tensor, batch: int, heads: int, n_pix: int) -> None:
        if not self.enabled or n_pix > self.max_pixels:
            return
        H, W = self.latent_hw
        f = math.sqrt(H * W / n_pix)
        h, w = max(1, round(H / f)), max(1, round(W / f))
        if h * w != n_pix:  # odd sizes: fall back to a square guess
            h = w = int(round(math.sqrt(n_pix)))
            if h * w != n_pix:
                return
        m = probs.view(batch, heads, n_pix, -1).mean(1)  # [B, HW, T]
        self.maps.append(m.permute(0, 2, 1).reshape(batch, -1, h, w))

    def layer_mean(self, size: tuple[int, int]) -> torch.Tensor:
        """Mean over the captured layers of this UNet call, bilinearly resized to ``size`` -> [B, T, *size]."""
        if not self.maps:
            raise RuntimeError("no cross-attention maps were captured (is the capture processor installed?)")
        acc = None
        for m in self.maps:
            r = m if tuple(m.shape[-2:]) == tuple(size) else F.interpolate(m.float(), size=size, mode="bilinear",
                                                                           align_corners=False)
            acc = r.float() if acc is None else acc + r.float()
        return acc / len(self.maps)

    def accumulate(self, size: tuple[int, int]) -> None:
        """Add this call's layer mean to the running step sum (detached) and clear per-call maps."""
        with torch.no_grad():
            m = self.layer_mean(size).detach()
        self.sum = m if self.sum is None else self.sum + m
        self.count += 1
        self.reset()

    def step_mean(self) -> torch.Tensor:
        if self.sum is None:
            raise RuntimeError("no attention accumulated")
        return self.sum / self.count


class CaptureCrossAttnProcessor:
    """Classic (explicit softmax) attention for cross-attention layers, recording the probabilities."""

    def __init__(self, store: AttentionStore) -> None:
        self.store = store

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, n_pix, _ = hidden_states.shape
        seq_len = encoder_hidden_states.shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.store.record(probs, batch_size, attn.heads, n_pix)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_capture(unet, store: AttentionStore) -> None:
    """Route every cross-attention layer (``attn2``) of ``unet`` through the capture processor."""
    procs = {}
    for name, proc in unet.attn_processors.items():
        procs[name] = CaptureCrossAttnProcessor(store) if name.endswith("attn2.processor") else proc
    unet.set_attn_processor(procs)
