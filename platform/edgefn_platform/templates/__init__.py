"""Starter function folders for `edgefn new`."""
