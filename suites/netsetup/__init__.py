"""How a sandbox sets up its network from the namespace the lab prepared (runsc --network=sandbox)."""
