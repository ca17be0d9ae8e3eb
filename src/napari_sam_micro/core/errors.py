"""Errors whose message is meant for the user (shown as a napari notification)."""

from __future__ import annotations

__all__ = ["UserInputError", "PromptError", "ImageError", "ModelUnavailableError"]


class UserInputError(ValueError):
    """Input the user can fix; ``str(err)`` is a complete sentence for a biologist."""


class PromptError(UserInputError):
    """Prompts that cannot be used: none, outside the image, on the wrong layer."""


class ImageError(UserInputError):
    """An image the plugin cannot segment as it is (wrong dimensionality, all NaN …)."""


class ModelUnavailableError(RuntimeError):
    """A model or its checkpoint cannot be loaded (offline, corrupt file, missing package)."""
