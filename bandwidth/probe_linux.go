package bandwidth

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/feature"
	"github.com/nodeplane/nodeplane/internal/netnsutil"
)

// Probes are process-wide caches of a property of the running kernel, as
// cilium/ebpf's features package keeps them.
var (
	fqProbe           = feature.NewProbe("sch_fq qdisc", "", probeFq)
	deliveryTimeProbe = feature.NewProbe("delivery time timestamps (bpf_skb_set_tstamp)", "5.18", probeDeliveryTime)
)

// HaveEDT reports whether the kernel has the fq qdisc (sch_fq), which
// honours the departure times the EDT program sets: without it EDT limits
// nothing and the token-bucket fallback applies. It creates an fq qdisc in
// a throwaway network namespace, so the module loads on demand as it would
// for real use. The error wraps nodeplane.ErrNotSupported when fq is
// missing. The answer is cached.
func HaveEDT() error { return fqProbe.Result() }

// HaveDeliveryTime reports whether the kernel marks skb->tstamp as a
// delivery time (skb->tstamp_type, bpf_skb_set_tstamp, Linux 5.18), so
// that a departure time survives crossing network namespaces and
// forwarding to the egress device's fq. The datapath's EDT hook and BBR
// pacing of pods both need it. The error wraps nodeplane.ErrNotSupported
// when it is missing. The answer is cached.
func HaveDeliveryTime() error { return deliveryTimeProbe.Result() }

func probeFq() error {
	ns, err := netnsutil.New()
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in probe namespace: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	fq := netlink.NewFq(netlink.QdiscAttrs{
		LinkIndex: lo.Attrs().Index,
		Handle:    netlink.MakeHandle(1, 0),
		Parent:    netlink.HANDLE_ROOT,
	})
	err = h.QdiscAdd(fq)
	// The kernel answers an unknown qdisc kind with ENOENT ("Specified
	// qdisc kind is unknown").
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("fq qdisc: %w: %w", err, nodeplane.ErrNotSupported)
	}
	return err
}

func probeDeliveryTime() error {
	err := features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkbSetTstamp)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("%w", nodeplane.ErrNotSupported)
	}
	return err
}
