"""Volumes, not slices: 3D propagation of masks and measurements in physical units."""
