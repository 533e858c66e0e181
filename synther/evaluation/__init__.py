"""Evaluation of synthetic transitions and of the models behind them: fidelity, membership inference."""
