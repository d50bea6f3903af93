"""The trip rules: sliding windows, the learned baseline, the `Monitor` that composes them over
time, the fleet cap and the limit burst, and the replay (`backtest`, `scenarios`) that tunes them."""
