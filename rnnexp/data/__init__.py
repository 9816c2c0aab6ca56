"""Data: sources (digits, IDX files, image folders), raw and prepared folders, tasks."""
