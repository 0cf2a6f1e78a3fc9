"""A deterministic synthetic brain-MRI "phantom" dataset, for tests and demos.

Each image is a T1-post-contrast-like slice drawn from scratch: a skull ring of varying
thickness, cortex with sulci, white matter, ventricles, a skull base with the sella,
then a bias field and Rician noise. The four classes differ only by a lesion whose
*local appearance* (shape, texture, oedema, attachment to the skull, size) gives the
class away; its position is fixed in head coordinates, and the head is freely
rotated, scaled, shifted and mirrored, so a linear model on raw pixels does poorly
(about 0.4 accuracy) while a CNN can learn the lesions' look. Small bright blobs in
every class keep simple intensity statistics from telling the classes apart.
``benchmarks/phantom_learnability.py`` measures both.

Geometry is computed in *head coordinates* ``(u, v)``: the head outline is roughly the
unit circle, ``v`` points to the top of the head and the skull base (with the sella
and the pituitary) is at the bottom centre, ``(0, -1)``.

The data is synthetic and says so in its ``dataset.json``; it is not real MRI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from suite.data.cache import cache_dir
from suite.data.discover import CARD_NAME

PHANTOM_VERSION = 1  # bump whenever the rendered images change
CLASSES = ("glioma", "meningioma", "pituitary", "no_tumor")
SPLITS = ("Training", "Testing")
PLANES = ("axial", "coronal", "sagittal")
RECOMMENDED_IMAGE_SIZE = 64
RECOMMENDED_EPOCHS = 12
DESCRIPTION = (
    "Synthetic brain-MRI-like phantom slices drawn by a program; this is not real MRI "
    "and must not be used to judge clinical performance."
)
_REF_SIZE = 128  # pixel-valued parameters are given for 128 px and scaled from it
_ANGLES = np.linspace(-np.pi, np.pi, 1025)  # where periodic profiles are tabulated


@dataclasses.dataclass(frozen=True)
class _Head:
    """Pose and shape of one head; lengths are in head units unless named ``*_px``.

    Attributes:
        plane: which of ``PLANES`` the slice imitates.
        centre_px: head centre ``(x, y)`` in pixels, ``y`` pointing down.
        radius_px: head radius in pixels.
        aspect: width / height of the outline.
        angle: in-plane rotation in radians.
        mirror: whether left and right are swapped.
        outer_r: radius of the outline, tabulated at ``_ANGLES``.
        inner_r: radius of the inner table of the skull, likewise.
        skin: scalp thickness.
        csf: width of the CSF gap between skull and brain.
        base_height: how far the skull base rises into the head at the midline.
    """

    plane: str
    centre_px: tuple[float, float]
    radius_px: float
    aspect: float
    angle: float
    mirror: bool
    outer_r: np.ndarray
    inner_r: np.ndarray
    skin: float
    csf: float
    base_height: float

    def outer(self, phi):
        """Radius of the head outline at polar angle ``phi``."""
        return _lookup(phi, self.outer_r)

    def inner(self, phi):
        """Radius of the inner table of the skull at ``phi``."""
        return _lookup(phi, self.inner_r)

    def brain(self, phi):
        """Radius of the brain surface at ``phi``."""
        return _lookup(phi, self.inner_r) - self.csf

    def sella_top(self) -> float:
        """``v`` of the top of the skull base at the midline, where the sella sits."""
        return -self.inner(-np.pi / 2) + self.base_height


class _Slice(NamedTuple):
    """A rendered slice with the head pose and lesion it was drawn with."""

    image: np.ndarray
    head: _Head
    lesion: _Lesion | None


def render_slice(rng: np.random.Generator, label: str, size: int = 128) -> np.ndarray:
    """Draw one phantom slice.

    Args:
        rng: the only source of randomness, so a given generator state always gives
            the same image. The same state gives the same head, anatomy and noise for
            every label: only the lesion (and the tissue it pushes aside) differs.
        label: one of ``CLASSES``.
        size: width and height in pixels.

    Returns:
        ``(size, size)`` uint8 greyscale image.
    """
    return _render(rng, label, size).image


def _render(rng: np.random.Generator, label: str, size: int) -> _Slice:
    if label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASSES}")
    # Separate streams, so that drawing a lesion leaves the rest of the slice unchanged.
    anatomy_rng, lesion_rng, scan_rng = map(np.random.default_rng, rng.integers(2**63, size=3))
    head = _sample_head(anatomy_rng, size)
    tissue = _sample_tissue(anatomy_rng)
    fields = _Fields(anatomy_rng, size)
    u, v = _head_grid(head, size)
    lesion = _sample_lesion(lesion_rng, head, label)
    uw, vw = _mass_effect(u, v, lesion)
    img, brain = _anatomy(head, tissue, fields, u, v, uw, vw)
    img = _skull_base(head, tissue, u, v, img)
    img = _paint_lesion(head, tissue, fields, lesion, u, v, brain, img)
    img = _distractors(anatomy_rng, head, u, v, brain, img)
    return _Slice(_acquire(scan_rng, img, size), head, lesion)


# --- sampling -----------------------------------------------------------------------


def _lookup(phi, table):
    """Value of a profile tabulated at ``_ANGLES``, at any angle(s) ``phi``."""
    return np.interp(np.mod(np.add(phi, np.pi), 2 * np.pi) - np.pi, _ANGLES, table)


def _wobble(rng, ks, max_amp) -> np.ndarray:
    """A random smooth periodic profile: a few harmonics, tabulated at ``_ANGLES``.

    Tabulated because it is evaluated on every pixel, several times per image.
    """
    table = np.zeros_like(_ANGLES)
    for k in ks:
        table += rng.uniform(0, max_amp) * np.cos(k * _ANGLES + rng.uniform(0, 2 * np.pi))
    return table


def _sample_head(rng: np.random.Generator, size: int) -> _Head:
    plane = PLANES[rng.integers(len(PLANES))]
    # Axial heads are long front-to-back (tall), sagittal ones wide, coronal near round.
    aspect = {"axial": (0.74, 0.88), "coronal": (0.86, 1.0), "sagittal": (1.08, 1.25)}[plane]
    aspect = rng.uniform(*aspect)
    radius = size * rng.uniform(0.35, 0.47)
    extent = radius * max(np.sqrt(aspect), 1 / np.sqrt(aspect)) * 1.06
    # Shift anywhere that keeps the whole head (give or take a pixel) in the picture.
    room = max(size / 2 - extent - 1, 0.0)
    centre = size / 2 + rng.uniform(-room, room, size=2)
    outer = 1.0 + _wobble(rng, (2, 3, 4), 0.025)
    skin = rng.uniform(0.025, 0.045)
    # Skull thickness varies around the head, as in real skulls.
    skull = rng.uniform(0.06, 0.12) * (1.0 + _wobble(rng, (1, 2, 3, 5), 0.22))
    return _Head(
        plane=plane,
        centre_px=(float(centre[0]), float(centre[1])),
        radius_px=radius,
        aspect=aspect,
        angle=rng.uniform(0, 2 * np.pi),
        mirror=bool(rng.integers(2)),
        outer_r=outer,
        inner_r=outer - skin - np.maximum(skull, 0.03),
        skin=skin,
        csf=rng.uniform(0.012, 0.03),
        base_height=rng.uniform(0.22, 0.32),
    )


def _sample_tissue(rng: np.random.Generator) -> dict[str, float]:
    """Intensities of the tissues, jittered per image as scanners and protocols differ."""
    return {
        "skin": rng.uniform(0.35, 0.55),
        "skull": rng.uniform(0.85, 1.0),
        "csf": rng.uniform(0.08, 0.18),
        "gm": rng.uniform(0.38, 0.48),
        "wm": rng.uniform(0.58, 0.68),
        "air": rng.uniform(0.02, 0.06),
    }


class _Fields:
    """Smooth random textures on the pixel grid (unit standard deviation)."""

    def __init__(self, rng: np.random.Generator, size: int):
        scale = size / _REF_SIZE
        self.fine = self._field(rng, size, 0.8 * scale)
        self.coarse = self._field(rng, size, 2.5 * scale)
        self.wobble = self._field(rng, size, 6.0 * scale)

    @staticmethod
    def _field(rng, size, sigma):
        f = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
        return f / (f.std() + 1e-12)


def _head_grid(head: _Head, size: int):
    """Head coordinates ``(u, v)`` of every pixel centre."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    x = x - head.centre_px[0]
    y = head.centre_px[1] - y  # y up, like v
    c, s = np.cos(head.angle), np.sin(head.angle)
    xr, yr = c * x + s * y, -s * x + c * y
    u = xr / (head.radius_px * np.sqrt(head.aspect))
    v = yr * np.sqrt(head.aspect) / head.radius_px
    return (-u if head.mirror else u), v


