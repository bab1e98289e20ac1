"""What turns a cached image embedding into answers: SamSegmenter (prompt → mask) and Asker (question → text and masks)."""
