"""PrivTranR: differentially private synthetic transitions for offline RL."""

__version__ = "0.1.0"
