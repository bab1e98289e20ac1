"""MeCoVQA-format datasets: records (read/validate/write), exact facts from label volumes,
question/answer templates, and the builder behind ``medplib build-data`` (numpy/SimpleITK/PIL only)."""
