"""``python -m mdprune``: the console script, also what ``torchrun -m mdprune`` starts."""

from mdprune.cli import main

main()
