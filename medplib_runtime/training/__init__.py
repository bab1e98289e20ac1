"""MedPLIB's four training stages for the glue (docs/design.md, "The model"): ``medplib train --stage N --config FILE``."""
