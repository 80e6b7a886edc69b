"""``python -m inflow_ray``: see ``inflow_ray.cli``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
