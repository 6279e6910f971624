"""`python -m ttscale.cli` runs the CLI (tests start it this way)."""

from ttscale.cli import main

if __name__ == "__main__":
    main()
