"""The relay: publishes the committed event log to the broker in order (leader only)."""
