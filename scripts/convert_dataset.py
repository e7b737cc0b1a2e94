"""ssd-convert from a clone, without installing: python scripts/convert_dataset.py --help
(ssd/cli/convert.py)."""

import _common  # noqa: F401, I001  (puts the clone's ssd package on the import path)

from ssd.cli.common import run_cli
from ssd.cli.convert import main

if __name__ == "__main__":
    run_cli(main)
