"""Typed chapter settings: built from the profile, checked on construction, read-only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import pytest

from pemnb.profiles import load_profile
from pemnb.settings import ChapterSettings


@dataclass(frozen=True)
class Toy(ChapterSettings):
    CHAPTER: ClassVar[str] = "toy"
    PRESETS: ClassVar[Mapping[str, Mapping]] = {
        "smoke": {"steps": 2, "lr": 1, "kinds": ["lora", "ia3"], "lam_grid": None, "hparams": {"lora": 0.1}},
    }
    steps: int
    lr: float
    kinds: tuple[str, ...]
    lam_grid: tuple[float, ...] | None
    hparams: Mapping[str, float]
    note: str | None = None  # a field with a default may be left out of a preset

    @classmethod
    def derive(cls, profile, values):
        return {**values, "lam_grid": values["lam_grid"] or profile.lam_grid}


def test_built_from_the_profile_with_its_overrides_and_derived_values():
    s = Toy.for_profile(load_profile("smoke", chapters={"toy": {"steps": 5}}), kinds=("fft",))
    assert (s.steps, s.kinds, s.lam_grid) == (5, ("fft",), load_profile("smoke").lam_grid)
    assert s.lr == 1.0 and isinstance(s.lr, float) and s.note is None  # an int where a float is declared becomes a float
    assert s.as_dict()["kinds"] == ["fft"]
    assert "  steps    : 5" in s.describe().splitlines() and "  kinds    : ('fft',)" in s.describe().splitlines()


def test_lists_become_tuples_and_mappings_read_only():
    s = Toy.for_profile(load_profile("smoke"))
    assert s.kinds == ("lora", "ia3")
    with pytest.raises(TypeError):
        s.hparams["lora"] = 1.0
    with pytest.raises(AttributeError):
        s.steps = 3


def test_unknown_profile_field_or_type_is_named():
    with pytest.raises(ValueError, match="'small'.*known: \\['smoke'\\]"):
        Toy.for_profile(load_profile("small"))
    with pytest.raises(TypeError, match="unknown setting.*'stepz'"):
        Toy.for_profile(load_profile("smoke"), stepz=3)
    with pytest.raises(TypeError, match="'steps' must be"):
        Toy.for_profile(load_profile("smoke"), steps="3")
    with pytest.raises(TypeError, match="'kinds' must be"):
        Toy.for_profile(load_profile("smoke"), kinds=("lora", 3))
    with pytest.raises(TypeError, match="'steps' must be"):
        Toy.for_profile(load_profile("smoke"), steps=True)  # a bool is not a count


def test_a_preset_that_leaves_a_required_field_unset_is_named():
    @dataclass(frozen=True)
    class Partial(Toy):
        PRESETS: ClassVar[Mapping[str, Mapping]] = {"smoke": {"steps": 2, "lam_grid": None}}

    with pytest.raises(TypeError, match="leaves .*'hparams'"):
        Partial.for_profile(load_profile("smoke"))