def _polar(u, v):
    return np.hypot(u, v), np.arctan2(v, u)


def _inside(dist, edge):
    """Soft membership from a signed distance (positive inside), ramped over ``edge``.

    Ramping over about a pixel anti-aliases the edges that would otherwise shimmer
    under rotation.
    """
    return np.clip(0.5 + dist / edge, 0.0, 1.0)


def _ellipse(u, v, cu, cv, a, b, angle=0.0):
    """Approximate signed distance to an ellipse (positive inside)."""
    du, dv = u - cu, v - cv
    c, s = np.cos(angle), np.sin(angle)
    x, y = c * du + s * dv, -s * du + c * dv
    return (1.0 - np.hypot(x / a, y / b)) * min(a, b)


def _paint(img, mask, value):
    return img * (1.0 - mask) + value * mask


# --- anatomy ------------------------------------------------------------------------


def _anatomy(head, tissue, fields, u, v, uw, vw):
    """Scalp, skull and brain. The brain is drawn at the mass-effect-warped ``(uw, vw)``.

    Returns:
        The image and the soft brain mask (in the unwarped frame).
    """
    edge = 1.2 / head.radius_px
    rho, phi = _polar(u, v)
    outer, inner = head.outer(phi), head.inner(phi)
    skull_out = outer - head.skin
    img = tissue["skin"] * (1 + 0.08 * fields.fine) * _inside(outer - rho, edge)
    # Bright diploe between two darker bony tables.
    frac = np.clip((rho - inner) / (skull_out - inner), 0.0, 1.0)
    bone = tissue["skull"] * (0.35 + 0.65 * np.sin(np.pi * frac) ** 0.6)
    bone = bone * (1 + 0.1 * fields.coarse)
    img = _paint(img, _inside(skull_out - rho, edge), bone)
    img = _paint(img, _inside(inner - rho, edge), tissue["csf"])

    rho_w, phi_w = _polar(uw, vw)
    surface = head.brain(phi_w)
    # The skull does not move: only what is inside it is pushed around.
    brain = _inside(surface - rho_w, edge) * _inside(inner - rho, edge)
    img = _paint(img, brain, _parenchyma(head, tissue, fields, rho_w, phi_w, surface, edge))
    img = _paint(img, _csf_spaces(head, uw, vw, edge) * brain, tissue["csf"])
    if head.plane == "sagittal":
        img = _hindbrain(head, tissue, fields, uw, vw, edge, img)
    else:
        img = _paint(img, _deep_grey(uw, vw, edge) * brain, tissue["gm"])
    return img, _inside(head.brain(phi) - rho, edge)


