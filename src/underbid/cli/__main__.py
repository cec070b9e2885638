"""`python -m underbid.cli ...`: the same as the `underbid` command."""

from underbid.cli import main

if __name__ == "__main__":
    main()
