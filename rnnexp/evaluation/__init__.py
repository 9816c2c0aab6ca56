"""Scoring a trained generator: likelihood, sample scores, scoring classifier, generation."""
