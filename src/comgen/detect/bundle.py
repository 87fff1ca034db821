"""``comgen export RUN --bundle DIR``: the whole scoring path of a trained detector as ONNX graphs + plain arrays.

Why a bundle and not one graph: the references an image is compared with are retrieved and aligned from the image's
own backbone features, and the composition prior segments and scores compositions; none of that is a network. The
bundle holds every piece ``Detector.predict`` uses, so ``comgen.export_runtime.OnnxDetector`` reproduces its scores
and maps with ONNX Runtime and NumPy only:

- ``backbone.onnx`` (image -> per-scale features) and ``head.onnx`` (features + aligned references -> logits): the
  CSDA network of ``--onnx``, cut where retrieval and alignment happen, so the backbone runs once per image;
- ``components.onnx``: the component model's backbone, when it cannot reuse the detector's features;
- ``composition.onnx``: the composition branch's network (class-map raster -> map and image logits);
- ``bank.safetensors`` (reference features, retrieval descriptors, projection), ``prior.safetensors`` (centroids,
  feature transform, the fitted mixture's weights, means and precision factors; ``prior_partner.safetensors`` the same
  for the prior's counterpart model, ``prior_seed1.safetensors``... for the models of the other learner seeds; the
  training images' per-class counts, ``counts_train``, when the detector scores count patterns),
  ``memory.safetensors`` (the patch memory);
- ``bundle.json``: settings, calibrations, the fusion rule, versions and the shape of every array.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file
from torch import nn

import comgen
from comgen.components.instances import OFF_OPTIONS, piece_host
from comgen.detect.predict import Detector
from comgen.detect.tiling import is_tiled
from comgen.errors import ConfigError, InputError
from comgen.features.memory import _projection
from comgen.io import atomic_write_json

GROWS_FORMAT = 7  # comgen.export_runtime.bundle.FORMAT: instance stages that grow parts or keep islands apart
PIECES_FORMAT = 6  # comgen.export_runtime.bundle.FORMAT: instance stages that find parts of a surface's colour
MODES_FORMAT = 5  # bundles whose instance stage splits classes by shape modes
BANDS_FORMAT = 4  # bundles whose instance stage reads bands as background
COUNTS_FORMAT = 3  # bundles whose fusion may use the count patterns
SEEDS_FORMAT = 2  # bundles whose prior averages several learner seeds
ONE_SEED_FORMAT = 1  # every other bundle, which runtimes that know only format 1 read correctly


class _Backbone(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(image))


class _Head(nn.Module):
    """The CSDA head with one named input per scale: features first, then the aligned references."""

    def __init__(self, head: nn.Module, scales: int, size: int) -> None:
        super().__init__()
        self.head, self.scales, self.size = head, scales, size

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.scales
        return self.head(list(inputs[:n]), list(inputs[n:]), (self.size, self.size))


class _ComponentFeatures(nn.Module):
    """``PixelFeaturizer.deep``: the learner's layers resized to the finest one, concatenated, channels last."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feats = list(self.backbone(image))
        size = feats[0].shape[-2:]
        feats = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                 for f in feats]
        return torch.cat(feats, 1).permute(0, 2, 3, 1)


class _Composition(nn.Module):
    """``branch_scores`` after ``encode``: the map logits upsampled to the working size, and the image logits."""

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, g = self.net(x, stats)
        return F.interpolate(m, size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0], g


