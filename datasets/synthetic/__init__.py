"""Synthetic data sets in the exact layouts of the real ones, for the demo and the tests
(``python -m datasets.synthetic.NAME``)."""
