"""The backbone registry: one frozen spec per name, nothing heavy imported.

A spec names its Keras constructor as ``"module:attr"`` so listing backbones never
loads TensorFlow; :func:`create_backbone` imports it when a model is wanted.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable

# Input scalings the Keras applications expect, applied inside the model so that a
# saved model always takes raw RGB 0-255 images:
#   "none"  - the application rescales internally (EfficientNet)
#   "tf"    - x / 127.5 - 1 (MobileNetV2)
#   "caffe" - RGB -> BGR, minus the ImageNet channel means (ResNet50)
#   "torch" - x / 255, minus mean, over std per channel
PREPROCESSING_MODES = ("none", "tf", "caffe", "torch")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Everything the suite needs to know about one backbone.

    Args:
        name: registry name, lower case (``"efficientnetb0"``).
        constructor: ``"module:attr"`` of a ``keras.applications``-style function that
            takes ``include_top``, ``weights``, ``input_shape``.
        input_size: native square input size in pixels.
        preprocessing: one of ``PREPROCESSING_MODES``.
        feature_width: channels of the pooled feature vector.
        weights_file: file name of the ImageNet no-top weights in Keras's cache, with
            ``{size}`` standing for the nearest size the weights were published at.
        weights_sizes: the sizes ``{size}`` may take (empty when it does not occur).
        min_input_size: smallest input the constructor accepts.
        family: free-text family name, for listings.
    """

    name: str
    constructor: str
    input_size: int
    preprocessing: str
    feature_width: int
    weights_file: str
    weights_sizes: tuple[int, ...] = ()
    min_input_size: int = 32
    family: str = ""

    def __post_init__(self):
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(
                f"{self.name}: preprocessing {self.preprocessing!r} is not one of {PREPROCESSING_MODES}"
            )
        if ":" not in self.constructor:
            raise ValueError(f"{self.name}: constructor must read 'module:attr', got {self.constructor!r}")

    def weights_filename(self, image_size: int) -> str:
        """Name of the ImageNet weights file Keras caches for this spec at ``image_size``."""
        if not self.weights_sizes:
            return self.weights_file
        # Keras takes the exact size when weights exist for it, else its largest one.
        size = image_size if image_size in self.weights_sizes else max(self.weights_sizes)
        return self.weights_file.format(size=size)

    def load_constructor(self) -> Callable:
        """Import and return the Keras constructor (this loads the Keras backend)."""
        module_name, attr = self.constructor.split(":")
        return getattr(importlib.import_module(module_name), attr)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec_fn: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
    """Decorator: register the spec a zero-argument function returns under its name."""
    spec = spec_fn()
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec_fn


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def is_backbone(name: str) -> bool:
    return name in _REGISTRY


def get_spec(name: str) -> BackboneSpec:
    """The spec registered under ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise KeyError(
            f"unknown backbone {name!r}; registered backbones: {', '.join(list_backbones())}"
        ) from None


def create_backbone(name: str, *, input_size: int, weights: str | None = None, **overrides):
    """Build the headless Keras backbone ``name`` (``include_top=False``, no pooling).

    Args:
        name: a registered name.
        input_size: square input size in pixels.
        weights: ``None``, ``"imagenet"`` or a path to a weights file.
        **overrides: extra keyword arguments for the constructor.
    """
    spec = get_spec(name)
    if input_size < spec.min_input_size:
        raise ValueError(f"{name} needs inputs of at least {spec.min_input_size} px, got {input_size}")
    constructor = spec.load_constructor()
    return constructor(
        include_top=False, weights=weights, input_shape=(input_size, input_size, 3), **overrides
    )
