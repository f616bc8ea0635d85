"""Checks of the ``aug:`` knobs that take timm's policy strings, and the error every knob check raises.

timm parses RandAugment / AutoAugment strings when a transform is built, and silently skips what it
does not understand; :func:`check_policy` parses them when the config loads, so a typo in an
ablation fails at once, with the key and the expected form.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Optional

from timm.data.auto_augment import auto_augment_transform, rand_augment_transform

__all__ = ["AugError", "check_policy"]


class AugError(ValueError):
    """A bad ``aug:`` knob; ``key`` is the knob (``aug.<key>``) for the config loader's message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


_AUTO_AUGMENT_POLICIES = ("original", "originalr", "v0", "v0r", "3a")
# Sections of a RandAugment string that timm understands ("rand-m9-mstd0.5-inc1"). timm silently
# skips a section without digits ("rand-m9-mstdx") and an unknown op set ("tweight"), which would
# hide a typo in an ablation.
_RAND_SECTION = re.compile(r"^(m\d+|n\d+|p[\d.]+|mstd[\d.]+|mmax\d+|inc[01]|t(weights|3aw|3a))$")
_AUTO_SECTION = re.compile(r"^mstd[\d.]+$")


def check_policy(rand_augment: Optional[str], auto_augment: Optional[str]) -> None:
    """Validate RandAugment / AutoAugment strings the way the builder does, without building a recipe.

    Raises:
        AugError: both set, or a string timm would reject or silently misread.
    """
    if rand_augment and auto_augment:
        raise AugError(
            "auto_augment",
            f"aug.rand_augment={rand_augment!r} and aug.auto_augment={auto_augment!r} are both set; "
            "timm applies one policy: set the other to null",
        )
    if rand_augment:
        sections = rand_augment.split("-")
        bad = [s for s in sections[1:] if not _RAND_SECTION.match(s)]
        if sections[0] != "rand" or bad:
            raise AugError(
                "rand_augment",
                f"aug.rand_augment={rand_augment!r} is not a RandAugment string: expected 'rand' then "
                "dash-separated m<magnitude>, n<ops>, p<prob>, mstd<std>, mmax<max>, inc<0|1>, t<weights|3aw|3a> "
                "(e.g. 'rand-m9-mstd0.5-inc1')" + (f"; bad sections: {bad}" if bad and sections[0] == "rand" else ""),
            )
        _timm_accepts(rand_augment_transform, rand_augment, "rand_augment")
    if auto_augment:
        sections = auto_augment.split("-")
        if sections[0] not in _AUTO_AUGMENT_POLICIES or not all(_AUTO_SECTION.match(s) for s in sections[1:]):
            hint = " (RandAugment goes in aug.rand_augment)" if auto_augment.startswith("rand") else ""
            raise AugError(
                "auto_augment",
                f"aug.auto_augment={auto_augment!r} is not an AutoAugment policy: expected one of "
                f"{', '.join(_AUTO_AUGMENT_POLICIES)}, optionally followed by -mstd<std>{hint}",
            )
        _timm_accepts(auto_augment_transform, auto_augment, "auto_augment")


def _timm_accepts(factory: Callable[..., Any], config: str, key: str) -> None:
    try:
        factory(config, {})
    except Exception as exc:  # timm reports bad strings with bare asserts / KeyErrors
        raise AugError(key, f"aug.{key}={config!r} is rejected by timm: {exc!r}") from exc
