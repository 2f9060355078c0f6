"""Where frames travel: namespaces, veths, addresses and routes (built with rtnetlink batches), the
lab's address policy and plan, the layouts checks ask for, and the ethtool knobs of a veth end."""
