"""The ``napari-unet`` command: one module per sub-command and a shared driver of progress events."""
