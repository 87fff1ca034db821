"""Multi-Component token learning: one text token per component class (+ <bg>) on a frozen Stable Diffusion.

Why these three losses (docs/design.md, "I. Generate"; MCPL / Break-A-Scene): the masked diffusion loss makes the tokens
reproduce their components, the cross-attention loss makes each token *look at* its component (so at generation
time its attention map localises the edit), and the contrastive term keeps tokens apart so swapping one for
another really changes the part. Only the new embedding rows (and an optional UNet LoRA) train. Every step draws
its batch and noise from ``(seed, step)`` so a resumed run continues exactly where the stopped one would have.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from comgen.errors import ArtifactError, InputError
from comgen.generate.diffusion.attention import AttentionStore, install_capture
from comgen.generate.diffusion.config import TokenLearnConfig
from comgen.generate.diffusion.loading import load_sd, resolve_device, resolve_precision
from comgen.generate.diffusion.tokens import add_placeholders, class_tokens, merge_placeholders, save_embeddings
from comgen.io import atomic_path, atomic_write_json
from comgen.progress import progress

LORA_FILE = "pytorch_lora_weights.safetensors"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def instance_tokens(class_map: np.ndarray, tokens: list[str], background: int, min_area: int,
                    max_repeat: int = 4) -> tuple[list[str], list[int]]:
    """Token sequence of one image (one token per instance, like ``Composition.prompt``) and the class of each."""
    seq, cls = [], []
    fg = [k for k in range(len(tokens)) if k != background]
    for k in fg:
        m = (class_map == k).astype(np.uint8)
        if not m.any():
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        count = int((stats[1:, cv2.CC_STAT_AREA] >= min_area).sum()) or 1
        seq += [tokens[k]] * min(count, max_repeat)
        cls += [k] * min(count, max_repeat)
    seq.append(tokens[background])
    cls.append(background)
    return seq, cls


def soft_masks(class_maps: np.ndarray, num_classes: int, size: int) -> np.ndarray:
    """Per-class area-averaged masks [N, K, size, size] float32 (the attention targets)."""
    onehot = (class_maps[..., None] == np.arange(num_classes)).astype(np.float32)  # N,H,W,K
    out = np.stack([cv2.resize(o, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, -1)
                    for o in onehot])
    return out.transpose(0, 3, 1, 2).copy()


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


@dataclass
class LearnResult:
    tokens: list[str]
    out: Path
    history: dict[str, list[float]] = field(default_factory=dict)
    step: int = 0


class TokenLearner:
    """Holds the frozen pipeline, the cached latents/targets and the trainable rows of one learning run."""

    def __init__(self, sd_model, images: np.ndarray, class_maps: np.ndarray, num_classes: int,
                 cfg: TokenLearnConfig, out: str | Path, device: str = "auto", seed: int = 0,
                 background: int = 0) -> None:
        from accelerate import Accelerator

        images = np.asarray(images)
        class_maps = np.asarray(class_maps)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InputError("token learning",
                             f"images must be N x H x W x 3 uint8, got {images.shape} {images.dtype}")
        if class_maps.shape != images.shape[:3]:
            raise InputError("token learning", f"class maps {class_maps.shape} do not match images {images.shape[:3]}")
        if len(images) < 1:
            raise InputError("token learning", "no training images")
        if images.shape[1] % 8 or images.shape[1] != images.shape[2]:
            raise InputError("token learning",
                             f"images must be square with a side divisible by 8, got {images.shape[1:3]}")
        self.cfg, self.out, self.seed, self.background = cfg, Path(out), seed, background
        self.num_classes = num_classes
        dev = resolve_device(device)
        self.precision = resolve_precision(cfg.mixed_precision, dev)
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=not dev.startswith("cuda"))
        self.device = self.accelerator.device
        self.pipe = sd_model if not isinstance(sd_model, (str, Path)) else load_sd(sd_model, "cpu")
        p = self.pipe
        self.tokenizer, self.text_encoder, self.unet, self.vae = p.tokenizer, p.text_encoder, p.unet, p.vae
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(p.scheduler.config)
        for m in (self.text_encoder, self.unet, self.vae):
            m.requires_grad_(False)
            m.eval()
        self.tokens = class_tokens(num_classes, background)
        gen = torch.Generator().manual_seed(seed)
        self.token_ids, self.emb = add_placeholders(self.tokenizer, self.text_encoder, self.tokens, cfg.init_std, gen)
        self.base_rows = self.text_encoder.get_input_embeddings().base.weight.detach().clone()
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        self.lora_params: list[torch.nn.Parameter] = []
        if cfg.lora_rank > 0:
            from peft import LoraConfig

            self.unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, init_lora_weights="gaussian",
                                             target_modules=list(TARGETS)))
            self.lora_params = [q for q in self.unet.parameters() if q.requires_grad]
            self.unet.to(self.device)  # LoRA layers stay fp32; autocast handles the rest
        else:
            self.unet.to(self.device, dtype=weight_dtype)
        self.vae.to(self.device, dtype=weight_dtype)
        self.text_encoder.to(self.device)
        self.store = AttentionStore(max_pixels=cfg.attn_pixels)
        install_capture(self.unet, self.store)
        self._prepare_data(images, class_maps)
        groups = [{"params": [self.emb.new], "lr": cfg.lr}]
        if self.lora_params:
            groups.append({"params": self.lora_params, "lr": cfg.lora_lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        self.text_encoder, self.optimizer = self.accelerator.prepare(self.text_encoder, self.optimizer)
        self.step = 0
        self.history: dict[str, list[float]] = {"loss": [], "diffusion": [], "attention": [], "contrastive": [],
                                                "iou": []}
        self.trajectory: list[torch.Tensor] = []

    # --- data -----------------------------------------------------------------------------
    @torch.no_grad()
    def _prepare_data(self, images: np.ndarray, class_maps: np.ndarray) -> None:
        n, s = images.shape[:2]
        min_area = max(1, int(round(self.cfg.min_instance_area * s * s)))
        prompts, pos_cls = [], []
        for cm in class_maps:
            seq, cls = instance_tokens(cm, self._class_token_list(), self.background, min_area)
            prompts.append(self.cfg.prompt_template.format(tokens=" ".join(seq)))
            pos_cls.append(cls)
        enc = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        self.prompts = prompts
        self.ids = enc.input_ids
        id_to_class = {tid: k for k, tid in zip(self._class_ids(), self.token_ids)}
        cls_of_pos = torch.full(self.ids.shape, -1, dtype=torch.long)
        for tid, k in id_to_class.items():
            cls_of_pos[self.ids == tid] = k
        self.pos_class = cls_of_pos
        if ((self.pos_class >= 0).sum(1) == 0).any():
            raise InputError("token learning", "a prompt lost all its tokens to truncation; the tokenizer's "
                                               f"max_length {self.tokenizer.model_max_length} is too short")
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        means, stds = [], []
        vae_dtype = next(self.vae.parameters()).dtype
        for i in range(0, n, 8):
            dist = self.vae.encode(x[i:i + 8].to(self.device, vae_dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        self.lat_mean, self.lat_std = torch.cat(means), torch.cat(stds)
        self.scaling = float(self.vae.config.scaling_factor)
        lh = self.lat_mean.shape[-1]
        self.attn_size = min(lh, int(np.sqrt(self.cfg.attn_pixels)))
        self.targets = torch.from_numpy(soft_masks(class_maps, self.num_classes, self.attn_size)).to(self.device)
        lat_masks = torch.from_numpy(soft_masks(class_maps, self.num_classes, lh)).to(self.device)
        bg = lat_masks[:, self.background:self.background + 1]
        self.loss_weight = (1.0 - bg) + self.cfg.bg_loss_weight * bg  # N,1,h,w

    def _class_ids(self) -> list[int]:
        return [k for k in range(self.num_classes) if k != self.background] + [self.background]

    def _class_token_list(self) -> list[str]:
        """Token of each class id (index = class id)."""
        out = [""] * self.num_classes
        for k, t in zip(self._class_ids(), self.tokens):
            out[k] = t
        return out

    # --- one step -------------------------------------------------------------------------
    def _losses(self, idx: np.ndarray, gen: torch.Generator, t_fixed: int | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        idx_t = torch.as_tensor(idx, device=self.device)
        mean, std = self.lat_mean[idx_t], self.lat_std[idx_t]
        eps = torch.randn(mean.shape, generator=gen).to(self.device)
        lat = (mean + std * eps) * self.scaling
        noise = torch.randn(lat.shape, generator=gen).to(self.device)
        T = self.noise_scheduler.config.num_train_timesteps
        if t_fixed is None:
            t = torch.randint(0, max(1, int(cfg.max_t * T)), (len(idx),), generator=gen).to(self.device)
        else:
            t = torch.full((len(idx),), t_fixed, dtype=torch.long, device=self.device)
        noisy = self.noise_scheduler.add_noise(lat, noise, t)
        ids = self.ids[idx].to(self.device)
        self.store.reset()
        self.store.latent_hw = tuple(lat.shape[-2:])
        with self.accelerator.autocast():
            ctx = self.text_encoder(ids)[0]
            unet_dtype = next(self.unet.parameters()).dtype if not self.lora_params else torch.float32
            pred = self.unet(noisy.to(unet_dtype), t, encoder_hidden_states=ctx.to(unet_dtype)).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(lat, noise, t)
        else:
            target = noise
        w = self.loss_weight[idx_t]
        err = (pred.float() - target.float()) ** 2
        l_diff = (err * w).sum() / (w.sum() * err.shape[1])
        attn = self.store.layer_mean((self.attn_size, self.attn_size))  # B,L,a,a
        self.store.reset()
        pc = self.pos_class[idx].to(self.device)
        b, p = torch.nonzero(pc >= 0, as_tuple=True)
        a = attn[b, p]
        a = a / (a.flatten(1).amax(1)[:, None, None] + 1e-6)
        m = self.targets[idx_t][b, pc[b, p]]
        # MSE alone (Break-A-Scene) lets an untrained model cheat with one sharp peak per map; the soft-Dice
        # term rewards covering the whole component, so attention must actually move onto it
        dice = 1 - 2 * (a * m).flatten(1).sum(1) / (a.flatten(1).sum(1) + m.flatten(1).sum(1) + 1e-6)
        l_attn = F.mse_loss(a, m) + dice.mean()
        with torch.no_grad():
            inter = ((a > 0.5) & (m > 0.5)).flatten(1).sum(1).float()
            union = ((a > 0.5) | (m > 0.5)).flatten(1).sum(1).float().clamp(min=1)
            iou = (inter / union).mean()
        e = F.normalize(self.emb.new.float(), dim=1)
        cos = e @ e.T
        off = ~torch.eye(len(e), dtype=torch.bool, device=cos.device)
        l_con = F.relu(cos[off] - cfg.contrastive_margin).pow(2).mean() if len(e) > 1 else cos.sum() * 0
        loss = l_diff + cfg.attn_weight * l_attn + cfg.contrastive_weight * l_con
        return {"loss": loss, "diffusion": l_diff, "attention": l_attn, "contrastive": l_con, "iou": iou}

    def _batch(self, step: int) -> tuple[np.ndarray, torch.Generator]:
        seed = _step_seed(self.seed, step)
        rng = np.random.default_rng(seed)
        n = len(self.ids)
        idx = rng.choice(n, self.cfg.batch_size, replace=n < self.cfg.batch_size)
        return idx, torch.Generator().manual_seed(seed)

    def train(self, until: int | None = None) -> LearnResult:
        """Train up to ``until`` (default cfg.steps) steps, checkpointing; resumes from the latest checkpoint."""
        until = self.cfg.steps if until is None else min(until, self.cfg.steps)
        for step in progress(range(self.step, until), desc="diffusion: learn tokens", total=until - self.step):
            idx, gen = self._batch(step)
            losses = self._losses(idx, gen)
            self.accelerator.backward(losses["loss"])
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            for k, v in losses.items():
                self.history[k].append(float(v.detach()))
            self.step = step + 1
            if self.step % self.cfg.snapshot_every == 0:
                self.trajectory.append(self.emb.new.detach().float().cpu().clone())
            if self.step % self.cfg.checkpoint_every == 0 or self.step == until:
                self.save_checkpoint()
        return LearnResult(self.tokens, self.out, self.history, self.step)

    @torch.no_grad()
    def binding_iou(self, t: int = 300, n: int | None = None) -> float:
        """Mean IoU between each token's (max-normalised, >0.5) attention map and its mask, at a fixed timestep."""
        n = len(self.ids) if n is None else min(n, len(self.ids))
        ious = []
        for i in range(0, n, self.cfg.batch_size):
            idx = np.arange(i, min(n, i + self.cfg.batch_size))
            ious.append(float(self._losses(idx, torch.Generator().manual_seed(self.seed + 7), t)["iou"]) * len(idx))
        return sum(ious) / n

    # --- persistence ----------------------------------------------------------------------
    def _ckpt_dir(self) -> Path:
        return self.out / "checkpoint"

    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        d = self._ckpt_dir()
        d.mkdir(parents=True, exist_ok=True)
        tensors = {"new": self.emb.new.detach().float().cpu().contiguous()}
        if self.trajectory:
            tensors["trajectory"] = torch.stack(self.trajectory).contiguous()
        if self.lora_params:
            from peft.utils import get_peft_model_state_dict

            for k, v in get_peft_model_state_dict(self.accelerator.unwrap_model(self.unet)).items():
                tensors["lora." + k] = v.detach().float().cpu().contiguous()
        with atomic_path(d / "state.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"step": str(self.step)})
        with atomic_path(d / "optimizer.pt") as tmp:
            torch.save(self.optimizer.state_dict(), tmp)
        atomic_write_json(d / "state.json", {"step": self.step, "config_hash": self.cfg.hash(),
                                             "tokens": self.tokens, "history": self.history})
        return d

    def load_checkpoint(self) -> bool:
        """Restore the latest checkpoint if one exists for this config; False when starting fresh."""
        from safetensors.torch import load_file

        d = self._ckpt_dir()
        if not (d / "state.json").is_file():
            return False
        try:
            meta = json.loads((d / "state.json").read_text())
            tensors = load_file(str(d / "state.safetensors"))
            opt = torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True)
        except (OSError, json.JSONDecodeError, RuntimeError, ValueError) as exc:
            raise ArtifactError(d, f"unreadable checkpoint ({exc.__class__.__name__}); delete it to restart") from None
        if meta.get("config_hash") != self.cfg.hash() or meta.get("tokens") != self.tokens:
            raise ArtifactError(d, "checkpoint was made with another config or component set; delete it to restart")
        if tensors["new"].shape != self.emb.new.shape:
            raise ArtifactError(d, "checkpoint embedding shape differs from this model's")
        self.emb.new.data.copy_(tensors["new"].to(self.emb.new.device))
        if self.lora_params:
            from peft.utils import set_peft_model_state_dict

            lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
            set_peft_model_state_dict(self.accelerator.unwrap_model(self.unet), lora)
        self.optimizer.load_state_dict(opt)
        self.step = int(meta["step"])
        self.history = {k: list(v) for k, v in meta["history"].items()}
        self.trajectory = list(tensors["trajectory"]) if "trajectory" in tensors else []
        return True

    def finish(self) -> LearnResult:
        """Save embeddings (textual-inversion format), trajectory, LoRA and history into ``out``."""
        from safetensors.torch import save_file

        rows = self.emb.new.detach().float().cpu()
        save_embeddings(self.out, self.tokens, rows)
        traj = torch.stack(self.trajectory + [rows]) if self.trajectory else rows[None]
        with atomic_path(self.out / "trajectory.safetensors") as tmp:
            save_file({"trajectory": traj.contiguous()}, str(tmp))
        if self.lora_params:
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.accelerator.unwrap_model(self.unet)))
            StableDiffusionPipeline.save_lora_weights(self.out, unet_lora_layers=sd, safe_serialization=True)
        atomic_write_json(self.out / "history.json", self.history)
        self.cfg.save(self.out / "config.yaml")
        atomic_write_json(self.out / "learned.json", {"config_hash": self.cfg.hash(), "tokens": self.tokens,
                                                      "steps": self.step, "num_classes": self.num_classes,
                                                      "background": self.background, "prompts": self.prompts})
        merge_placeholders(self.accelerator.unwrap_model(self.text_encoder))
        if (self._ckpt_dir()).exists():
            shutil.rmtree(self._ckpt_dir())
        return LearnResult(self.tokens, self.out, self.history, self.step)


def learn_tokens(sd_model, images: np.ndarray, class_maps: np.ndarray, num_classes: int,
                 cfg: TokenLearnConfig | None = None, out: str | Path = "diffusion", *, device: str = "auto",
                 seed: int = 0, background: int = 0, resume: bool = True, stop_at: int | None = None) -> LearnResult:
    """Learn <c_k> and <bg> for images with per-pixel class maps; writes everything under ``out``.

    ``stop_at`` stops (after checkpointing) at that step without finishing, as an interrupted run would.
    """
    cfg = cfg or TokenLearnConfig()
    learner = TokenLearner(sd_model, images, class_maps, num_classes, cfg, out, device=device, seed=seed,
                           background=background)
    if resume:
        learner.load_checkpoint()
    res = learner.train(until=stop_at)
    if stop_at is not None and learner.step < cfg.steps:
        return res
    return learner.finish()
