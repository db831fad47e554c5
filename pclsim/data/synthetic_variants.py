"""The built-in stream's nine further domains, so that `pclsim data synth --tasks 12` (or 15) gives a stream
long enough for order designs (`orders: all` stops at 8 tasks).

Each variant is one of the six base domains (pclsim.data.synthetic_domains) seen through another
acquisition: a fixed image transform (contrast inversion, gamma, flip, rotation, stain channels) and
changed difficulty knobs (anomaly size and contrast ranges, sensor-noise multiplier). Its images come
from its own seeds (the task name enters the seed), so a variant never repeats its base's images. A
variant has pixel masks when its base has (the mask gets the same geometric transform).

This module is only a table (no numpy at import): pclsim.data.synthetic generates from it and
pclsim.data.bmad reads a written variant with its base's BMAD folder layout.
"""

from __future__ import annotations

__all__ = ["VARIANTS", "base_domain"]

# name: (base domain, transform, knob overrides: size / contrast ranges, noise multiplier)
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "Brain_AD_T2": ("Brain_AD", "invert", {}),
    "Liver_AD_lowdose": ("Liver_AD", "none", {"noise": 2.5}),
    "Retina_RESC_AD_faint": ("Retina_RESC_AD", "gamma_dark", {"size": (0.04, 0.15), "contrast": (0.40, 0.80)}),
    "Chest_AD_portable": ("Chest_AD", "gamma_bright", {"noise": 1.8, "contrast": (0.25, 0.60)}),
    "Histopathology_AD_frozen": ("Histopathology_AD", "stain", {"contrast": (0.60, 1.10)}),
    "Retina_OCT2017_AD_flipped": ("Retina_OCT2017_AD", "flip", {}),
    "Brain_AD_small": ("Brain_AD", "rot90", {"size": (0.03, 0.12)}),
    "Liver_AD_inverted": ("Liver_AD", "invert", {"contrast": (0.30, 0.70)}),
    "Chest_AD_lateral": ("Chest_AD", "rot90", {}),
}


def base_domain(name: str) -> str:
    """The base domain of a synthetic task name (itself for the six base domains and unknown names)."""
    return VARIANTS[name][0] if name in VARIANTS else name
