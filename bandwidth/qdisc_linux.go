package bandwidth

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fqBucketsLog is the log2 of fq's flow table size Cilium gives its fq
// qdiscs (FqDefaultBuckets: 2^15 buckets): fq's default, 2^10, is too few
// for a node's flows.
const fqBucketsLog = 15

// installFq replaces dev's root qdisc by fq with the horizon, or by mq
// with an fq leaf per TX queue on a multi-queue device, as Cilium's
// bandwidth manager does. It returns what was there before, for Close to
// put back; a root qdisc it could not put back refuses the device.
func installFq(h *netlink.Handle, dev string, cfg Config) (*savedRoot, error) {
	link, err := h.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", dev, err)
	}
	saved, err := saveRoot(h, link)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", dev, err)
	}
	// Off with the old root first: replacing it in one step fails where
	// it has the handle the Manager gives its own root but another kind.
	// (Cilium likewise puts noqueue in between.)
	if err := deleteRoot(h, link); err != nil {
		return nil, fmt.Errorf("device %s: remove the root qdisc: %w", dev, err)
	}
	idx := link.Attrs().Index
	fq := func(parent uint32, handle uint32) *netlink.Fq {
		q := netlink.NewFq(netlink.QdiscAttrs{LinkIndex: idx, Parent: parent, Handle: handle})
		q.Horizon = uint32(cfg.FqHorizon.Microseconds())
		q.HorizonDropPolicy = netlink.HORIZON_DROP_POLICY_DROP
		q.Buckets = fqBucketsLog
		return q
	}
	n := link.Attrs().NumTxQueues
	if n <= 1 {
		if err := h.QdiscReplace(fq(netlink.HANDLE_ROOT, netlink.MakeHandle(1, 0))); err != nil {
			return saved, fmt.Errorf("device %s: install fq: %w", dev, err)
		}
		return saved, nil
	}
	mq := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)},
		QdiscType:  "mq",
	}
	if err := h.QdiscReplace(mq); err != nil {
		return saved, fmt.Errorf("device %s: install mq: %w", dev, err)
	}
	for i := 1; i <= n; i++ {
		if err := h.QdiscReplace(fq(netlink.MakeHandle(1, uint16(i)), netlink.MakeHandle(uint16(10+i), 0))); err != nil {
			return saved, fmt.Errorf("device %s: install fq on TX queue %d: %w", dev, i, err)
		}
	}
	return saved, nil
}

// savedRoot is a device's egress qdiscs as they were before the Manager
// replaced them: the kernel's default (nothing to keep: deleting the root
// brings it back), or a root qdisc someone configured, with the leaves
// configured under it.
type savedRoot struct {
	dev     string
	ifindex int
	// root is nil for the kernel's default root qdisc (handle 0:, what
	// the kernel attaches by itself: pfifo_fast, fq_codel, noqueue, mq
	// with default leaves, after net.core.default_qdisc).
	root   netlink.Qdisc
	leaves []netlink.Qdisc
}

// restorable reports whether netlink reads a qdisc kind's configuration
// back completely enough to create it again: classless kinds, no children
// of their own (a tbf's inner qdisc is its default fifo). Anything else
// on a device refuses it, as its configuration could not be put back.
func restorable(kind string) bool {
	switch kind {
	case "tbf", "fq", "fq_codel":
		return true
	}
	return false
}

// saveRoot records link's egress qdiscs so that restore can put them back.
// It fails for a configuration it could not restore: a classful root
// other than mq, a leaf of another kind, or qdiscs below a leaf.
func saveRoot(h *netlink.Handle, link netlink.Link) (*savedRoot, error) {
	qs, err := h.QdiscList(link)
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", err)
	}
	s := &savedRoot{dev: link.Attrs().Name, ifindex: link.Attrs().Index}
	var root netlink.Qdisc
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT {
			root = q
		}
	}
	if root == nil || root.Attrs().Handle == 0 {
		// The kernel's default, whose leaves are defaults too.
		return s, nil
	}
	if root.Type() != "mq" && !restorable(root.Type()) {
		return nil, fmt.Errorf("%w: root qdisc %s %s is not one the Manager can put back on Close (it can: the kernel's default, tbf, fq, fq_codel, mq with those); remove it first",
			ErrInvalidConfig, root.Type(), netlink.HandleStr(root.Attrs().Handle))
	}
	s.root = root
	major := root.Attrs().Handle & 0xffff0000
	for _, q := range qs {
		a := q.Attrs()
		switch {
		case a.Parent == netlink.HANDLE_ROOT, a.Parent == netlink.HANDLE_INGRESS, a.Parent == netlink.HANDLE_CLSACT:
			// The root, and ingress or clsact, which are not egress
			// qdiscs and stay as they are.
		case a.Handle == 0:
			// A default leaf; mq creates it again.
		case root.Type() == "mq" && a.Parent&0xffff0000 == major && restorable(q.Type()):
			s.leaves = append(s.leaves, q)
		default:
			return nil, fmt.Errorf("%w: qdisc %s %s under %s is not one the Manager can put back on Close; remove it first",
				ErrInvalidConfig, q.Type(), netlink.HandleStr(a.Handle), netlink.HandleStr(a.Parent))
		}
	}
	return s, nil
}

// restore puts the device's saved qdiscs back. A device that is gone has
// nothing to restore.
func (s *savedRoot) restore(h *netlink.Handle) error {
	link, err := h.LinkByIndex(s.ifindex)
	var gone netlink.LinkNotFoundError
	switch {
	case errors.As(err, &gone):
		return nil
	case err != nil:
		return fmt.Errorf("device %s: %w", s.dev, err)
	case link.Attrs().Name != s.dev:
		return nil // its index reused by another device
	}
	// Deleting the Manager's root (and its leaves with it) brings back
	// the kernel's default; a saved root then replaces that, and the
	// saved leaves the default leaves under it. (Replacing the Manager's
	// root directly would change it in place where the handles match,
	// which mq does not support.)
	if err := deleteRoot(h, link); err != nil {
		return fmt.Errorf("device %s: restore the default qdisc: %w", s.dev, err)
	}
	if s.root == nil {
		return nil
	}
	if err := h.QdiscReplace(s.root); err != nil {
		return fmt.Errorf("device %s: restore root qdisc %s: %w", s.dev, s.root.Type(), err)
	}
	for _, q := range s.leaves {
		if err := h.QdiscReplace(q); err != nil {
			return fmt.Errorf("device %s: restore qdisc %s under %s: %w", s.dev, q.Type(), netlink.HandleStr(q.Attrs().Parent), err)
		}
	}
	return nil
}

// deleteRoot deletes link's root qdisc, which brings back the kernel's
// default.
func deleteRoot(h *netlink.Handle, link netlink.Link) error {
	qs, err := h.QdiscList(link)
	if err != nil {
		return err
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT && q.Attrs().Handle != 0 {
			if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
		}
	}
	return nil
}

// deleteRootQdisc deletes link's root qdisc if it is of kind, which
// brings back the device's default.
func deleteRootQdisc(h *netlink.Handle, link netlink.Link, kind string) error {
	qs, err := h.QdiscList(link)
	if err != nil {
		return err
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT && q.Type() == kind {
			if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
		}
	}
	return nil
}
