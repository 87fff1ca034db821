from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from comgen.config import ConfigBase
from comgen.errors import ConfigError


@dataclass
class Inner(ConfigBase):
    k: int = 3
    layers: tuple[int, ...] = (1, 2)


@dataclass
class Outer(ConfigBase):
    name: str = "x"
    ratio: float = 0.5
    path: Path | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = Outer(name="y", ratio=1, path=Path("/a/b"), inner=Inner(k=5, layers=(2, 3)))
    cfg.save(tmp_path / "c.yaml")
    back = Outer.load(tmp_path / "c.yaml")
    assert back == cfg
    assert isinstance(back.ratio, float) and isinstance(back.inner.layers, tuple)
    assert back.hash() == cfg.hash() and back.hash() != Outer().hash()


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("name: a\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        Outer.load(tmp_path / "c.yaml")


def test_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected int"):
        Inner.from_dict({"k": "three"})


def test_retired_options_load_at_their_built_in_value_and_are_refused_otherwise():
    """A config file written before an option was removed still loads when it holds the option's built-in value."""
    from comgen.components.features import LearnerConfig
    from comgen.generate.config import CompositionalConfig

    assert CompositionalConfig.from_dict({"hole_fill": "reference", "twin_classes": False}) == CompositionalConfig()
    assert LearnerConfig.from_dict({"split_together_of": "either"}) == LearnerConfig()
    with pytest.raises(ConfigError, match="hole_fill: this option was removed"):
        CompositionalConfig.from_dict({"hole_fill": "surface"})
    assert "hole_fill" not in CompositionalConfig().to_dict()
