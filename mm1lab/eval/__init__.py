"""Evaluation: benchmark metrics (captioning, VQA, counting, OCR, POPE, multiple choice) in pure Python."""
