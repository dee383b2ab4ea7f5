"""``python -m calmrl ...`` (and ``torchrun ... -m calmrl train ...``): the same CLI."""

from calmrl.cli import main

if __name__ == "__main__":
    main()
