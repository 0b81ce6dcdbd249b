"""The U-Net (paper section 2), its geometry along each axis, ensembles of U-Nets, lifting a 2D U-Net
to 3D."""
