"""The trip rules the `Monitor` evaluates, one module each, each exposing one `RULE`
(`core.rules.rule.Rule`); `core.rules.registry` lists them in evaluation order."""
