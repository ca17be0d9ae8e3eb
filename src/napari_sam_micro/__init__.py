"""napari-sam-micro: Segment Anything annotation of microscopy images in napari.

The package root stays free of Qt, napari and torch imports: importing it is cheap and safe
in headless scripts. The layers are, bottom to top: ``core`` (numpy), ``models`` (torch),
``session`` / ``evaluation`` / ``training``, ``_napari`` (layer glue) and ``_qt`` (widgets).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
