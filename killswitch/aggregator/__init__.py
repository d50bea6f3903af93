"""The node aggregator: sums the node's volume, runs the rules, trips the kill and checks
every confirmation."""
