"""ddimbench harness: metrics, sweeps, tracking, reports and the CLI."""
