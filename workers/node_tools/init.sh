#!/bin/sh
# /init of a swaplab node's initramfs (busybox sh, PID 1).
#
# Brings a diskless node to "reachable over SSH": mounts the pseudo filesystems, loads the
# modules listed in /etc/swaplab/modules, sets the node's NFSv4 client identity, takes an
# address by DHCP and starts dropbear. Swap over NFS is set up later over SSH by the
# orchestrator. Console markers (parsed by the orchestrator):
#   swaplab: ready hostname=<h> kver=<uname -r>
#   swaplab: ERROR <what failed>
# PID 1 must never exit (the kernel panics), so failures are reported, never fatal.

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root /mnt /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
exec </dev/console >/dev/console 2>&1

say() { echo "swaplab: $*"; }
fail() { echo "swaplab: ERROR $*"; }

# Value of key=... on the kernel command line (last one wins, like the kernel).
cmdline_arg() {
    value=""
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1="*) value="${word#*=}" ;; esac
    done
    echo "$value"
}

set_hostname() {
    name=$(cmdline_arg swaplab.hostname)
    [ -n "$name" ] || { fail "no swaplab.hostname= on the kernel command line"; name=swaplab-node; }
    hostname "$name" || fail "hostname $name"
    echo "$name" >/etc/hostname
}

load_modules() {
    [ -f /etc/swaplab/modules ] || { fail "no /etc/swaplab/modules"; return; }
    while read -r mod; do
        [ -n "$mod" ] || continue
        insmod "$mod" || fail "insmod $mod failed"
    done </etc/swaplab/modules
}

# Two clients with one NFSv4 identity steal each other's state and hang once they swap;
# the nfs.nfs4_unique_id= boot parameter does not reach a module loaded by busybox insmod.
set_nfs4_id() {
    id=$(cmdline_arg swaplab.nfs4_id)
    [ -n "$id" ] || { fail "no swaplab.nfs4_id=, using the hostname"; id=$(hostname); }
    param=/sys/module/nfs/parameters/nfs4_unique_id
    if [ -w "$param" ]; then
        echo "$id" >"$param" || fail "writing nfs4_unique_id"
    else
        fail "$param missing (nfs module not loaded?)"
    fi
}

write_dhcp_script() {
    cat >/etc/swaplab/udhcpc.script <<'EOF'
#!/bin/sh
# udhcpc hook: apply the lease (address + default route); DNS is not needed.
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        for gw in $router; do
            ip route replace default via "$gw" dev "$interface"
            break
        done
        echo "swaplab: dhcp $interface $ip/${mask:-24} router=$router"
        ;;
esac
exit 0
EOF
    chmod 755 /etc/swaplab/udhcpc.script
}

# The NIC to bring up: the one with swaplab.mac= (a machine with several NICs, booted by
# PXE from one of them), else eth0 (a QEMU node's management NIC).
pick_nic() {
    mac=$(cmdline_arg swaplab.mac)
    if [ -z "$mac" ]; then
        [ -e /sys/class/net/eth0 ] && echo eth0
        return
    fi
    for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address" 2>/dev/null)" = "$mac" ] && { basename "$dev"; return; }
    done
}

bring_up_network() {
    ip link set lo up
    # NIC drivers probe asynchronously after insmod (a real NIC's firmware takes longer
    # than virtio_net): give the NIC some seconds to appear.
    n=0
    nic=$(pick_nic)
    while [ -z "$nic" ] && [ $n -lt 200 ]; do sleep 0.1; n=$((n + 1)); nic=$(pick_nic); done
    [ -n "$nic" ] || { fail "no NIC $(cmdline_arg swaplab.mac)"; return; }
    ip link set "$nic" up
    write_dhcp_script
    # -q: keep the address and exit; a lab run never outlives QEMU's 24 h lease (or the
    # boot server's 12 h one).
    udhcpc -i "$nic" -s /etc/swaplab/udhcpc.script -t 20 -T 1 -n -q \
        || fail "udhcpc on $nic got no lease"
}

start_sshd() {
    chmod 700 /root /root/.ssh 2>/dev/null
    chmod 600 /root/.ssh/authorized_keys /etc/dropbear/dropbear_ed25519_host_key 2>/dev/null
    # libmlockall keeps dropbear and the per-connection children it forks resident
    # (mlockall in its constructor and again after fork): swapped-out sshd pages would stall
    # every byte read from the node behind NFS page-ins. The library drops LD_PRELOAD from
    # dropbear's environment, and dropbear (no -e) clears the environment of the commands it
    # runs, so sessions and the workload are neither preloaded nor locked.
    preload=/lib/swaplab/libmlockall.so
    [ -f "$preload" ] || { fail "no $preload, dropbear will be swappable"; preload=""; }
    LD_PRELOAD="$preload" dropbear -r /etc/dropbear/dropbear_ed25519_host_key -p 22 -s -j -k \
        -P /run/dropbear.pid -E 2>>/run/dropbear.log || { fail "dropbear did not start"; return; }
    n=0
    while [ ! -s /run/dropbear.pid ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    # sshd must outlive memory pressure. Session commands inherit -1000; swaplab-node hog
    # resets itself to 0 so the workload stays the OOM killer's candidate.
    echo -1000 >"/proc/$(cat /run/dropbear.pid)/oom_score_adj" || fail "dropbear oom_score_adj"
}

set_hostname
load_modules
set_nfs4_id
bring_up_network
start_sshd
say "ready hostname=$(hostname) kver=$(uname -r)"

# Idle forever; the shell reaps orphans it inherits as PID 1 whenever sleep returns.
while true; do
    sleep 3600
done
