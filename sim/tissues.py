"""Acoustic properties of the tissue classes the phantoms are built from.

Echogenicity is the backscatter amplitude relative to liver (dB); attenuation in dB/cm/MHz (one way);
impedance in MRayl sets the specular echo at a boundary; texture is the spread (in log amplitude) of a
coarse modulation of the scatterer strength that gives organs their own grain beyond pure speckle.
Values are typical textbook figures; phantoms perturb echogenicity with their seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tissue:
    name: str
    echo_db: float  # backscatter amplitude re liver; -inf-like (<= -100) means no scatterers
    atten_db_cm_mhz: float
    impedance_mrayl: float
    texture: float = 0.0


# Index = label stored in label maps. 0 is coupling gel / air outside the body.
TISSUES: tuple[Tissue, ...] = (
    Tissue("outside", -200.0, 0.0, 1.50),
    Tissue("skin", 4.0, 1.2, 1.60, 0.20),
    Tissue("fat", -9.0, 0.6, 1.38, 0.15),
    Tissue("muscle", -5.0, 1.0, 1.70, 0.35),
    Tissue("liver", 0.0, 0.5, 1.65, 0.12),
    Tissue("kidney", -5.0, 0.8, 1.62, 0.10),
    Tissue("renal_sinus", 5.0, 0.7, 1.45, 0.30),
    Tissue("blood", -200.0, 0.18, 1.61),
    Tissue("fluid", -200.0, 0.01, 1.52),
    Tissue("bone", 8.0, 20.0, 7.80, 0.30),
    Tissue("vessel_wall", 4.0, 0.8, 1.75, 0.10),
    Tissue("myocardium", -3.0, 0.7, 1.70, 0.25),
    Tissue("soft_tissue", -3.0, 0.6, 1.63, 0.20),
    Tissue("thyroid", 3.0, 0.6, 1.64, 0.08),
    Tissue("calcification", 15.0, 12.0, 3.50),
    Tissue("qa_tissue", 0.0, 0.5, 1.63),
)

LABEL: dict[str, int] = {t.name: i for i, t in enumerate(TISSUES)}
# Classes with no scatterers: anechoic on the display.
ANECHOIC = frozenset(i for i, t in enumerate(TISSUES) if t.echo_db <= -100.0)


def property_arrays(
    echo_offsets_db: dict[str, float] | None = None, atten_override: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-label arrays: scatterer amplitude (linear), attenuation, impedance, texture."""
    echo_offsets_db = echo_offsets_db or {}
    atten_override = atten_override or {}
    amp = np.zeros(len(TISSUES), dtype=np.float32)
    att = np.zeros(len(TISSUES), dtype=np.float32)
    imp = np.zeros(len(TISSUES), dtype=np.float32)
    tex = np.zeros(len(TISSUES), dtype=np.float32)
    for i, t in enumerate(TISSUES):
        if t.echo_db > -100.0:
            amp[i] = 10.0 ** ((t.echo_db + echo_offsets_db.get(t.name, 0.0)) / 20.0)
        att[i] = atten_override.get(t.name, t.atten_db_cm_mhz)
        imp[i] = t.impedance_mrayl
        tex[i] = t.texture
    return amp, att, imp, tex
