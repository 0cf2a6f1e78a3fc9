"""Registry of backbones. Importing this package registers the built-in ones."""

from backbones import keras_apps  # noqa: F401  (registers the built-in specs)
from backbones._registry import (
    PREPROCESSING_MODES,
    BackboneSpec,
    create_backbone,
    expand_backbones,
    get_spec,
    is_backbone,
    list_backbones,
    list_families,
    register_backbone,
)

__all__ = [
    "PREPROCESSING_MODES",
    "BackboneSpec",
    "create_backbone",
    "expand_backbones",
    "get_spec",
    "is_backbone",
    "list_backbones",
    "list_families",
    "register_backbone",
]
