"""napari glue: plugin layers by metadata, prompts from Points/Shapes, undoable commits, per-viewer state.

Uses napari's public API only; import submodules explicitly.
"""
