"""``python -m volseg``: the ``volseg`` command."""

from volseg_cli.main import console

if __name__ == "__main__":
    console()
