"""napari widgets: thin Qt/magicgui front ends over the core generators.

Importing this package (or any module in it) does not import torch: the core is imported when a
widget is created or a job starts.
"""
