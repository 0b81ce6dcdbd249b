"""The model object (:class:`~napari_unet.core.modelfile.files.UNetModel`: network + what it needs to be
used) and its safe files (safetensors, config beside the weights, no unpickling), the shipped models."""
