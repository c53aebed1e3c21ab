import sys

from prune.bench.cli import main

sys.exit(main())