def _parenchyma(head, tissue, fields, rho, phi, surface, edge):
    """Grey-matter ribbon folded into gyri over white matter, with CSF in the sulci."""
    b = rho / surface  # 0 at the centre, 1 at the brain surface
    k = {"axial": 22, "coronal": 18, "sagittal": 24}[head.plane]
    gyri = np.sin(k * phi + 3.0 * fields.wobble + 0.5 * fields.coarse)
    depth = 0.16 + 0.05 * fields.coarse.clip(-2, 2)
    wm_edge = 1.0 - 0.07 - depth * (1.0 - np.abs(gyri))
    wm = _inside((wm_edge - b) * surface, edge * 2)
    value = tissue["gm"] + (tissue["wm"] - tissue["gm"]) * wm
    value = value * (1 + 0.05 * fields.fine + 0.03 * fields.coarse)
    # Sulci widen towards the surface; their distance is |gyri| over its slope k / rho.
    width = 0.08 + 0.3 * np.clip((b - (1 - depth)) / depth, 0, 1)
    sulcus = _inside((width - np.abs(gyri)) * rho / k, edge) * (b > 1 - depth)
    # Half-strength sulci: visible anatomy, but not so busy that it drowns the lesions.
    return _paint(value, 0.5 * sulcus, tissue["csf"])


