"""From an image to class probabilities: normalisation (whole image, never per tile), mirror padding,
the overlap-tile plan (paper Fig. 2), 2D and 3D prediction, blocks for images larger than memory."""
