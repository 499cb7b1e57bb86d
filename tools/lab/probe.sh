# What `vm-run --probe` runs in the guest: the kernel, the modules the lab needs, a namespace.
echo "kernel: $(uname -r)"
for m in nf_conntrack nfnetlink_cthelper nfnetlink_queue nf_conntrack_netlink; do
    if grep -q "^$m " /proc/modules; then echo "module $m: loaded"; else echo "module $m: MISSING"; exit 1; fi
done
ip netns add lab-probe && ip netns del lab-probe && echo "netns: ok" || exit 1
echo "lab probe ok"