def _export(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
            output_names: list[str], opset: int) -> dict[str, Any]:
    """Trace ``module`` to ``path`` with a dynamic batch axis; returns its manifest entry."""
    axes = {n: {0: "batch"} for n in [*input_names, *output_names]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed at the working size by design
        warnings.simplefilter("ignore", DeprecationWarning)
        outputs = module(*inputs)
        torch.onnx.export(module.eval(), inputs, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {"file": path.name, "inputs": {n: [None, *t.shape[1:]] for n, t in zip(input_names, inputs)},
            "outputs": {n: [None, *t.shape[1:]] for n, t in zip(output_names, outputs)}}


def _save(directory: Path, name: str, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    save_file(arrays, str(directory / name))
    manifest["arrays"][name] = {k: list(v.shape) for k, v in arrays.items()}


def _bank_arrays(det: Detector, feats: list[torch.Tensor]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reference features as stored, retrieval descriptors as the index holds them, the projection if any."""
    bank = det.bank
    kind = str(bank.index_kind)
    if kind not in ("flat", "sq8"):
        raise ConfigError(det.directory / "bank", f"the bank's index is {kind}; an approximate index search cannot "
                                                  "be reproduced exactly, so bundles need bank.index flat or sq8")
    desc = bank.index.reconstruct_n(0, bank.index.ntotal) if kind == "sq8" else bank.desc
    arrays = {f"scale{s}": p.numpy() for s, p in enumerate(bank.patches)}
    arrays["descriptors"] = np.asarray(desc, np.float32)
    cfg = bank.cfg
    d_in = int(feats[cfg.global_layer].shape[1]) * cfg.global_grid ** 2
    if cfg.global_dim and d_in > cfg.global_dim:
        arrays["projection"] = _projection(d_in, cfg.global_dim, cfg.seed).numpy()
    entry = {"n": len(bank), "index_kind": kind, "retrieval": "exact", "window": cfg.window,
             "global_grid": cfg.global_grid, "global_layer": cfg.global_layer,
             "scales": [list(p.shape[1:]) for p in bank.patches], "feature_dtype": cfg.feature_dtype}
    return arrays, entry


def _prior_arrays(prior: Any, shared_scale: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The component model's centroids and feature transform, the density's imputation and standardisation, and
    the fitted Gaussian mixture (exactly the one predict scores with: refitted at load, deterministic)."""
    model, density = prior.model, prior.density
    tf, gmm = model.transform, density.gmm
    arrays = {"centroids": model.centroids, "mean": tf.mean, "scale": tf.scale,
              "fill": density.fill, "mu": density.mu, "sd": density.sd,
              "gmm_weights": gmm.weights_, "gmm_means": gmm.means_,
              "gmm_precisions_cholesky": gmm.precisions_cholesky_}
    if tf.pca_components is not None:
        arrays.update(pca_mean=tf.pca_mean, pca_components=tf.pca_components)
    stage = None
    if model.instance_stage is not None:
        stage_arrays, stage = model.instance_stage.to_arrays()
        arrays.update(stage_arrays)
    entry = {"mean": prior.mean, "std": prior.std, "num_classes": model.num_classes, "background": model.background,
             "instance_stage": stage,
             "grid": density.cfg.grid, "area_spread": density.cfg.area_spread, "holes": density.cfg.holes,
             "covariance_type": gmm.covariance_type,
             "learner": model.cfg.portable_dict(), "shared_scale": shared_scale}
    return arrays, entry


def _instance_stages(prior: Any) -> list[Any]:
    """The instance stages of the prior's models (every learner seed, either model)."""
    priors = [prior, *getattr(prior, "members", [])]
    models = [p.model for p in priors] + [p.partner.model for p in priors if p.partner is not None]
    return [m.instance_stage for m in models if m.instance_stage is not None]


def _reads_bands(prior: Any) -> bool:
    """Whether an instance stage of the prior reads bands of light as background, which runtimes before format 4
    would not do."""
    return any(stage.shading for stage in _instance_stages(prior))


def _splits_by_modes(prior: Any) -> bool:
    """Whether an instance stage of the prior splits a class by shape modes, which runtimes before format 5 would
    ignore, and so give every part of a split class the class of its largest type."""
    return any(len(g.mode_parent) for stage in _instance_stages(prior) for g in stage.groups.values())


def _finds_pieces(prior: Any) -> bool:
    """Whether an instance stage of the prior finds parts of a surface's colour lying apart from it, which runtimes
    before format 6 would ignore, and so read those parts as the surface."""
    return any(piece_host(g) is not None for stage in _instance_stages(prior) for g in stage.groups)


def _grows_parts(prior: Any) -> bool:
    """Whether an instance stage of the prior grows faint parts over their edges or islands over their fringes, or
    keeps the islands apart from the blobs (an option of ``OFF_OPTIONS`` on): settings that runtimes before format 7
    do not know."""
    return any(getattr(stage.options, k) != off for stage in _instance_stages(prior) for k, off in OFF_OPTIONS.items())


def _prior_entry(prior: Any, shared_scale: int | None, out: Path, man: dict[str, Any], name: str) -> dict[str, Any]:
    """Write one learner seed's prior (``name``.safetensors) and its counterpart's (``name``_partner.safetensors);
    return its manifest entry."""
    arrays, entry = _prior_arrays(prior, shared_scale)
    if prior.counts is not None:
        arrays["counts_train"] = prior.counts.train
        entry["counts"] = {"mean": prior.counts_mean, "std": prior.counts_std, "pairs": prior.counts.pairs}
    _save(out, f"{name}.safetensors", arrays, man)
    if prior.partner is not None:
        arrays, entry["partner"] = _prior_arrays(prior.partner, shared_scale)
        entry["pair"] = {"mean": prior.pair_mean, "std": prior.pair_std}
        _save(out, f"{name}_partner.safetensors", arrays, man)
    return entry


def _write(det: Detector, out: Path, opset: int, openvino: bool, log: Callable[[str], None]) -> None:
    """Every file of the bundle into ``out`` (an empty folder)."""
    cfg, s = det.cfg, det.cfg.image_size
    model = det.model.cpu().eval()
    image = torch.rand(2, 3, s, s)
    with torch.no_grad():
        feats = model.features(image)
    n = len(feats)
    man: dict[str, Any] = {"format": ONE_SEED_FORMAT, "kind": "comgen detector bundle", "comgen": comgen.__version__,
                           "torch": torch.__version__, "onnx": importlib.metadata.version("onnx"), "opset": opset,
                           "image_size": s, "tiles": cfg.tiles, "k": cfg.head.k, "batch_size": cfg.batch_size,
                           "map_carries_score": bool(cfg.map_carries_score),
                           "map_peak_width": float(cfg.map_peak_width), "map_peak": det.map_peak,
                           "backbone": det.calibration.get("backbone"),
                           "calibration": {k: float(det.calibration[k]) for k in
                                           ("score_mean", "score_std", "map_mean", "map_std", "threshold")},
                           "fusion": det.fusion.to_dict(), "graphs": {}, "arrays": {}}
    names = [f"feat_{i}" for i in range(n)]
    man["graphs"]["backbone"] = _export(_Backbone(model.backbone), (image,), out / "backbone.onnx", ["image"],
                                        names, opset)
    refs = tuple(torch.randn(2, cfg.head.k, *f.shape[1:]) for f in feats)
    man["graphs"]["head"] = _export(_Head(model.head, n, s), (*feats, *refs), out / "head.onnx",
                                    [*names, *[f"ref_{i}" for i in range(n)]], ["map_logits", "image_logit"], opset)
    arrays, man["bank"] = _bank_arrays(det, feats)
    _save(out, "bank.safetensors", arrays, man)
    man["prior"] = man["composition"] = man["memory"] = man["global"] = None
    if det.prior is not None:
        man["format"] = GROWS_FORMAT if _grows_parts(det.prior) else \
            PIECES_FORMAT if _finds_pieces(det.prior) else \
            MODES_FORMAT if _splits_by_modes(det.prior) else \
            BANDS_FORMAT if _reads_bands(det.prior) else \
            COUNTS_FORMAT if det.prior.counts is not None else \
            SEEDS_FORMAT if det.prior.members else ONE_SEED_FORMAT
        # every model of the prior (the counterparts, the other learner seeds) has the same learner settings, so
        # the same backbone and feature scale
        man["prior"] = _prior_entry(det.prior, det._prior_scale, out, man, "prior")
        if det.prior.members:
            man["prior"]["members"] = [_prior_entry(m, det._prior_scale, out, man, f"prior_seed{i}")
                                       for i, m in enumerate(det.prior.members, 1)]
            man["prior"]["ensemble"] = {"mean": det.prior.ensemble_mean, "std": det.prior.ensemble_std}
        learner = det.prior.model.cfg
        if det._prior_scale is None and learner.use_backbone:
            bb = det.prior.model._featurizer().backbone  # the learner's own backbone, identity-checked
            x = torch.rand(2, 3, learner.image_size, learner.image_size)
            man["graphs"]["components"] = _export(_ComponentFeatures(bb), (x,), out / "components.onnx", ["image"],
                                                  ["deep"], opset)
        if det.composition is not None:
            net, ccfg, k, cal = det.composition
            g = ccfg.grid
            x, st = torch.rand(2, k + 2, g, g), torch.rand(2, 2 * (k - 1))
            man["graphs"]["composition"] = _export(_Composition(net.eval(), s), (x, st), out / "composition.onnx",
                                                   ["x", "stats"], ["map_logits", "image_logit"], opset)
            man["composition"] = {"grid": g, "edit_size": ccfg.edit_size, "num_classes": k,
                                  **{key: float(v) for key, v in cal.items()}}
    if det.memory is not None:
        memory, cal = det.memory
        _save(out, "memory.safetensors", {"patches": memory.patches}, man)
        man["memory"] = {"scales": list(memory.cfg.scales), "neighbourhood": memory.cfg.neighbourhood,
                         "blur_sigma": memory.cfg.blur_sigma, **{key: float(v) for key, v in cal.items()}}
    if det.global_branch is not None:
        branch, cal = det.global_branch
        _save(out, "global.safetensors", branch.arrays(), man)
        man["global"] = {"scales": list(branch.cfg.scales), "grid": branch.cfg.grid, "num_scales": len(branch.means),
                         **{key: float(v) for key, v in cal.items()}}
    if openvino:
        man["openvino"] = _openvino(out, man)
        log(f"OpenVINO IR written beside each graph ({man['openvino']['version']})")
    atomic_write_json(out / "bundle.json", man)


def _openvino(out: Path, man: dict[str, Any]) -> dict[str, Any]:
    """Convert every ONNX graph of the bundle to OpenVINO IR (float32 weights kept: no fp16 compression)."""
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("--openvino", "openvino is not installed; pip install 'comgen[openvino]'") from None
    for entry in man["graphs"].values():
        onnx_file = out / entry["file"]
        ov.save_model(ov.convert_model(str(onnx_file)), str(onnx_file.with_suffix(".xml")), compress_to_fp16=False)
    return {"version": ov.get_version(), "graphs": [Path(e["file"]).with_suffix(".xml").name
                                                    for e in man["graphs"].values()]}


def export_bundle(run_dir: str | Path, out: str | Path, opset: int = 17, openvino: bool = False,
                  log: Callable[[str], None] = print, detector: Detector | None = None) -> Path:
    """Write the bundle of ``run_dir``'s detector (or of ``detector``, already loaded) to the folder ``out``,
    complete or not at all.

    ``out`` must not exist, be empty, or hold an earlier bundle (replaced only once the new one is complete).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "bundle.json").is_file())):
        raise InputError(out, "exists and is not an export bundle; choose an empty or new folder for --bundle")
    if importlib.util.find_spec("onnx") is None:  # torch.onnx.export writes through it
        raise ConfigError("--bundle", "needs the ONNX tools: pip install 'comgen[export]'")
    det = detector or Detector.load(run_dir, device="cpu")
    if is_tiled(det.cfg):  # the runtime reproduces untiled scoring only (tile grids and blending are not mirrored)
        raise ConfigError("--bundle", "tiled detectors cannot be bundled; export an untiled detector, or serve the "
                                      "tiled one with `comgen serve`")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        _write(det, tmp, opset, openvino, log)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=".bundle-old-", dir=out.parent))
            os.replace(out, old / "bundle")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["export_bundle"]
