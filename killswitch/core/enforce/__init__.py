"""What a host enforces: the gate and its local limits, the line protocol, the FIX relay, the
network fence's ruleset, flatten-on-kill, and the flight recorder's format and timeline."""
