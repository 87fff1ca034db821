"""Registry: every back-end name builds a protocol-conforming generator; unknown names fail with the list."""

from __future__ import annotations

import pytest

from comgen.errors import ConfigError
from comgen.generate.baselines import CutPasteGenerator, DraemGenerator, NsaGenerator
from comgen.generate.config import GenerateConfig, parse_options, parse_shard
from comgen.generate.protocol import AnomalyGenerator
from comgen.generate.registry import BACKENDS, build_generator, check_backend


@pytest.mark.parametrize("name,cls", [("cutpaste", CutPasteGenerator), ("draem", DraemGenerator),
                                      ("nsa", NsaGenerator)])
def test_baselines_build_with_their_options(name, cls) -> None:
    cfg = GenerateConfig.from_dict({"backend": name, "image_size": 48, "cutpaste": {"variants": ["scar"]},
                                    "nsa": {"clone": "mixed"}, "draem": {"textures": "skimage"}})
    gen = build_generator(name, cfg)
    assert isinstance(gen, cls) and isinstance(gen, AnomalyGenerator)
    assert gen.name == name and gen.image_size == 48
    assert gen.cfg is getattr(cfg, name)


def test_unknown_backend_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        build_generator("gan", GenerateConfig())
    for name in BACKENDS:
        assert name in str(err.value)
    assert check_backend("nsa") == "nsa"


def test_compositional_gets_shared_image_size_and_checks_its_options() -> None:
    pytest.importorskip("comgen.generate.compositional")
    gen = build_generator("compositional", GenerateConfig(image_size=64))
    assert gen.name == "compositional" and isinstance(gen, AnomalyGenerator)
    assert gen.cfg.image_size == 64
    gen = build_generator("compositional", GenerateConfig(image_size=64, compositional={"image_size": 32}))
    assert gen.cfg.image_size == 64  # one working resolution per generated set: the generate config's wins
    with pytest.raises(ConfigError, match="no_such_option"):
        build_generator("compositional", GenerateConfig(compositional={"no_such_option": 1}))


def test_diffusion_builds_or_says_it_is_unavailable() -> None:
    try:
        gen = build_generator("diffusion", GenerateConfig(image_size=32))
    except ConfigError as exc:
        assert "diffusion" in str(exc)
    else:
        assert gen.name == "diffusion" and isinstance(gen, AnomalyGenerator)


def test_config_yaml_round_trip_and_validation(tmp_path) -> None:
    cfg = GenerateConfig(backend="draem", n=7, shard="1/3", compositional={"low_density": False})
    path = cfg.save(tmp_path / "gen.yaml")
    back = GenerateConfig.load(path)
    assert back == cfg and back.hash() == cfg.hash()
    assert back.shard_index == (1, 3) and parse_shard(None) == (0, 1)
    with pytest.raises(ConfigError, match="at least 1"):
        GenerateConfig(n=0)
    with pytest.raises(ConfigError, match="unknown"):
        GenerateConfig.from_dict({"cutpaste": {"bogus": 1}})
    with pytest.raises(ConfigError, match="beta"):
        GenerateConfig.from_dict({"draem": {"beta": [0.5, 1.0]}})


def test_parse_options_from_a_command_line():
    assert parse_options('{"low_density": false, "logical_ratio": 1}', "--compositional") == {
        "low_density": False, "logical_ratio": 1}
    with pytest.raises(ConfigError, match="--compositional: not JSON"):
        parse_options("{low_density: false}", "--compositional")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_options('["logical_ratio"]', "--compositional")
