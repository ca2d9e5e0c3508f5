"""`python -m edgefn_platform` runs the `edgefn` command line."""

from .cli import main

main()