def _csf_spaces(head, u, v, edge):
    """Ventricles and fissures for the slice's plane, as a soft mask."""
    if head.plane == "axial":
        parts = []
        for side in (-1, 1):
            parts.append(_ellipse(u, v, side * 0.1, 0.06, 0.055, 0.26, side * 0.2))
            parts.append(_ellipse(u, v, side * 0.16, -0.2, 0.05, 0.11, -side * 0.6))
        parts.append(np.where(np.abs(v) > 0.36, 0.012 - np.abs(u), -1.0))
    elif head.plane == "coronal":
        parts = [_ellipse(u, v, side * 0.1, 0.16, 0.045, 0.13, side * 0.6) for side in (-1, 1)]
        parts.append(_ellipse(u, v, 0.0, -0.04, 0.014, 0.09))
        parts += [_ellipse(u, v, side * 0.42, -0.28, 0.025, 0.05) for side in (-1, 1)]
        parts.append(np.where(v > 0.33, 0.012 - np.abs(u), -1.0))
        # Sylvian fissures run in from the sides, above the temporal lobes.
        parts += [_ellipse(u, v, side * 0.55, -0.12, 0.2, 0.012, side * 0.25) for side in (-1, 1)]
    else:
        bent = v - 0.12 + 0.8 * u**2  # the lateral ventricle arches over the thalamus
        parts = [_ellipse(u, bent, 0.02, 0.0, 0.32, 0.06)]
    return _inside(np.max(parts, axis=0), edge)


def _deep_grey(u, v, edge):
    """Basal ganglia and thalami beside the ventricles (axial and coronal planes)."""
    parts = [_ellipse(u, v, side * 0.27, -0.02, 0.09, 0.16, side * 0.3) for side in (-1, 1)]
    return 0.6 * _inside(np.max(parts, axis=0), edge * 2)


def _hindbrain(head, tissue, fields, u, v, edge, img):
    """Cerebellum with its folia, brainstem and corpus callosum of a sagittal slice."""
    d = _ellipse(u, v, -0.42, -0.42, 0.3, 0.24, 0.3)
    img = _paint(img, _inside(d + 0.025, edge), tissue["csf"])  # tentorium / cistern
    # Arbor vitae: white-matter branches fanning out from the hilum, grey folia around.
    r, theta = _polar(u + 0.3, v + 0.35)
    folia = np.abs(np.sin(16 * theta + 1.5 * fields.wobble))
    wm = _inside((0.12 + 0.14 * folia - r), edge * 2)
    cereb = tissue["gm"] + (tissue["wm"] - tissue["gm"]) * wm
    img = _paint(img, _inside(d, edge), cereb * (1 + 0.05 * fields.fine))
    fissures = _inside((0.15 - folia) * r / 16, edge) * (r > 0.2)
    img = _paint(img, _inside(d, edge) * fissures, tissue["csf"])
    img = _paint(img, _inside(_ellipse(u, v, -0.08, -0.42, 0.09, 0.26, -0.35), edge), tissue["wm"])
    arch = v - 0.2 + 0.8 * u**2
    callosum = _ellipse(u, arch, 0.02, 0.0, 0.36, 0.035)
    return _paint(img, _inside(callosum, edge), tissue["wm"] * 1.08)


def _skull_base(head, tissue, u, v, img):
    """Bony skull base rising at the midline, with the sphenoid sinus and the sella.

    Drawn in every class, so the pituitary lesion is told apart by what sits in the
    sella, not by the presence of the bony landmarks around it.
    """
    edge = 1.2 / head.radius_px
    top = head.sella_top()
    rise = -head.inner(-np.pi / 2) + head.base_height * np.exp(-((u / 0.2) ** 2))
    in_head = _inside(head.outer(np.arctan2(v, u)) - np.hypot(u, v), edge)
    img = _paint(img, _inside(rise - v, edge) * in_head, tissue["skull"] * 0.25)  # cortex
    marrow = _inside(rise - 0.045 - v, edge) * in_head
    img = _paint(img, marrow, tissue["skull"] * 0.65)
    img = _paint(img, _inside(_ellipse(u, v, 0, top - 0.13, 0.08, 0.05), edge), tissue["air"])
    cup = _ellipse(u, v, 0, top - 0.005, 0.07, 0.05)
    img = _paint(img, _inside(cup, edge), tissue["csf"])
    gland = _ellipse(u, v, 0, top - 0.015, 0.055, 0.028)  # a normal, flat, dim gland
    return _paint(img, _inside(gland, edge), tissue["gm"])


