"""Converters that run once on raw data and write the Synapse layout (``python -m datasets.prepare.NAME``)."""
