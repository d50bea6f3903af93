"""Simulation: the Knight replay demo, the load generator, an embedded redis-server, and
the helper that runs a real fleet of sidecar and aggregator processes."""