# --- lesions ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Lesion:
    """A lesion in head coordinates: its kind, centre, radius and drawing parameters."""

    kind: str
    centre: tuple[float, float]
    radius: float
    push: float  # radius of the mass effect, 0 for none
    params: dict


def _sample_lesion(rng, head: _Head, label: str) -> _Lesion | None:
    if label == "glioma":
        return _sample_glioma(rng, head)
    if label == "meningioma":
        return _sample_meningioma(rng, head)
    if label == "pituitary":
        return _sample_pituitary(rng, head)
    return None


def _sample_glioma(rng, head):
    radius = rng.uniform(0.21, 0.34)
    phi = rng.uniform(0, 2 * np.pi)
    reach = head.brain(phi) - 1.3 * radius
    dist = rng.uniform(0.15, 1.0) * max(reach, 0.05)
    params = {
        "shape": _wobble(rng, (2, 3, 4, 5), 0.1),
        "oedema_shape": _wobble(rng, (3, 4, 5, 6, 7), 0.12),
        "oedema_reach": rng.uniform(1.45, 1.8),
        "rim": rng.uniform(0.3, 0.45),
        "bright": rng.uniform(1.0, 1.15),
    }
    centre = (dist * np.cos(phi), dist * np.sin(phi))
    return _Lesion("glioma", centre, radius, 0.6 * radius, params)


def _sample_meningioma(rng, head):
    # Anywhere along the convexity, but not on the skull base, where it would sit
    # on the sella and look like a pituitary mass.
    phi = -np.pi / 2 + rng.uniform(0.7, 2 * np.pi - 0.7)
    radius = rng.uniform(0.26, 0.42)
    dist = head.inner(phi) + rng.uniform(-0.15, 0.2) * radius
    params = {
        "phi": phi,
        "bright": rng.uniform(1.0, 1.15),
        "tail": rng.uniform(1.2, 1.8) * radius,
    }
    centre = (dist * np.cos(phi), dist * np.sin(phi))
    return _Lesion("meningioma", centre, radius, 0.85 * radius, params)


def _sample_pituitary(rng, head):
    radius = rng.uniform(0.16, 0.23)
    stretch = rng.uniform(1.0, 1.35)
    centre = (rng.uniform(-0.02, 0.02), head.sella_top() + 0.6 * radius * stretch)
    params = {"stretch": stretch, "bright": rng.uniform(1.0, 1.15), "waist": rng.random() < 0.5}
    return _Lesion("pituitary", centre, radius, 0.0, params)


def _mass_effect(u, v, lesion: _Lesion | None):
    """Warp so the brain around a mass is pushed away from it.

    A point at distance ``d`` from the centre shows the anatomy found at
    ``sqrt(d**2 - push**2)``: tissue is compressed around the mass, fading with distance.
    """
    if lesion is None or lesion.push <= 0:
        return u, v
    du, dv = u - lesion.centre[0], v - lesion.centre[1]
    d = np.hypot(du, dv)
    shrink = np.sqrt(np.maximum(d**2 - lesion.push**2, 0.0)) / np.maximum(d, 1e-9)
    return lesion.centre[0] + du * shrink, lesion.centre[1] + dv * shrink


def _paint_lesion(head, tissue, fields, lesion, u, v, brain, img):
    if lesion is None:
        return img
    draw = {"glioma": _paint_glioma, "meningioma": _paint_meningioma, "pituitary": _paint_pituitary}
    return draw[lesion.kind](head, tissue, fields, lesion, u, v, brain, img)


