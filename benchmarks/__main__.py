"""`python -m benchmarks [options]`, from the repository's root (`make bench`)."""

import sys

from benchmarks.cli import main

sys.exit(main(sys.argv[1:]))
