"""Pure decisions: node state and epochs, windows, roster and quorum, rules, baseline,
backtest, the gate's state machine and the gate protocol's parser. No I/O here: no Redis,
no sockets, no files, no clock but one passed in."""
