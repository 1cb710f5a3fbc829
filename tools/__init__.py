"""Conversion, inspection and profiling helpers."""
