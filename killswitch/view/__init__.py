"""How decisions are shown: the trip rules' published view, metrics fields and log events, and
operator text made safe for one terminal line. Pure, like the core, but not a decision."""
