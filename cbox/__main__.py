"""`python -m cbox` is the same as the `cbox` console script."""

from cbox.cli.main import main

if __name__ == "__main__":
    main()