def _paint_glioma(head, tissue, fields, lesion, u, v, brain, img):
    """Lobulated intra-axial mass, ring-enhancing around necrosis, in an oedema halo."""
    edge = 1.2 / head.radius_px
    p = lesion.params
    d, theta = _polar(u - lesion.centre[0], v - lesion.centre[1])
    bound = lesion.radius * (1 + _lookup(theta, p["shape"]) + 0.06 * fields.coarse)
    oedema_bound = bound * p["oedema_reach"] * (1 + _lookup(theta, p["oedema_shape"]))
    # Oedema is dark on T1, between CSF and grey matter, fading out at its edge.
    oedema = 0.85 * _inside(oedema_bound - d, edge * 4) * brain
    img = _paint(img, oedema, tissue["csf"] * 1.6 + 0.1)
    core = _inside(bound * (1 - p["rim"]) * (1 + 0.12 * fields.coarse) - d, edge * 1.5)
    value = p["bright"] * (1 + 0.08 * fields.fine)  # the enhancing rim
    value = _paint(value, core, tissue["csf"] * 1.2 * (1 + 0.25 * fields.fine))  # necrosis
    return _paint(img, _inside(bound - d, edge), value)


def _paint_meningioma(head, tissue, fields, lesion, u, v, brain, img):
    """Homogeneous bright dural-based mass with a CSF cleft and a dural tail."""
    edge = 1.2 / head.radius_px
    p = lesion.params
    rho, phi = _polar(u, v)
    within = _inside(head.inner(phi) - rho, edge)  # it never crosses the skull
    d = np.hypot(u - lesion.centre[0], v - lesion.centre[1])
    img = _paint(img, _inside(lesion.radius + 0.03 - d, edge) * within, tissue["csf"])
    along = np.abs(np.angle(np.exp(1j * (phi - p["phi"])))) * head.inner(p["phi"])
    taper = 0.03 * np.clip(1 - along / p["tail"], 0, 1)
    tail = _inside(taper - (head.inner(phi) - rho), edge) * within * (taper > 0)
    img = _paint(img, tail, p["bright"] * 0.9)
    mass = _inside(lesion.radius - d, edge) * within
    return _paint(img, mass, p["bright"] * (1 + 0.03 * fields.fine))


def _paint_pituitary(head, tissue, fields, lesion, u, v, brain, img):
    """Small bright well-defined midline mass bulging up out of the sella."""
    edge = 1.2 / head.radius_px
    p = lesion.params
    cu, cv = lesion.centre
    r = lesion.radius
    body = _ellipse(u, v, cu, cv, r, r * p["stretch"])
    if p["waist"]:  # "snowman": squeezed by the diaphragma sellae
        body = np.maximum(body, _ellipse(u, v, cu, cv + r * p["stretch"], 0.75 * r, 0.7 * r))
    value = p["bright"] * (1 + 0.03 * fields.fine)
    return _paint(img, _inside(body, edge), value)


def _distractors(rng, head, u, v, brain, img):
    """Small bright dots (vessels, calcifications) and a few dark lacunes in every class."""
    edge = 1.2 / head.radius_px
    n_bright, n_dark = rng.integers(1, 4), rng.integers(0, 2)
    for i in range(n_bright + n_dark):
        phi = rng.uniform(0, 2 * np.pi)
        dist = np.sqrt(rng.uniform(0, 1)) * head.brain(phi) * 0.92
        r = rng.uniform(0.018, 0.045)
        value = rng.uniform(0.8, 1.0) if i < n_bright else rng.uniform(0.1, 0.2)
        blob = _inside(r - np.hypot(u - dist * np.cos(phi), v - dist * np.sin(phi)), edge)
        img = _paint(img, blob * brain, value)
    return img


# --- acquisition --------------------------------------------------------------------


def _acquire(rng, img, size):
    """Blur, bias field, Rician noise and windowing: what a scanner adds."""
    scale = size / _REF_SIZE
    img = ndimage.gaussian_filter(img, rng.uniform(0.5, 0.9) * scale)
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    cx, cy = rng.uniform(-1, 1, size=2)
    bias = rng.uniform(-0.25, 0.25) * x + rng.uniform(-0.25, 0.25) * y
    bias = bias + rng.uniform(-0.25, 0.25) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.5)
    img = img * np.exp(bias)
    sigma = rng.uniform(0.02, 0.05)
    noise = rng.standard_normal((2, size, size)) * sigma
    img = np.hypot(img + noise[0], noise[1])  # magnitude of complex data: Rician
    img = img / np.percentile(img, 99.7) * rng.uniform(0.78, 1.0) * 255
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- dataset ------------------------------------------------------------------------


