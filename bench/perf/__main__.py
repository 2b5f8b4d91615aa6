"""``python -m bench.perf``: the performance benchmark (``make bench``); see ``bench.perf.run``."""

from bench.perf.run import main

raise SystemExit(main())
