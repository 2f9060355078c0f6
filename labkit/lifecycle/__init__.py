"""Who owns what the lab makes and how it ends: processes started in namespaces, owner tags, the
in-process janitor, and the reaper for what a killed run left."""
