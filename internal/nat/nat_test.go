package nat

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

func TestPorts(t *testing.T) {
	for _, tc := range []struct {
		min, max         uint16
		wantMin, wantMax uint16
		ok               bool
	}{
		{0, 0, DefaultPortMin, DefaultPortMax, true},
		{1024, 1024, 1024, 1024, true},
		{61000, 61007, 61000, 61007, true},
		{0, 10, 0, 0, false},
		{10, 0, 0, 0, false},
		{2000, 1999, 0, 0, false},
	} {
		lo, hi, err := Ports(tc.min, tc.max)
		if tc.ok != (err == nil) || lo != tc.wantMin || hi != tc.wantMax {
			t.Errorf("Ports(%d, %d) = %d, %d, %v", tc.min, tc.max, lo, hi, err)
		}
		if err != nil && !errors.Is(err, ErrInvalidPorts) {
			t.Errorf("Ports(%d, %d): %v is not ErrInvalidPorts", tc.min, tc.max, err)
		}
	}
}

func TestAddrBytes(t *testing.T) {
	for _, s := range []string{"203.0.113.1", "fd00::1", "::ffff:1.2.3.4"} {
		a := netip.MustParseAddr(s)
		b, fam := AddrBytes(a)
		if got := Addr(b, fam); got != a {
			t.Errorf("%s -> % x (%d) -> %s", a, b, fam, got)
		}
	}
	if PortOf(PortBytes(61234)) != 61234 || PortBytes(0x1234) != [2]byte{0x12, 0x34} {
		t.Error("port conversion")
	}
}

// testTable is a table with the layout of np_nat.
func testTable(t *testing.T, life Lifetimes) *Table {
	testutils.RequirePrivileged(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 40, ValueSize: 56, MaxEntries: 1024})
	testutils.SkipIfNotSupported(t, err)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return New(m, life)
}

// flow puts a translated flow (egress and ingress entries, as the
// programs create them) and returns its two keys.
func flow(t *testing.T, tb *Table, proto uint8, src string, port uint16, seenOut, seenIn time.Duration, flags uint8) (Key, Key) {
	t.Helper()
	k := Key{SrcPort: PortBytes(40000), DstPort: PortBytes(80), Proto: proto, Family: FamilyV4, Dir: Egress}
	k.SrcAddr, _ = AddrBytes(netip.MustParseAddr(src))
	k.DstAddr, _ = AddrBytes(netip.MustParseAddr("203.0.113.2"))
	out := Entry{Port: PortBytes(port), Seen: uint64(seenOut), Created: uint64(seenOut)}
	out.Addr, _ = AddrBytes(netip.MustParseAddr("203.0.113.1"))
	r := ReverseOf(k, out)
	in := Entry{Addr: k.SrcAddr, Port: k.SrcPort, Seen: uint64(seenIn), Created: uint64(seenOut), Flags: flags}
	for _, kv := range []struct {
		k Key
		v Entry
	}{{r, in}, {k, out}} {
		if err := tb.Map().Put(kv.k, kv.v); err != nil {
			t.Fatal(err)
		}
	}
	return k, r
}

