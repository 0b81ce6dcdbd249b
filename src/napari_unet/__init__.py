"""napari-unet: the U-Net of Ronneberger, Fischer and Brox (MICCAI 2015) for napari.

Importing the package is cheap: torch is imported only when a core function is used.
"""

__version__ = "0.1.0"
