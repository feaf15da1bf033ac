package datapath

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedMasqueradeRestart: with pinning, a pod's masqueraded
// connection to the world survives its Datapath closing and a new one
// taking over: Close leaves the NAT programs attached (pinned), the next
// AttachMasquerade on the interface adopts them (tcx: their links get the
// new programs in place), the NAT table keeps the flow's port, and the
// server keeps seeing the node's address, on the old connection and on a
// new one.
func TestPrivilegedMasqueradeRestart(t *testing.T) {
	bpffs := testutils.NewBPFFS(t)
	d, node, world, wan, pods := newMasqWorld(t, Config{BPFFSDir: bpffs})

	// The server answers each line with the address it sees.
	var ln net.Listener
	if err := world.Do(func() (err error) { ln, err = net.Listen("tcp4", "203.0.113.2:9000"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				}
			}()
		}
	}()
	cfg := MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr}
	if _, err := d.AttachMasquerade(cfg); err != nil {
		t.Fatal(err)
	}
	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		var c net.Conn
		if err := pods[0].Do(func() (err error) {
			c, err = net.DialTimeout("tcp4", "203.0.113.2:9000", 3*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	// ask returns the source address the server saw.
	ask := func(c net.Conn, r *bufio.Reader) (netip.AddrPort, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintln(c, "who am I"); err != nil {
			return netip.AddrPort{}, err
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return netip.AddrPort{}, err
		}
		return netip.ParseAddrPort(strings.TrimSpace(line))
	}
	c, r := dial()
	src, err := ask(c, r)
	if err != nil || src.Addr() != masqNodeAddr {
		t.Fatalf("before the restart the server saw %v (%v), want %v", src, err, masqNodeAddr)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := New(Config{BPFFSDir: bpffs, NodeNetNS: nsPath(node), ConntrackMaxEntries: 4096, IPCacheMaxEntries: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d2.Uninstall(); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	// Between the two, the pinned programs kept translating.
	if again, err := ask(c, r); err != nil || again != src {
		t.Fatalf("with no Datapath running the server saw %v (%v), want %v", again, err, src)
	}
	m2, err := d2.AttachMasquerade(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d2.attach == AttachTCX && !m2.progs.adopted {
		t.Error("AttachMasquerade did not adopt the pinned links")
	}
	if again, err := ask(c, r); err != nil || again != src {
		t.Fatalf("after the restart the old connection's server saw %v (%v), want %v", again, err, src)
	}
	c2, r2 := dial()
	if src2, err := ask(c2, r2); err != nil || src2.Addr() != masqNodeAddr {
		t.Fatalf("a new connection after the restart: the server saw %v (%v), want %v", src2, err, masqNodeAddr)
	}
}
