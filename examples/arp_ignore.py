"""A stack driver plugged in from outside labkit: Linux told to answer no ARP request.

    pytest suites/linkdispatch --stack examples.arp_ignore:ArpIgnoreLinux

The ARP checks fail on it, saying that no ARP reply came: the proof that they can.
"""

from labkit.stacks import LinuxStack


class ArpIgnoreLinux(LinuxStack):
    kind = "linux-arpignore"
    sysctls = {"net.ipv4.conf.all.arp_ignore": 8}