def _image_rng(seed: int, split: str, label: str, index: int) -> np.random.Generator:
    """The generator of one image, independent of every other image and of the workers."""
    key = [seed, SPLITS.index(split), CLASSES.index(label), index, PHANTOM_VERSION]
    return np.random.default_rng(np.random.SeedSequence(key))


def _render_task(task) -> int:
    """Pool worker: render one chunk of images and write them as PNG files."""
    root, seed, size, jobs = task
    for split, label, index in jobs:
        img = render_slice(_image_rng(seed, split, label, index), label, size)
        path = Path(root) / split / label / f"{label}_{index:04d}.png"
        Image.fromarray(img, mode="L").save(path, optimize=False)
    return len(jobs)


def generate_phantom(
    out_dir,
    *,
    n_train_per_class: int = 600,
    n_test_per_class: int = 100,
    size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a phantom dataset in the ``Training/<class>/``, ``Testing/<class>/`` layout.

    The images are built in a hidden sibling folder that is renamed to ``out_dir``
    only when complete, so an interrupted run never leaves a dataset that looks whole.
    The output is byte-for-byte the same for a given seed, whatever ``workers`` is.

    Args:
        out_dir: folder to create; it must not exist, or be empty.
        n_train_per_class: images per class in ``Training``.
        n_test_per_class: images per class in ``Testing``.
        size: width and height of the images in pixels.
        seed: dataset seed.
        workers: processes to render with; ``None`` for one per CPU core.
        progress: show a progress bar on stderr.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty.
    """
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    counts = {"Training": n_train_per_class, "Testing": n_test_per_class}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _render_all(tmp, counts, size, seed, workers, progress)
        _write_metadata(tmp, counts, size, seed)
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _render_all(root: Path, counts, size, seed, workers, progress) -> None:
    jobs = []
    for split, n in counts.items():
        for label in CLASSES:
            (root / split / label).mkdir(parents=True)
            jobs += [(split, label, i) for i in range(n)]
    workers = max(1, workers or os.cpu_count() or 1)
    chunk = max(1, min(64, -(-len(jobs) // (workers * 8))))  # ~8 chunks per worker
    tasks = [(str(root), seed, size, jobs[i : i + chunk]) for i in range(0, len(jobs), chunk)]
    workers = min(workers, len(tasks))
    bar = _progress_bar(len(jobs), progress)
    try:
        if workers == 1:
            for task in tasks:
                bar.update(_render_task(task))
        else:
            # forkserver, not fork: the caller may have TensorFlow's threads running.
            with get_context("forkserver").Pool(workers) as pool:
                for done in pool.imap_unordered(_render_task, tasks):
                    bar.update(done)
    finally:
        bar.close()


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="phantom", unit="img", file=sys.stderr, disable=not enabled)


def _write_metadata(root: Path, counts, size, seed) -> None:
    meta = {
        "name": "phantom",
        "synthetic": True,
        "version": PHANTOM_VERSION,
        "seed": seed,
        "size": size,
        "image_size": RECOMMENDED_IMAGE_SIZE,
        "epochs": RECOMMENDED_EPOCHS,
        "description": DESCRIPTION,
        "counts": {split: {label: n for label in CLASSES} for split, n in counts.items()},
    }
    (root / CARD_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def default_phantom_dir() -> Path:
    """``<cache>/phantom-v{PHANTOM_VERSION}``, the cache being the suite's (see ``cache_dir``)."""
    return cache_dir() / f"phantom-v{PHANTOM_VERSION}"


def ensure_phantom(path=None, *, progress: bool = True) -> Path:
    """Return a ready phantom dataset, generating the default one on first use.

    Safe to call again and from several processes at once: an existing dataset is
    returned at once, and when two processes race, the loser discards its copy.

    Args:
        path: where the dataset lives; ``None`` for ``default_phantom_dir()``.
        progress: show a progress bar while generating.

    Returns:
        The dataset folder.

    Raises:
        FileExistsError: ``path`` holds something that is not a phantom dataset.
    """
    path = Path(path).expanduser() if path is not None else default_phantom_dir()
    if _is_phantom(path):
        return path
    try:
        return generate_phantom(path, progress=progress)
    except OSError:
        if _is_phantom(path):  # another process finished first
            return path
        raise


def _is_phantom(path: Path) -> bool:
    try:
        meta = json.loads((path / CARD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("name") == "phantom"
