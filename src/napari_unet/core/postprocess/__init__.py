"""From class probabilities to labels: semantic classes, separated instances, the background prior,
linking per-plane objects into 3D objects."""
