"""Runtime: device choice, speed options, the warm worker, step clocks, atomic file writes, shims."""
