"""The nightly: the conformance matrix cut into shards for several machines, and run on one.

`shards` reads the shard definition (`.ci/shards.toml`) that both the CI workflow and
`./lab nightly` use; `run` is `./lab nightly`: every shard, then one merged report with history.
"""
