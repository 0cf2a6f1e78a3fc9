"""Turn ``--weights auto|imagenet|none|PATH`` into what the Keras constructor takes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from backbones import BackboneSpec, create_backbone
from suite.errors import WeightsError


@dataclasses.dataclass(frozen=True)
class WeightsChoice:
    """Resolved weights.

    Attributes:
        requested: what the user asked for.
        argument: the constructor's ``weights`` argument (``None``, ``"imagenet"`` or a path).
        source: ``"imagenet"``, ``"random"`` or ``"file:<path>"``, for the manifest.
        warning: set when ``auto`` had to fall back to random initialisation.
    """

    requested: str
    argument: str | None
    source: str
    warning: str | None = None

    def describe(self) -> dict:
        return {"requested": self.requested, "source": self.source, "warning": self.warning}


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def resolve_weights(spec: BackboneSpec, requested: str, image_size: int) -> WeightsChoice:
    """Decide, before any data work, which weights the backbone starts from.

    ``imagenet`` that cannot be had fails now, naming the file and the folder to put
    it in; ``auto`` falls back to random initialisation with a warning.
    """
    if requested == "none":
        return WeightsChoice(requested, None, "random")
    if requested not in ("auto", "imagenet"):
        path = Path(requested).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return WeightsChoice(requested, str(path.resolve()), f"file:{path.resolve()}")
    problem = _fetch_imagenet(spec, image_size)
    if problem is None:
        return WeightsChoice(requested, "imagenet", "imagenet")
    fname = spec.weights_filename(image_size)
    message = (
        f"ImageNet weights for {spec.name} are not available ({problem}). "
        f"Put {fname} in {keras_cache_dir()} (Keras's cache) or pass --weights PATH."
    )
    if requested == "imagenet":
        raise WeightsError(message)
    return WeightsChoice(requested, None, "random", f"{message} Training starts from random initialisation.")


def _fetch_imagenet(spec: BackboneSpec, image_size: int) -> str | None:
    """Have Keras load (downloading into its cache if needed) the ImageNet weights.

    Returns ``None`` on success, else a short reason.
    """
    if (keras_cache_dir() / spec.weights_filename(image_size)).is_file():
        return None
    try:
        create_backbone(spec.name, input_size=image_size, weights="imagenet")
    except Exception as exc:  # offline, proxy, corrupt download: all mean "not available"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None
