"""MRI-specific image corruptions at five severities: the registry ``suite robustness`` draws from.

Each corruption is one :class:`Corruption`: a pure function over a batch of decoded images
(``uint8`` NHWC, as :func:`suite.data.decode.load_images` gives them) and one parameter, with
the parameter of each severity 1..5 kept beside it as data. Severity 0 is the clean image.
Everything is numpy over the whole batch (no per-pixel Python loops) and deterministic: the
random draws come from the generator the caller passes, and :func:`corrupt` seeds that from
``(seed, name)`` only, so every severity of a corruption draws the same field, noise or
motion pattern and only its strength changes with the severity.

Parameters given as a fraction of the image side (blur sigma, shift, motion) scale with the
image, so a severity means the same corruption of the anatomy at 64 px and at 224 px.

Example:
    >>> import numpy as np
    >>> from suite.corruptions import corrupt, corruption_names
    >>> x = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    >>> corrupt(x, "gaussian_blur", 3, seed=0).shape
    (2, 32, 32, 3)
"""

from __future__ import annotations

import dataclasses
import difflib
import zlib
from collections.abc import Callable

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class Corruption:
    """One corruption of the registry.

    Attributes:
        name: its registry name (``gaussian_blur``).
        description: what it does to the image, in a sentence, for reports.
        parameter: what the per-severity value means (``"sigma, fraction of the image side"``).
        values: the parameter at severities 1..5, mildest first.
        fn: ``fn(images float32 NHWC in [0, 255], value, rng) -> float32 NHWC``; clipped and
            rounded back to ``uint8`` by :meth:`__call__`.
    """

    name: str
    description: str
    parameter: str
    values: tuple[float, ...]
    fn: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

    def __post_init__(self):
        if len(self.values) != len(SEVERITIES):
            raise ValueError(f"corruption {self.name!r} needs {len(SEVERITIES)} severity values, got {self.values}")

    def value(self, severity: int) -> float:
        """The parameter at ``severity`` (1..5)."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        return self.values[severity - 1]

    def __call__(self, images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        """``images`` (``uint8`` NHWC) corrupted at ``severity`` (0: an unchanged copy), as ``uint8`` NHWC."""
        images = _check_images(images)
        if severity == 0:
            return images.copy()
        grey = images.shape[-1] == 3 and _is_grey(images)
        source = images[..., :1] if grey else images  # a grey scan: one channel's work, not three
        out = np.clip(np.rint(self.fn(source.astype(np.float32), self.value(severity), rng)), 0, 255)
        out = out.astype(np.uint8)
        return np.repeat(out, 3, axis=-1) if grey else out


CORRUPTIONS: dict[str, Corruption] = {}


def register_corruption(name: str, description: str, parameter: str, values: tuple[float, ...]):
    """Decorator adding ``fn`` to :data:`CORRUPTIONS` under ``name``; a name may be registered once."""
    def add(fn):
        if name in CORRUPTIONS:
            raise ValueError(f"corruption {name!r} is registered already")
        CORRUPTIONS[name] = Corruption(name, description, parameter, tuple(values), fn)
        return fn
    return add


def corruption_names() -> list[str]:
    return list(CORRUPTIONS)


def get_corruption(name: str) -> Corruption:
    """The registered corruption ``name``.

    Raises:
        KeyError: an unknown name, with the closest known one and the full list.
    """
    if name in CORRUPTIONS:
        return CORRUPTIONS[name]
    close = difflib.get_close_matches(name, CORRUPTIONS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise KeyError(f"unknown corruption {name!r}{hint}; known: {', '.join(CORRUPTIONS)}")


def corruption_rng(name: str, seed: int = 0, chunk: int = 0) -> np.random.Generator:
    """The generator of ``name``'s draws: the same for every severity, so severity alone changes the strength."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(chunk)])


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0, chunk: int = 0) -> np.ndarray:
    """``images`` (``uint8`` NHWC) under corruption ``name`` at ``severity`` (0..5), seeded by ``seed``.

    Args:
        images: decoded images, ``(n, h, w, c)`` ``uint8``.
        name: a registered corruption (:func:`corruption_names`).
        severity: 0 (unchanged) to 5 (strongest).
        seed: seeds the corruption's random draws; the same seed gives the same images.
        chunk: the index of this batch when a set is corrupted batch by batch (each gets its own draws).
    """
    return get_corruption(name)(images, severity, corruption_rng(name, seed, chunk))


