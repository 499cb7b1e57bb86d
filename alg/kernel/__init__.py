"""Kernel adapters: the only code that talks to the kernel (NetfilterQueue, netlink)."""
