"""Optuna search pieces of the tune stage: storage (where a study lives) and search."""
