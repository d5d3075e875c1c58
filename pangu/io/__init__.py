"""Pangu's local files: chunk replicas and the master's journal."""
