"""`python -m swapper.evaluate`: see swapper.evaluate.stage."""

from swapper.evaluate.stage import main

main()
