"""The runner agent: capacity detection, executors and the wire protocol shared with the daemon."""