func present(t *testing.T, tb *Table, k Key) bool {
	var v Entry
	err := tb.Map().Lookup(k, &v)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// TestPrivilegedGC: a flow lives its protocol's lifetime after its last
// packet in either direction (TCP, TCP after FIN/RST, others); expired
// flows go with both entries, live ones stay whole; an ingress entry
// without its egress entry goes once it is a second old, an egress entry
// without its ingress entry at once.
func TestPrivilegedGC(t *testing.T) {
	tb := testTable(t, Lifetimes{TCP: time.Hour, NonTCP: time.Minute, Close: 10 * time.Second})
	now := 100 * time.Hour
	type want struct {
		name   string
		k, r   Key
		remove bool
	}
	var cases []want
	add := func(name string, remove bool, proto uint8, src string, port uint16, out, in time.Duration, flags uint8) {
		k, r := flow(t, tb, proto, src, port, now-out, now-in, flags)
		cases = append(cases, want{name, k, r, remove})
	}
	add("TCP idle 59 min", false, 6, "10.1.0.1", 61000, 59*time.Minute, 2*time.Hour, 0)
	add("TCP idle 61 min", true, 6, "10.1.0.2", 61001, 61*time.Minute, 62*time.Minute, 0)
	add("TCP reply 1 min ago", false, 6, "10.1.0.3", 61002, 3*time.Hour, time.Minute, 0)
	add("TCP closing idle 11 s", true, 6, "10.1.0.4", 61003, 11*time.Second, 11*time.Second, FlagClosing)
	add("TCP closing idle 9 s", false, 6, "10.1.0.5", 61004, 9*time.Second, 20*time.Second, FlagClosing)
	add("UDP idle 61 s", true, 17, "10.1.0.6", 61005, 61*time.Second, 61*time.Second, 0)
	add("UDP idle 59 s", false, 17, "10.1.0.7", 61006, 59*time.Second, 70*time.Second, 0)
	add("ICMP idle 2 min", true, 1, "10.1.0.8", 61007, 2*time.Minute, 2*time.Minute, 0)

	// Orphans.
	oldIn := Key{SrcAddr: [16]byte{203, 0, 113, 2}, DstAddr: [16]byte{203, 0, 113, 1}, SrcPort: PortBytes(80), DstPort: PortBytes(62000), Proto: 6, Family: FamilyV4, Dir: Ingress}
	youngIn := oldIn
	youngIn.DstPort = PortBytes(62001)
	lone := Key{SrcAddr: [16]byte{10, 1, 0, 9}, DstAddr: [16]byte{203, 0, 113, 2}, SrcPort: PortBytes(1), DstPort: PortBytes(80), Proto: 6, Family: FamilyV4, Dir: Egress}
	for k, v := range map[Key]Entry{
		oldIn:   {Created: uint64(now - 2*time.Second), Seen: uint64(now)},
		youngIn: {Created: uint64(now - 500*time.Millisecond)},
		lone:    {Addr: [16]byte{203, 0, 113, 1}, Port: PortBytes(62002), Seen: uint64(now)},
	} {
		if err := tb.Map().Put(k, v); err != nil {
			t.Fatal(err)
		}
	}

	st, err := tb.Stats()
	if err != nil || st.Flows != 9 || st.Entries != 19 || st.ICMP != 1 {
		t.Errorf("stats before: %+v, %v", st, err)
	}
	n, err := tb.GC(now)
	if err != nil {
		t.Fatal(err)
	}
	removed := 0
	for _, c := range cases {
		if c.remove {
			removed++
		}
		if present(t, tb, c.k) == c.remove || present(t, tb, c.r) == c.remove {
			t.Errorf("%s: egress present %v, ingress present %v, want removed %v", c.name, present(t, tb, c.k), present(t, tb, c.r), c.remove)
		}
	}
	if n != removed {
		t.Errorf("GC removed %d flows, want %d", n, removed)
	}
	if present(t, tb, oldIn) || !present(t, tb, youngIn) || present(t, tb, lone) {
		t.Errorf("orphans: old ingress %v (want gone), young ingress %v (want kept), lone egress %v (want gone)",
			present(t, tb, oldIn), present(t, tb, youngIn), present(t, tb, lone))
	}
}

// TestPrivilegedCollector: the periodic collector removes what expires,
// counts its runs and stops.
func TestPrivilegedCollector(t *testing.T) {
	tb := testTable(t, Lifetimes{NonTCP: time.Second})
	now := Now()
	k, r := flow(t, tb, 17, "10.1.0.1", 61000, 0, 0, 0)
	// Rewrite the times: seen now.
	for _, key := range []Key{k, r} {
		var v Entry
		if err := tb.Map().Lookup(key, &v); err != nil {
			t.Fatal(err)
		}
		v.Seen, v.Created = uint64(now), uint64(now)
		if err := tb.Map().Put(key, v); err != nil {
			t.Fatal(err)
		}
	}
	c := tb.StartGC(50 * time.Millisecond)
	defer c.Stop()
	time.Sleep(300 * time.Millisecond)
	if !present(t, tb, k) {
		t.Fatal("collected before its lifetime")
	}
	deadline := time.Now().Add(3 * time.Second)
	for present(t, tb, k) || present(t, tb, r) {
		if time.Now().After(deadline) {
			t.Fatal("not collected 3 s after its lifetime")
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.Stop()
	st := c.Stats()
	if st.Runs < 5 || st.Removed != 1 || st.LastErr != nil {
		t.Errorf("collector stats %+v", st)
	}
	c.Stop() // twice is fine
}
