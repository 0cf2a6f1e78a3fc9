"""What the run executes on: Keras backend, accelerator, package versions."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform

PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "numpy",
            "scikit-learn", "pillow", "pandas", "matplotlib", "jinja2")


def backend() -> str:
    import keras

    return keras.backend.backend()


def accelerators() -> list[str]:
    """Names of the GPUs the active Keras backend sees (empty on a CPU)."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if name == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    if name == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def describe_device() -> str:
    gpus = accelerators()
    if gpus:
        return f"GPU x{len(gpus)}: {', '.join(gpus)}"
    return f"CPU ({platform.processor() or platform.machine()})"


def has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
