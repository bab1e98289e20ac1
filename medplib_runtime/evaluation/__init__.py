"""MedPLIB-compatible evaluation: metric functions (numpy only) and the runner behind ``medplib eval``."""
