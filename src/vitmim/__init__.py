"""vitmim: masked-pixel pre-training of vision transformers for small image data sets."""

from __future__ import annotations


def __getattr__(name: str):
    if name == "__version__":  # read from the installed metadata only when asked for
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("vitmim")
        except PackageNotFoundError:  # a source tree on PYTHONPATH without an install
            return "0+unknown"
    raise AttributeError(f"module 'vitmim' has no attribute {name!r}")
