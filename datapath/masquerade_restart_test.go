package datapath

import (
	"bufio"
	"fmt"
	"maps"
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

// TestPrivilegedMasqueradeExclusionsKept: attaching again (as after a
// restart, when the pinned egress program is still running) rewrites the
// exclusions without a moment in which a prefix both configurations
// exclude is missing: a lookup of an address in it, made over and over
// while Masquerades are attached and closed 10 times (after a first),
// always finds it.
// Prefixes the new configuration drops are gone afterwards.
func TestPrivilegedMasqueradeExclusionsKept(t *testing.T) {
	d, _, _, wan, _ := newMasqWorld(t, Config{})
	kept, gone := netip.MustParsePrefix("10.0.0.0/8"), []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("fd00::/8")}
	added := netip.MustParsePrefix("172.16.0.0/12")
	// Many prefixes besides, the kept one written last: were the map
	// emptied and refilled, the kept prefix would be missing for a while.
	var others []netip.Prefix
	for i := range 30 {
		others = append(others, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 0}), 24))
	}
	configs := [][]netip.Prefix{
		append(append(append([]netip.Prefix{}, gone...), others...), kept),
		append(append([]netip.Prefix{added}, others...), kept),
	}

	attach := func(exclude []netip.Prefix) error {
		m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, Exclude: exclude, GCInterval: -1})
		if err != nil {
			return err
		}
		return m.Close()
	}
	if err := attach(configs[1]); err != nil {
		t.Fatal(err)
	}

	probe := exclusionKey(netip.MustParsePrefix("10.1.2.3/32"))
	var (
		stop    = make(chan struct{})
		done    = make(chan struct{})
		lookups int
		misses  int
	)
	go func() {
		defer close(done)
		var v uint8
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := d.maps.natExclude.Lookup(probe, &v); err != nil {
				misses++
			}
			lookups++
		}
	}()
	for i := range 10 {
		if err := attach(configs[i%2]); err != nil {
			t.Error(err)
			break
		}
	}
	close(stop)
	<-done
	if misses != 0 {
		t.Errorf("%d of %d lookups of 10.1.2.3 found no exclusion while attaching", misses, lookups)
	}

	// The last configuration is the second: exactly its prefixes.
	got := map[natExcludeKey]bool{}
	var k natExcludeKey
	for it := d.maps.natExclude.Iterate(); it.Next(&k, new(uint8)); {
		got[k] = true
	}
	want := map[natExcludeKey]bool{}
	for _, p := range configs[1] {
		want[exclusionKey(p)] = true
	}
	if !maps.Equal(got, want) {
		t.Errorf("exclusions after the last attach: %v, want %v", got, want)
	}
}
