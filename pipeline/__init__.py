"""The pipeline: data, augmentation, models, losses and the stage orchestrators."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("civt-pipe")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+unknown"
