"""ssd-make-shapes from a clone, without installing: python scripts/make_shapes.py --help
(ssd/cli/make_shapes.py)."""

import _common  # noqa: F401, I001  (puts the clone's ssd package on the import path)

from ssd.cli.common import run_cli
from ssd.cli.make_shapes import main

if __name__ == "__main__":
    run_cli(main)
