"""`python -m desanet.cli …` is `desanet …` (tests and the lab's namespaces run it this way)."""

from desanet.cli.app import main

main()
