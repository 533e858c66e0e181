"""Differential privacy: fast per-sample clipping, Poisson sampling, noise, accounting, and the privacy ledger."""
