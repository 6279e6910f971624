"""`python -m ttscale` runs the CLI."""

from ttscale.cli import main

if __name__ == "__main__":
    main()
