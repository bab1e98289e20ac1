"""napari-medplib: MedPLIB in napari. No torch at import time (the runtime loads it lazily)."""

__version__ = "0.1.0"
