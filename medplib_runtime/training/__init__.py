"""MedPLIB's four training stages for the glue (DESIGN §3): ``medplib train --stage N --config FILE``."""
