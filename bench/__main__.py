"""``python -m bench`` from the repo root: the benchmark suite (see ``fin_relay.bench.cli``)."""

from __future__ import annotations

import sys

from fin_relay.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
