"""Plumbing shared by stages and commands: atomic writes, safe loading, threads, ranks, paths."""
