"""The trip rules: sliding windows, the learned baseline, the registry of rules (`registry`,
one module per rule in `trips`) and the `Monitor` that judges them over time, the fleet cap
and the limit burst, and the replay (`backtest`, `scenarios`) that tunes them."""
