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
#   "none"  - the application rescales internally (EfficientNet, EfficientNetV2, ConvNeXt,
#             MobileNetV3: their ``include_preprocessing`` is on and ``preprocess_input`` is a
#             pass-through)
#   "tf"    - x / 127.5 - 1 (MobileNetV2, ResNetV2, Xception, InceptionV3)
#   "caffe" - RGB -> BGR, minus the ImageNet channel means (ResNet, VGG)
#   "torch" - x / 255, minus mean, over std per channel (DenseNet)
PREPROCESSING_MODES = ("none", "tf", "caffe", "torch")

# Selectors ``expand_backbones`` knows besides names, families and globs.
ALL = "all"
REFERENCE = "reference"


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
        family: family name, lower case: for listings, and a selector of ``--backbones``.
        params_m: parameters in millions, with the ImageNet classifier, as the Keras
            applications table gives them (data, not computed).
        top1: ImageNet top-1 accuracy in percent, from the same table (data, not computed).
        reference: one of the reference backbones, which default commands and the full test
            tier cover; the others are tested by one build-train-save-reload test each.
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
    params_m: float | None = None
    top1: float | None = None
    reference: bool = False

    def __post_init__(self):
        if self.name != self.name.lower() or self.name in (ALL, REFERENCE):
            raise ValueError(f"backbone name {self.name!r} must be lower case and not {ALL!r} or {REFERENCE!r}")
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(
                f"{self.name}: preprocessing {self.preprocessing!r} is not one of {PREPROCESSING_MODES}"
            )
        if ":" not in self.constructor:
            raise ValueError(f"{self.name}: constructor must read 'module:attr', got {self.constructor!r}")
        if not 32 <= self.min_input_size <= self.input_size:
            raise ValueError(f"{self.name}: min_input_size {self.min_input_size} must lie in [32, input_size]")

    def input_size_problem(self, image_size: int) -> str | None:
        """Why the constructor cannot take ``image_size`` px inputs, or ``None`` when it can."""
        if image_size >= self.min_input_size:
            return None
        return (f"{self.name} needs images of at least {self.min_input_size} px, got {image_size}; "
                f"pass --image-size {self.min_input_size} or more")

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


def list_families() -> list[str]:
    """Family names, in registry order."""
    return list(dict.fromkeys(s.family for s in _REGISTRY.values() if s.family))


def expand_backbones(selection: str) -> list[str]:
    """Names a comma-separated ``selection`` stands for, in registry order, each once.

    Each term is a registered name, a family (``convnext``), a shell-style glob over names
    (``efficientnet*``), ``all``, or ``reference`` (the reference backbones). Case is ignored.

    Raises:
        ValueError: the selection is empty or repeats a term.
        KeyError: a term matches no backbone; the message lists the names and families.
    """
    terms = [t.strip().lower() for t in selection.split(",") if t.strip()]
    if not terms:
        raise ValueError("expected a comma-separated list of backbones, families or globs")
    if len(set(terms)) != len(terms):
        raise ValueError(f"a backbone is listed twice: {selection}")
    chosen: set[str] = set()
    for term in terms:
        matched = _match(term)
        if not matched:
            raise KeyError(
                f"{term!r} matches no backbone; registered backbones: {', '.join(_REGISTRY)}; "
                f"families: {', '.join(list_families())}; or a glob such as 'efficientnet*', or 'all'"
            )
        chosen.update(matched)
    return [n for n in _REGISTRY if n in chosen]


def _match(term: str) -> list[str]:
    if term == ALL:
        return list(_REGISTRY)
    if term == REFERENCE:
        return [n for n, s in _REGISTRY.items() if s.reference]
    if term in _REGISTRY:
        return [term]
    family = [n for n, s in _REGISTRY.items() if s.family == term]
    return family or [n for n in _REGISTRY if fnmatch.fnmatchcase(n, term)]


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
    problem = spec.input_size_problem(input_size)
    if problem:
        raise ValueError(problem)
    constructor = spec.load_constructor()
    return constructor(
        include_top=False, weights=weights, input_shape=(input_size, input_size, 3), **overrides
    )
