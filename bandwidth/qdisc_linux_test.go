package bandwidth

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// tcShow is iproute2's view of dev's qdiscs (tc -d -j qdisc show): the
// oracle the restore tests compare with, independent of the netlink
// package that saved and restored them. Counters that traffic moves
// (htb's direct_packets_stat; a router solicitation may leave meanwhile)
// are left out.
func tcShow(t *testing.T, ns *testutils.NetNS, dev string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command("tc", "-d", "-j", "qdisc", "show", "dev", dev)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := ns.Run(cmd); err != nil {
		t.Fatalf("tc qdisc show dev %s: %v: %s", dev, err, errOut.Bytes())
	}
	return counters.ReplaceAllString(out.String(), "")
}

var counters = regexp.MustCompile(`"direct_packets_stat":[0-9]+,?`)

// multiQueueVeth adds a veth pair with queues TX queues to ns and sets it up.
func multiQueueVeth(t *testing.T, ns *testutils.NetNS, name string, queues int) netlink.Link {
	t.Helper()
	h := ns.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: name, NumTxQueues: queues, NumRxQueues: queues},
		PeerName:  name + "p",
	}); err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestPrivilegedQdiscRestore saves a device's qdiscs, puts something else
// in their place (a tbf or htb root, standing in for fq, which this CI's
// kernel lacks) and restores them: tc must show the device exactly as
// before. Configurations restore could not rebuild are refused and left
// alone.
func TestPrivilegedQdiscRestore(t *testing.T) {
	testutils.RequirePrivileged(t)
	ns := testutils.NewNetNS(t)
	h := ns.Netlink(t)
	testutils.NewVeth(t, ns, "v0", ns, "v1")
	mq := multiQueueVeth(t, ns, "m0", 4)
	link := func(name string) netlink.Link {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	tbf := func(l netlink.Link, parent, handle uint32, rate Rate) *netlink.Tbf {
		q := tbfQdisc(l.Attrs().Index, rate, Config{TBFLatency: defaultTBFLatency})
		q.Parent, q.Handle = parent, handle
		return q
	}
	htb := func(l netlink.Link) netlink.Qdisc {
		return netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(7, 0)})
	}

	// An fq of someone's own (not the Manager's parameters), as a root
	// or as mq's leaf: what a crashed Manager leaves behind looks so.
	fq := func(l netlink.Link, parent, handle uint32) *netlink.Fq {
		q := netlink.NewFq(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: parent, Handle: handle})
		q.Horizon, q.HorizonDropPolicy, q.Buckets, q.FlowPacketLimit = 700_000, netlink.HORIZON_DROP_POLICY_CAP, 12, 50
		return q
	}
	for _, tc := range []struct {
		name   string
		dev    string
		needFq bool
		setup  func(netlink.Link) error // the configuration to save
		other  func(netlink.Link) error // what takes its place
	}{
		{"kernel default", "v0", false, nil, func(l netlink.Link) error {
			return h.QdiscReplace(tbf(l, netlink.HANDLE_ROOT, netlink.MakeHandle(1, 0), 10*Mbit))
		}},
		{"tbf", "v0", false, func(l netlink.Link) error {
			return h.QdiscReplace(tbf(l, netlink.HANDLE_ROOT, netlink.MakeHandle(5, 0), 30*Mbit))
		}, func(l netlink.Link) error {
			return h.QdiscReplace(htb(l))
		}},
		{"tbf replaced by tbf with the same handle", "v0", false, func(l netlink.Link) error {
			return h.QdiscReplace(tbf(l, netlink.HANDLE_ROOT, netlink.MakeHandle(1, 0), 30*Mbit))
		}, func(l netlink.Link) error {
			return h.QdiscReplace(tbf(l, netlink.HANDLE_ROOT, netlink.MakeHandle(1, 0), 70*Mbit))
		}},
		{"mq with tbf leaves", "m0", false, func(l netlink.Link) error {
			if err := h.QdiscReplace(&netlink.GenericQdisc{
				QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)},
				QdiscType:  "mq",
			}); err != nil {
				return fmt.Errorf("mq: %w", err)
			}
			// Two of the four queues get a tbf; the others keep mq's
			// default leaves.
			for i := uint16(1); i <= 2; i++ {
				if err := h.QdiscReplace(tbf(l, netlink.MakeHandle(1, i), netlink.MakeHandle(20+i, 0), Rate(i)*10*Mbit)); err != nil {
					return err
				}
			}
			return nil
		}, func(l netlink.Link) error {
			return h.QdiscReplace(tbf(l, netlink.HANDLE_ROOT, netlink.MakeHandle(9, 0), 10*Mbit))
		}},
		{"fq", "v0", true, func(l netlink.Link) error {
			return h.QdiscReplace(fq(l, netlink.HANDLE_ROOT, netlink.MakeHandle(1, 0)))
		}, func(l netlink.Link) error {
			return h.QdiscReplace(tbf(l, netlink.HANDLE_ROOT, netlink.MakeHandle(9, 0), 10*Mbit))
		}},
		{"mq with fq leaves", "m0", true, func(l netlink.Link) error {
			if err := h.QdiscReplace(&netlink.GenericQdisc{
				QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)},
				QdiscType:  "mq",
			}); err != nil {
				return err
			}
			for i := uint16(1); i <= 4; i++ {
				if err := h.QdiscReplace(fq(l, netlink.MakeHandle(1, i), netlink.MakeHandle(10+i, 0))); err != nil {
					return err
				}
			}
			return nil
		}, func(l netlink.Link) error {
			return h.QdiscReplace(tbf(l, netlink.HANDLE_ROOT, netlink.MakeHandle(9, 0), 10*Mbit))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needFq {
				testutils.SkipIfNotSupported(t, HaveEDT())
			}
			l := link(tc.dev)
			if err := deleteRoot(h, l); err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				if err := tc.setup(l); err != nil {
					t.Fatal(err)
				}
			}
			before := tcShow(t, ns, tc.dev)
			saved, err := saveRoot(h, l)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.other(l); err != nil {
				t.Fatal(err)
			}
			if mid := tcShow(t, ns, tc.dev); mid == before {
				t.Fatalf("the stand-in did not change the qdiscs:\n%s", mid)
			}
			if err := saved.restore(h); err != nil {
				t.Fatal(err)
			}
			if after := tcShow(t, ns, tc.dev); after != before {
				t.Errorf("after restore:\n%s\nbefore:\n%s", after, before)
			}
		})
	}

	t.Run("device gone", func(t *testing.T) {
		gone := multiQueueVeth(t, ns, "g0", 1)
		saved, err := saveRoot(h, gone)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkDel(gone); err != nil {
			t.Fatal(err)
		}
		if err := saved.restore(h); err != nil {
			t.Errorf("restoring a device that is gone: %v", err)
		}
	})

	t.Run("refused", func(t *testing.T) {
		l := link("v0")
		if err := h.QdiscReplace(htb(l)); err != nil {
			t.Fatal(err)
		}
		before := tcShow(t, ns, "v0")
		if _, err := saveRoot(h, l); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("saving an htb root: %v, want ErrInvalidConfig", err)
		}
		if _, err := New(Config{Mechanism: MechanismEDT, NodeNetNS: nsPath(ns), Devices: []string{"v0"}}); err == nil {
			t.Errorf("New with EDT on a device with an htb root succeeded")
		}
		if after := tcShow(t, ns, "v0"); after != before {
			t.Errorf("a refused device changed:\n%s\nbefore:\n%s", after, before)
		}
		// A leaf under mq that is not a kind restore can rebuild.
		if err := deleteRoot(h, mq); err != nil {
			t.Fatal(err)
		}
		if err := h.QdiscReplace(&netlink.GenericQdisc{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: mq.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)},
			QdiscType:  "mq",
		}); err != nil {
			t.Fatal(err)
		}
		if err := h.QdiscReplace(netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: mq.Attrs().Index, Parent: netlink.MakeHandle(1, 3), Handle: netlink.MakeHandle(33, 0)})); err != nil {
			t.Fatal(err)
		}
		if _, err := saveRoot(h, mq); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("saving mq with an htb leaf: %v, want ErrInvalidConfig", err)
		}
	})
}
