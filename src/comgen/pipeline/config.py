"""``RunConfig``: every stage's config in one YAML, so ``comgen run --config run.yaml`` reproduces a whole run.

``image_size`` and ``seed`` are set once here and pushed into every stage (``resolved()``), so the stages can never
disagree on the working resolution. The one exception is ``learn_size``: the component learner may segment at a
finer size than the detector runs (its class maps are resized to each image), because thin parts vanish at 128 px.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from comgen.components.features import LearnerConfig
from comgen.config import ConfigBase
from comgen.detect.config import DetectorConfig
from comgen.errors import ConfigError
from comgen.evaluate.run import EvalConfig
from comgen.generate.config import GenerateConfig
from comgen.generate.registry import BACKENDS
from comgen.masks.run import MaskConfig

COMPONENT_BACKENDS = ("compositional", "diffusion")


@dataclass
class RunConfig(ConfigBase):
    image_size: int = 256
    seed: int = 0
    backend: str = "compositional"  # anomaly source the detector is trained on
    n_anomalies: int = 300
    learn_size: int = 0  # working size of the component learner; 0 = image_size (small parts need >= 256 px)
    mask: bool = True  # run the residual-mask stage (Stage II) and report its IoU
    learn: LearnerConfig = field(default_factory=LearnerConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ConfigError("run.image_size", f"{self.image_size} px is too small (need >= 16)")
        if self.learn_size and self.learn_size < 16:
            raise ConfigError("run.learn_size", f"{self.learn_size} px is too small (need >= 16, or 0)")
        if self.n_anomalies < 1:
            raise ConfigError("run.n_anomalies", f"{self.n_anomalies}: need at least 1")
        self._check_backends()

    def _check_backends(self) -> None:
        """Every back-end name must be a known one. Why: the name becomes a folder of the run that a stage empties,
        so a path there (``/data``, ``../..``) must fail here, before anything runs."""
        named = {"run.backend": self.backend}
        for section in ("generate", "detector"):
            value = getattr(getattr(self, section), "backend", None)
            if value is not None:
                named[f"run.{section}.backend"] = value
        for where, name in named.items():
            if name not in BACKENDS:
                raise ConfigError(where, f"unknown generator {name!r}; choose one of {', '.join(BACKENDS)}")

    @property
    def learns_components(self) -> bool:
        return self.backend in COMPONENT_BACKENDS

    def resolved(self) -> RunConfig:
        """A copy whose stage configs all use this run's image size, seed, backend and anomaly count."""
        s = self.image_size
        generate = GenerateConfig(**{**vars(self.generate), "backend": self.backend, "n": self.n_anomalies,
                                     "image_size": s, "seed": self.seed})
        masks = self.masks.replace(bank=self.masks.bank.replace(image_size=s))
        detector = self.detector.replace(image_size=s, backend=self.backend, seed=self.seed)
        return self.replace(learn=self.learn.replace(image_size=self.learn_size or s, seed=self.seed),
                            generate=generate, masks=masks, detector=detector)
