"""The trained glue (projector, LoRA experts, ground head): where its files are and what its metadata says."""
