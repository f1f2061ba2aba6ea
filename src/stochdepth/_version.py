"""The installed distribution's version, read once from its metadata."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("stochdepth")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"
