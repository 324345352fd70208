"""Differential privacy: accountants, noise calibration and DP-SGD (all through Opacus)."""
