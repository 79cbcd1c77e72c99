"""Changing a model safely: shadow traffic (mirror), stepped canaries, comparison records and reports."""
