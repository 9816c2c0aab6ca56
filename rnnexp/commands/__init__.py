"""The commands no DVC stage runs: sample, complete, compare, doctor, server."""
