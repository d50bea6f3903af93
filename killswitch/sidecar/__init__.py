"""The per-host sidecar: the gate server, its sync loop with Redis, its metrics, and the
in-process (thread) form for Python trading processes."""
