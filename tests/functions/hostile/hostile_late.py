"""Imported by nothing at build time: see app.py, late_import."""

VALUE = "late"
