"""Batches: the input-file parser (files.py) and the activities that load, claim and record a
batch's items, with the SQL they share with the CLI (items.py)."""
