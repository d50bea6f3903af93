"""A node and its hosts: states and epochs, the roster and quorum, scoped kills, the leader
lease, heartbeats, duplicate hosts, the version vector, names and bounds on what is read."""
