"""`python -m pipeline.card`: see pipeline.card.command."""

from pipeline.card.command import main

main()
