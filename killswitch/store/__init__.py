"""The Redis side: every key name, the Lua scripts, connections, durability checks, and the
host's local state file. Imports only `killswitch.core`."""
