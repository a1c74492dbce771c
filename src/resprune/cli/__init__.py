"""Command line interface (``resprune``)."""
