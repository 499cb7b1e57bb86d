"""Kernel adapters: the only code that talks to the kernel (netlink: nfnetlink_queue, ctnetlink, nfnetlink_cthelper)."""
