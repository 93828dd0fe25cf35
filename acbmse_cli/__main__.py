"""``python -m acbmse_cli``: the same as the ``acbmse`` command."""

from acbmse_cli.cli import main

if __name__ == "__main__":
    main()
