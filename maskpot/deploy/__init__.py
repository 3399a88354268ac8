"""Deployment: TorchScript export with metadata, OpenMM forces, ASE calculator."""
