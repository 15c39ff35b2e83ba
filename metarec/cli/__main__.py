"""`python -m metarec.cli ...` = `metarec ...`."""

from metarec.cli import main

main()
