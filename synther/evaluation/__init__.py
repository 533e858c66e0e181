"""Evaluation of synthetic transitions: fidelity (and, later, membership inference)."""
