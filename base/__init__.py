"""Foundations shared by every Fuxi package: plain standard-library code, no Ray, no I/O of
their own beyond what their callers ask for (``base.faults``: named fault points for tests;
``base.logfile``: the record framing and recovery rule of the Nuwa WAL and the Pangu journal)."""
