"""Synthetic totesys: `seed` builds a realistic history, `simulate` adds business days.

Calibrated against the real November 2024 snapshot (row counts, value ranges, business
hours, payment behaviour) without copying it: every value is generated from a seed.
"""
