"""Typed chapter settings: one frozen dataclass per chapter, built from the profile and checked on
construction, so what a page prints at its top is exactly what runs.

A chapter declares its fields and its presets::

    @dataclass(frozen=True)
    class Settings(ChapterSettings):
        CHAPTER: ClassVar[str] = "multitask"          # its key in Profile.chapters (overrides)
        PRESETS: ClassVar[Mapping[str, Mapping]] = {"smoke": {...}, "small": {...}, "paper": {...}}
        backbone: str
        lam_grid: tuple[float, ...]

and ``Settings.for_profile(profile)`` returns the profile's preset with ``profile.chapter(CHAPTER)`` and
the call's overrides on top. An unknown profile, an unknown field or a value of the wrong type raises at
once, naming it; lists become tuples and mappings read-only, so a setting cannot change after the page
printed it. A chapter that derives values from the profile (a default λ grid, say) overrides
:meth:`ChapterSettings.derive`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .profiles import Profile, frozen, plain


def _shown(value: Any) -> Any:
    """A value as a page prints it: mappings as dicts, tuples kept."""
    if isinstance(value, Mapping):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_shown(v) for v in value)
    return value


def _conforms(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (the shapes chapter settings use)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple or hint is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(_conforms(v, a) for v, a in zip(value, args)))
    if origin in (Mapping, dict) or hint in (Mapping, dict) or origin is typing.Mapping:
        if not isinstance(value, Mapping):
            return False
        return not args or all(_conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation these checks do not model: accept


@dataclass(frozen=True)
class ChapterSettings:
    """Base of every chapter's settings (see the module docstring)."""

    CHAPTER: ClassVar[str] = ""
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = frozen(getattr(self, f.name))
            if hints.get(f.name) is float and isinstance(value, int):
                value = float(value)
            if not _conforms(value, hints.get(f.name, Any)):
                raise TypeError(f"{type(self).__module__}.{type(self).__name__}: setting {f.name!r} must be "
                                f"{hints.get(f.name)}, got {value!r} ({type(value).__name__})")
            object.__setattr__(self, f.name, value)

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any):
        """The settings at `profile`: its preset, then ``profile.chapter(CHAPTER)``, then `overrides`."""
        if profile.name not in cls.PRESETS:
            raise ValueError(f"{cls.__module__}: no settings for profile {profile.name!r}; "
                             f"known: {sorted(cls.PRESETS)}")
        values = {**cls.PRESETS[profile.name], **dict(profile.chapter(cls.CHAPTER)), **overrides}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"{cls.__module__}: unknown setting(s) {unknown}; known: {sorted(names)}")
        values = cls.derive(profile, values)
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(n for n in required if n not in values)
        if missing:
            raise TypeError(f"{cls.__module__}: profile {profile.name!r} leaves {missing} unset")
        return cls(**values)

    @classmethod
    def derive(cls, profile: Profile, values: dict[str, Any]) -> dict[str, Any]:
        """Fill or normalise values from the profile (default: as given)."""
        return values

    def replace(self, **changes: Any):
        """A copy with `changes` (checked like a new instance)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable values (cache keys, provenance)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        """One line per setting, as a page prints them at its top."""
        width = max(len(f.name) for f in dataclasses.fields(self))
        return "\n".join(f"  {f.name:{width}s} : {_shown(getattr(self, f.name))}" for f in dataclasses.fields(self))
