"""Shared runtime helpers for the long-running services: settings resolution, logging,
the metrics HTTP server and the signal-driven lifecycle."""
