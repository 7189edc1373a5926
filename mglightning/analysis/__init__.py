"""Finished runs read back: selection, tables, figures, the reproduce report."""