def _is_grey(images: np.ndarray) -> bool:
    return bool((images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all())


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images of shape (n, h, w, c), got {images.dtype} {images.shape}")
    return images


# ----------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], ``(h, 1)`` and ``(1, w)``."""
    return (np.linspace(-1, 1, h, dtype=np.float32)[:, None], np.linspace(-1, 1, w, dtype=np.float32)[None, :])


def _sample(images: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Bilinear sampling of each image at its own source coordinates (``(n, h, w)``, pixels); 0 outside."""
    n, h, w, c = images.shape
    y0, x0 = np.floor(src_y), np.floor(src_x)
    fy, fx = src_y - y0, src_x - x0
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    flat = images.reshape(n * h * w, c)
    base = (np.arange(n) * h * w)[:, None, None]
    out = np.zeros((n, h, w, c), dtype=np.float32)
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        weight = np.where((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w), weight, 0)
        out += weight[..., None] * flat[base + np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)]
    return out


def _affine(images: np.ndarray, angle_deg: np.ndarray, shift_y: np.ndarray, shift_x: np.ndarray) -> np.ndarray:
    """Each image rotated about its centre by its angle and moved by its shift (pixels); background black."""
    n, h, w, _ = images.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    theta = np.deg2rad(angle_deg).astype(np.float32)[:, None, None]
    # the output pixel p comes from R(-theta) (p - centre - shift) + centre
    dy, dx = yy[None] - cy - shift_y[:, None, None], xx[None] - cx - shift_x[:, None, None]
    src_y = np.cos(theta) * dy - np.sin(theta) * dx + cy
    src_x = np.sin(theta) * dy + np.cos(theta) * dx + cx
    return _sample(images, src_y, src_x)


def _resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear interpolation (up-sampling) or box averaging (down-sampling) along one axis."""
    if n_out >= n_in:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        m = np.zeros((n_out, n_in), dtype=np.float32)
        m[np.arange(n_out), lo] += 1 - (pos - lo)
        m[np.arange(n_out), hi] += pos - lo
        return m
    edges = np.arange(n_out + 1) * n_in / n_out
    centres = np.arange(n_in) + 0.5
    m = ((centres[None] >= edges[:-1, None]) & (centres[None] < edges[1:, None])).astype(np.float32)
    return m / m.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------
# The registry: mildest to strongest parameter at severities 1..5
# ----------------------------------------------------------------------------------


@register_corruption("bias_field", "smooth multiplicative intensity inhomogeneity (coil bias field)",
                     "peak-to-peak log-gain of the field", (0.2, 0.4, 0.6, 0.9, 1.2))
def bias_field(images, value, rng):
    n, h, w, _ = images.shape
    y, x = _grid(h, w)
    basis = np.stack([x + 0 * y, y + 0 * x, x * y, x * x - 1 / 3 + 0 * y, y * y - 1 / 3 + 0 * x])  # (5, h, w)
    log_field = np.einsum("nk,khw->nhw", rng.normal(size=(n, len(basis))).astype(np.float32), basis)
    span = log_field.max(axis=(1, 2), keepdims=True) - log_field.min(axis=(1, 2), keepdims=True)
    log_field = (log_field - log_field.mean(axis=(1, 2), keepdims=True)) / np.maximum(span, 1e-6)
    return images * np.exp(value * log_field)[..., None]


@register_corruption("rician_noise", "Rician noise: the magnitude of the image plus complex Gaussian noise",
                     "noise sigma, fraction of full scale", (0.02, 0.04, 0.07, 0.10, 0.14))
def rician_noise(images, value, rng):
    n, h, w, _ = images.shape
    sigma = value * 255.0
    real = images + sigma * rng.standard_normal((n, h, w, 1), dtype=np.float32)  # one noise for every channel:
    imag = sigma * rng.standard_normal((n, h, w, 1), dtype=np.float32)  # a grey scan stays grey
    return np.sqrt(real * real + imag * imag)


@register_corruption("gaussian_blur", "Gaussian blur (partial-volume smoothing, out-of-plane thickness)",
                     "sigma, fraction of the image side", (0.006, 0.01, 0.015, 0.022, 0.03))
def gaussian_blur(images, value, rng):
    from scipy.ndimage import gaussian_filter

    h, w = images.shape[1:3]
    return gaussian_filter(images, sigma=(0, value * h, value * w, 0), mode="reflect", truncate=3.0)


@register_corruption("motion_ghosting", "motion ghosting: a third of the k-space lines acquired with the head shifted",
                     "shift during the corrupted lines, fraction of the image width", (0.02, 0.04, 0.06, 0.09, 0.12))
def motion_ghosting(images, value, rng):
    n, h, w, _ = images.shape
    ky = np.fft.fftfreq(h)
    lines = (rng.random((n, h)) < 1 / 3) & (np.abs(ky) > 0.04)[None]  # the central lines (contrast) stay still
    kx = np.fft.fftfreq(w)
    phase = np.exp(-2j * np.pi * kx * value * w).astype(np.complex64)  # a shift of value * w pixels along x
    from scipy import fft

    k = fft.fft2(images, axes=(1, 2))  # complex64 for float32 images
    k = np.where(lines[:, :, None, None], k * phase[None, None, :, None], k)
    return np.abs(fft.ifft2(k, axes=(1, 2)))


@register_corruption("gamma", "contrast change: intensities mapped through a gamma curve (darker mid-tones)",
                     "gamma", (1.25, 1.5, 1.8, 2.2, 2.7))
def gamma(images, value, rng):
    return 255.0 * (images / 255.0) ** value


# The JPEG standard's luminance quantisation table (ITU-T T.81, Annex K).
_JPEG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float32)


def _dct_matrix(n: int = 8) -> np.ndarray:
    k, x = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.sqrt(2 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    m[0] /= np.sqrt(2)
    return m.astype(np.float32)


@register_corruption("jpeg", "JPEG compression: 8x8 block DCT quantised with the standard table at a quality",
                     "JPEG quality (lower is stronger)", (25, 18, 15, 10, 7))
def jpeg(images, value, rng):
    n, h, w, c = images.shape
    ph, pw = -h % 8, -w % 8
    x = np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") - 128.0
    bh, bw = (h + ph) // 8, (w + pw) // 8
    blocks = x.reshape(n, bh, 8, bw, 8, c).transpose(0, 1, 3, 5, 2, 4)  # (n, bh, bw, c, 8, 8)
    scale = 5000 / value if value < 50 else 200 - 2 * value  # the IJG quality scaling
    q = np.clip(np.floor((_JPEG_LUMA * scale + 50) / 100), 1, 255)
    d = _dct_matrix()
    coef = np.round((d @ blocks @ d.T) / q) * q
    back = (d.T @ coef @ d).transpose(0, 1, 4, 2, 5, 3)
    return back.reshape(n, h + ph, w + pw, c)[:, :h, :w] + 128.0


@register_corruption("resolution", "resolution loss: box-averaged down-sampling, then linear up-sampling",
                     "down-sampling factor", (1.5, 2.0, 3.0, 4.0, 6.0))
def resolution(images, value, rng):
    _, h, w, _ = images.shape
    sh, sw = max(1, round(h / value)), max(1, round(w / value))
    rows = _resize_matrix(h, sh) @ _resize_matrix(sh, h)
    cols = _resize_matrix(w, sw) @ _resize_matrix(sw, w)
    return (rows @ images.transpose(0, 3, 1, 2) @ cols.T).transpose(0, 2, 3, 1)


@register_corruption("rotation", "small in-plane rotation about the image centre, clockwise or not",
                     "angle, degrees", (2.0, 4.0, 7.0, 10.0, 15.0))
def rotation(images, value, rng):
    n = len(images)
    sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=n)
    zero = np.zeros(n, dtype=np.float32)
    return _affine(images, sign * value, zero, zero)


@register_corruption("translation", "small in-plane translation in a random direction",
                     "shift, fraction of the image side", (0.02, 0.04, 0.06, 0.09, 0.12))
def translation(images, value, rng):
    n, h, w, _ = images.shape
    direction = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
    return _affine(images, np.zeros(n, dtype=np.float32), value * h * np.sin(direction), value * w * np.cos(direction))
