"""Colour matching of a swapped crop to its target, before the paste-back.

The generator can shift a face's colour and brightness away from the target's (the source's skin
and lighting leak through, or an under-trained generator drifts). `match_colour` moves the swap's
colour statistics onto the target's inside the face region: per channel of CIE Lab (D65), the
swap's mean and standard deviation become the target's, weighted by the region mask (Reinhard et
al.'s colour transfer, restricted to the face). Lab separates lightness from colour, so a
brightness change does not tint the face. Outside the mask the crop is unchanged by construction of
the paste-back mask, which is the same region.
"""

from __future__ import annotations

import numpy as np

COLOURS = ("none", "lab")
_XYZ_FROM_RGB = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE = _XYZ_FROM_RGB.sum(axis=1)  # D65 white of sRGB
_EPS, _KAPPA = 216 / 24389, 24389 / 27


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float Lab (L in [0, 100])."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _XYZ_FROM_RGB.T / _WHITE
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) float Lab -> (..., 3) uint8 sRGB (out-of-gamut values clipped)."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f**3 > _EPS, f**3, (116 * f - 16) / _KAPPA) * _WHITE
    linear = np.clip(xyz @ _RGB_FROM_XYZ.T, 0.0, 1.0)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)


def _stats(lab: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = (lab * w[..., None]).sum((0, 1)) / w.sum()
    std = np.sqrt((((lab - mean) ** 2) * w[..., None]).sum((0, 1)) / w.sum())
    return mean, std


def match_colour(swap: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 swap with the target's Lab mean and spread inside `weights` ((S, S) in [0, 1])."""
    if weights.sum() < 1.0:
        return swap
    s_lab, t_lab = rgb_to_lab(swap), rgb_to_lab(target)
    s_mean, s_std = _stats(s_lab, weights)
    t_mean, t_std = _stats(t_lab, weights)
    scale = np.where(s_std > 1e-6, t_std / np.maximum(s_std, 1e-6), 1.0)
    return lab_to_rgb((s_lab - s_mean) * scale + t_mean)
