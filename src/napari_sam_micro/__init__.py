"""napari-sam-micro: Segment Anything annotation of microscopy images in napari.

The package root stays free of Qt, napari and torch imports: importing it is cheap and safe
in headless scripts. The layers are, bottom to top: ``core`` (numpy), ``models`` (torch),
``session`` / ``segmentation`` / ``evaluation``, ``api`` (Python API), ``_napari`` (layer glue)
and ``_qt`` (widgets).

The Python API (:mod:`napari_sam_micro.api`) is re-exported here and imported on first use::

    from napari_sam_micro import load_predictor, segment_everything, segment_prompts
"""

__version__ = "0.1.0"

#: Names of :mod:`napari_sam_micro.api` available from the package root (imported lazily).
_API = ("load_predictor", "segment_everything", "segment_prompts", "Predictor", "PredictOutput")

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        # imported by name, not by an import statement: the package root stays below every layer
        import importlib

        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_API})
