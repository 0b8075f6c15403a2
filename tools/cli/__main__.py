"""`python -m tools.cli ...` (as torchrun -m starts it): the capgen command."""

from tools.cli.main import main

main()
