"""Pure numpy/torch core: no Qt, no napari, no magicgui."""
