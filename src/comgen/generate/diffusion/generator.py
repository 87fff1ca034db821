"""``DiffusionGenerator``: the Stable-Diffusion back-end behind the common ``AnomalyGenerator`` protocol.

Why it mirrors the compositional back-end: the writer, Stage II and Stage III only see ``Anomaly`` records, so
switching ``--backend diffusion`` changes nothing downstream. Component class maps come from the run's
component model (``comgen learn``), else from the built-in benchmark's truth maps.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from comgen.errors import ArtifactError, InputError
from comgen.generate.diffusion.attention import AttentionStore, install_capture
from comgen.generate.diffusion.config import DiffusionConfig
from comgen.generate.diffusion.editing import LD_TOKEN, Img2ImgEditor, placeholder_positions, plan_token_edit
from comgen.generate.diffusion.learner import LORA_FILE, instance_tokens, learn_tokens
from comgen.generate.diffusion.loading import load_sd, resolve_device, resolve_precision
from comgen.generate.diffusion.sampling import TokenSampler
from comgen.generate.diffusion.tokens import class_tokens, load_embeddings, token_rows
from comgen.records import STRUCTURAL_EDITS, Anomaly, EditSpec, Sample
from comgen.rundir import RunDir


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def _class_maps(images: np.ndarray, train: list[Sample], run: RunDir | None,
                size: int) -> tuple[np.ndarray, int, object]:
    """Per-image class maps: the run's component model, else synth truth; (maps, num_classes, model or None)."""
    if run is not None and (run.components / "model.json").is_file():
        from comgen.components.model import ComponentModel

        model = ComponentModel.load(run.components)
        return model.segment(images).astype(np.uint8), model.num_classes, model
    try:
        from comgen.data.synth.truth import load_truth, truth_path
    except ImportError:
        load_truth = truth_path = None
    if truth_path is not None and train and all(truth_path(s).exists() for s in train):
        maps = np.stack([cv2.resize(load_truth(s).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
                         for s in train])
        return maps, int(maps.max()) + 1, None
    where = run.components if run is not None else "diffusion"
    raise InputError(where, "no component model; run `comgen learn` first (the diffusion back-end binds one token "
                            "per learned component class)")


class DiffusionGenerator:
    """Learns <c_k>/<bg> tokens on a local SD checkpoint, then edits normal images by editing their prompts."""

    name = "diffusion"

    def __init__(self, cfg: DiffusionConfig | None = None, pipe=None) -> None:
        self.cfg = cfg or DiffusionConfig()
        self.pipe = pipe  # an already loaded pipeline (tests / benches); else cfg.sd_model is loaded in fit
        self.images: np.ndarray | None = None
        self.sources: list[str] = []
        self.component_model = None
        self.density = None
        self.history: dict[str, list[float]] = {}

    # --- fitting --------------------------------------------------------------------------
    def fit(self, train: list[Sample], run: RunDir | None = None) -> None:
        if not train:
            raise InputError("diffusion", "no normal training images to learn from")
        size = self.cfg.image_size
        images = np.stack([_resize(s.load_image(), size) for s in train])
        maps, k, model = _class_maps(images, train, run, size)
        self.component_model = model
        token_dir = Path(self.cfg.token_dir) if self.cfg.token_dir else (
            run.root / "diffusion" if run is not None else Path(tempfile.mkdtemp(prefix="comgen-sd-")))
        self.fit_arrays(images, maps, k, [str(s.path) for s in train], token_dir)
        if model is not None and self.cfg.sample.density_filter:
            self._fit_density(images, model)

    def fit_arrays(self, images: np.ndarray, class_maps: np.ndarray, num_classes: int,
                   sources: list[str] | None = None, token_dir: str | Path | None = None) -> None:
        """Fit from arrays: images [N,S,S,3] uint8 at image_size and class maps [N,S,S] (0 = background)."""
        cfg = self.cfg
        self.images, self.class_maps = np.asarray(images), np.asarray(class_maps)
        self.sources = sources or [f"image{i}" for i in range(len(images))]
        self.num_classes = num_classes
        self.token_dir = Path(token_dir or tempfile.mkdtemp(prefix="comgen-sd-"))
        self.device = resolve_device(cfg.device)
        prec = resolve_precision(cfg.learn.mixed_precision, self.device)
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec, torch.float32)
        pipe = self.pipe if self.pipe is not None else load_sd(cfg.sd_model, "cpu")
        self.tokens = class_tokens(num_classes)
        if cfg.reuse_tokens and self._learned_match():
            load_embeddings(pipe, self.token_dir)
            if (self.token_dir / LORA_FILE).is_file():
                pipe.load_lora_weights(str(self.token_dir))
        else:
            res = learn_tokens(pipe, self.images, self.class_maps, num_classes, cfg.learn, self.token_dir,
                               device=self.device, seed=cfg.seed)
            self.history = res.history
        tok, te = pipe.tokenizer, pipe.text_encoder
        if LD_TOKEN not in tok.get_vocab():
            tok.add_tokens([LD_TOKEN])
            te.resize_token_embeddings(len(tok), mean_resizing=False)
        pipe.to(self.device, self.dtype)
        pipe.text_encoder.to(self.device, self.dtype)
        self.pipe = pipe
        self.store = AttentionStore(max_pixels=cfg.learn.attn_pixels)
        install_capture(pipe.unet, self.store)
        self.editor = Img2ImgEditor(pipe, self.store, self.device, self.dtype)
        rows = token_rows(te, tok, self.tokens).cpu().numpy()
        self.sampler = TokenSampler.load(self.token_dir, self.tokens, rows, cfg.sample.perturb_scale)
        s = self.images.shape[1]
        self.min_area = max(1, int(round(cfg.learn.min_instance_area * s * s)))
        self.tokens_of = {k: t for k, t in zip([c for c in range(num_classes) if c != 0] + [0], self.tokens)}
        self.token_by_class = [self.tokens_of[c] for c in range(num_classes)]

    def _learned_match(self) -> bool:
        path = self.token_dir / "learned.json"
        if not path.is_file():
            return False
        try:
            meta = json.loads(path.read_text())
        except ValueError:  # not UTF-8 text, or not JSON
            raise ArtifactError(path, "corrupt learned-token record; delete the folder to relearn") from None
        return meta.get("config_hash") == self.cfg.learn.hash() and meta.get("tokens") == self.tokens

    def _fit_density(self, images: np.ndarray, model) -> None:
        from comgen.components.density import CompositionDensity, DensityConfig

        comps = [model.compose(im, str(i)) for i, im in enumerate(images)]
        dens = CompositionDensity(DensityConfig(), model.num_classes, model.background)
        vecs = np.stack([dens.vector(c.components, c.image_shape) for c in comps])
        if len(vecs) >= 2:
            self.density = dens.fit(vecs)

    # --- generation -----------------------------------------------------------------------
    def _ld_embedding(self, k_index: int, rng: np.random.Generator) -> float | None:
        """Write a low-density variant of token ``k_index`` into the <ld> slot; return its Mahalanobis radius."""
        s = self.cfg.sample
        got = self.sampler.sample(k_index, rng, tuple(s.shell), s.tries)
        if got is None:
            return None
        x, r = got
        emb = self.pipe.text_encoder.get_input_embeddings()
        lid = self.pipe.tokenizer.convert_tokens_to_ids(LD_TOKEN)
        with torch.no_grad():
            emb.weight[lid] = torch.as_tensor(x, dtype=emb.weight.dtype, device=emb.weight.device)
        return r

    def make(self, i: int, kind: str, rng: np.random.Generator) -> Anomaly | None:
        """One edit of kind ``kind`` on training image ``i``; None when it is impossible or rejected."""
        cfg, s = self.cfg, self.cfg.sample
        seq, cls = instance_tokens(self.class_maps[i], self.token_by_class, 0, self.min_area)
        fg = [c for c in range(1, self.num_classes)]
        te = plan_token_edit(kind, seq, cls, fg, self.tokens_of, rng)
        if te is None:
            return None
        params: dict = {}
        if LD_TOKEN in te.edited_seq:
            r = self._ld_embedding(self.tokens.index(self.tokens_of[te.classes[0]]), rng)
            if r is None:
                return None
            params["mahalanobis"] = round(r, 3)
        tpl = cfg.learn.prompt_template
        src_prompt, edit_prompt = tpl.format(tokens=" ".join(te.source_seq)), tpl.format(tokens=" ".join(te.edited_seq))
        _, src_ids = self.editor.encode_prompt([src_prompt])
        _, edit_ids = self.editor.encode_prompt([edit_prompt])
        src_pos = placeholder_positions(self.pipe.tokenizer, src_ids[0], te.source_seq, te.source_gate_pos)
        edit_pos = placeholder_positions(self.pipe.tokenizer, edit_ids[0], te.edited_seq, te.edited_gate_pos)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        res = self.editor.edit(self.images[i], src_prompt, src_pos, edit_prompt, edit_pos, s.steps, s.strength,
                               s.guidance_scale, s.mask_threshold, s.local_blend, s.blend_dilate, gen)
        if res.mask.mean() < s.min_mask_area:
            return None
        structural = kind in STRUCTURAL_EDITS
        density = None
        if self.density is not None and self.component_model is not None and not structural:
            comp = self.component_model.compose(res.image, "edit")
            vec = self.density.vector(comp.components, comp.image_shape)[None]
            density = float(self.density.score(vec)[0])
            if s.density_filter and not bool(self.density.is_low(vec)[0]):
                return None
        params.update({"strength": s.strength, "steps": s.steps, "source_prompt": src_prompt})
        edit = EditSpec(kind=kind, target=te.target, classes=te.classes, params=params)
        return Anomaly(image=res.image, mask=res.mask, edit=edit, source=self.sources[i], density=density,
                       backend=self.name, kind="structural" if structural else "logical",
                       extra={"gate": res.gate, "prompt": edit_prompt, "raw": res.raw})

    def generate(self, n: int, rng: np.random.Generator) -> Iterator[Anomaly]:
        if self.images is None:
            raise InputError("diffusion", "generator is not fitted; call fit() first")
        kinds = [str(k) for k in rng.permutation(self.cfg.sample.edit_kinds)]  # cycled: a balanced mix of kinds
        made, attempts, budget = 0, 0, max(8, n * self.cfg.sample.tries)
        while made < n and attempts < budget:
            kind = kinds[attempts % len(kinds)]
            attempts += 1
            a = self.make(int(rng.integers(len(self.images))), kind, rng)
            if a is not None:
                made += 1
                yield a
        if made == 0:
            raise InputError("diffusion", f"no anomaly could be made in {attempts} attempts (edits impossible "
                                          "for these components, or every edit was rejected)")
