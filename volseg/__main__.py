"""``python -m volseg``: the ``volseg`` command."""

import sys

from volseg_cli.main import main

if __name__ == "__main__":
    sys.exit(main())
