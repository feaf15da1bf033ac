package ipcache

import (
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/nodeplane/nodeplane/identity"
)

func entry(id identity.ID) Entry { return Entry{Identity: id} }

func TestIPCacheLongestPrefixMatch(t *testing.T) {
	c := New()
	for p, id := range map[string]identity.ID{
		"0.0.0.0/0":       identity.ReservedWorldIPv4,
		"10.0.0.0/8":      1<<24 | 1,
		"10.1.0.0/16":     65792,
		"10.1.2.3/32":     65793,
		"10.1.2.128/25":   65794,
		"192.168.0.0/24":  65795,
		"::/0":            identity.ReservedWorldIPv6,
		"2001:db8::/32":   1<<24 | 2,
		"2001:db8::1/128": 65796,
		"2001:db8:1::/48": 65797,
		"fe80::/10":       identity.ReservedHost,
	} {
		if err := c.Upsert(netip.MustParsePrefix(p), entry(id)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		addr   string
		prefix string
		id     identity.ID
	}{
		{"10.1.2.3", "10.1.2.3/32", 65793},
		{"10.1.2.4", "10.1.0.0/16", 65792},
		{"10.1.2.200", "10.1.2.128/25", 65794},
		{"10.2.0.1", "10.0.0.0/8", 1<<24 | 1},
		{"11.0.0.1", "0.0.0.0/0", identity.ReservedWorldIPv4},
		{"192.168.0.255", "192.168.0.0/24", 65795},
		{"192.168.1.0", "0.0.0.0/0", identity.ReservedWorldIPv4},
		{"2001:db8::1", "2001:db8::1/128", 65796},
		{"2001:db8::2", "2001:db8::/32", 1<<24 | 2},
		{"2001:db8:1::5", "2001:db8:1::/48", 65797},
		{"2001:db9::1", "::/0", identity.ReservedWorldIPv6},
		{"fe80::1%eth0", "fe80::/10", identity.ReservedHost},
		{"::ffff:10.1.2.3", "::/0", identity.ReservedWorldIPv6},
	} {
		p, e, ok := c.Lookup(netip.MustParseAddr(tc.addr))
		if !ok || p != netip.MustParsePrefix(tc.prefix) || e.Identity != tc.id {
			t.Errorf("Lookup(%s) = %v %v %v; want %s %v", tc.addr, p, e.Identity, ok, tc.prefix, tc.id)
		}
	}

	// Without the /0 entries the families fall through to nothing.
	c.Delete(netip.MustParsePrefix("0.0.0.0/0"))
	c.Delete(netip.MustParsePrefix("::/0"))
	for _, a := range []string{"11.0.0.1", "2001:db9::1"} {
		if p, _, ok := c.Lookup(netip.MustParseAddr(a)); ok {
			t.Errorf("Lookup(%s) = %v after deleting /0", a, p)
		}
	}
	// Deleting a /32 uncovers the /16.
	c.Delete(netip.MustParsePrefix("10.1.2.3/32"))
	if p, _, _ := c.Lookup(netip.MustParseAddr("10.1.2.3")); p != netip.MustParsePrefix("10.1.0.0/16") {
		t.Errorf("after deleting the /32: %v", p)
	}
	if _, _, ok := c.Lookup(netip.Addr{}); ok {
		t.Error("invalid address matched")
	}
}

func TestIPCacheMasksPrefixes(t *testing.T) {
	c := New()
	if err := c.Upsert(netip.MustParsePrefix("10.1.2.3/8"), entry(65792)); err != nil {
		t.Fatal(err)
	}
	if e, ok := c.Get(netip.MustParsePrefix("10.0.0.0/8")); !ok || e.Identity != 65792 {
		t.Errorf("Get(10.0.0.0/8) = %v, %v", e, ok)
	}
	if err := c.Delete(netip.MustParsePrefix("10.9.9.9/8")); err != nil {
		t.Errorf("Delete of an unmasked spelling: %v", err)
	}
	if c.Len() != 0 {
		t.Errorf("Len() = %d", c.Len())
	}
}

func TestIPCacheBadInput(t *testing.T) {
	c := New()
	good := netip.MustParsePrefix("10.0.0.0/8")
	c.Upsert(good, entry(65792))
	for name, tc := range map[string]struct {
		prefix netip.Prefix
		entry  Entry
		want   error
	}{
		"zero prefix":        {netip.Prefix{}, entry(65792), identity.ErrInvalidPrefix},
		"mapped prefix":      {netip.MustParsePrefix("::ffff:10.0.0.0/104"), entry(65792), identity.ErrInvalidPrefix},
		"unknown identity":   {good, entry(identity.Unknown), identity.ErrInvalidID},
		"invalid identity":   {good, entry(1 << 26), identity.ErrInvalidID},
		"zoned tunnel":       {good, Entry{Identity: 65792, TunnelEndpoint: netip.MustParseAddr("fe80::1%eth0")}, identity.ErrInvalidPrefix},
		"unspecified tunnel": {good, Entry{Identity: 65792, TunnelEndpoint: netip.IPv4Unspecified()}, identity.ErrInvalidPrefix},
	} {
		if err := c.Upsert(tc.prefix, tc.entry); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if err := c.Delete(netip.MustParsePrefix("10.0.0.0/16")); !errors.Is(err, ErrPrefixNotFound) {
		t.Errorf("Delete absent: %v", err)
	}
	if e, _ := c.Get(good); c.Len() != 1 || e.Identity != 65792 {
		t.Error("bad input changed the ipcache")
	}
}

// TestIPCacheRandomAgainstLinearScan compares Lookup with a brute-force
// longest match over random overlapping prefixes of both families,
// including /0, /32 and /128.
func TestIPCacheRandomAgainstLinearScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	c := New()
	model := map[netip.Prefix]identity.ID{}
	randAddr := func(v6 bool) netip.Addr {
		if v6 {
			var b [16]byte
			b[0], b[1] = 0x20, 0x01 // keep addresses clustered for overlaps
			for i := 2; i < 16; i++ {
				b[i] = byte(rng.IntN(4))
			}
			return netip.AddrFrom16(b)
		}
		return netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(4)), byte(rng.IntN(4))})
	}
	for i := range 5000 {
		v6 := rng.IntN(2) == 0
		bits := []int{0, 8, 16, 24, 30, 32}[rng.IntN(6)]
		if v6 {
			bits = []int{0, 16, 32, 64, 100, 127, 128}[rng.IntN(7)]
		}
		p, _ := randAddr(v6).Prefix(bits)
		if rng.IntN(3) == 0 {
			err := c.Delete(p)
			if _, ok := model[p]; ok != (err == nil) {
				t.Fatalf("Delete(%v) = %v, model has it: %v", p, err, ok)
			}
			delete(model, p)
			continue
		}
		id := identity.ID(65792 + i)
		if err := c.Upsert(p, entry(id)); err != nil {
			t.Fatal(err)
		}
		model[p] = id
	}
	if c.Len() != len(model) {
		t.Fatalf("Len() = %d, model %d", c.Len(), len(model))
	}
	for range 20000 {
		addr := randAddr(rng.IntN(2) == 0)
		var best netip.Prefix
		found := false
		for p := range model {
			if p.Contains(addr) && (!found || p.Bits() > best.Bits()) {
				best, found = p, true
			}
		}
		p, e, ok := c.Lookup(addr)
		if ok != found || (found && (p != best || e.Identity != model[best])) {
			t.Fatalf("Lookup(%v) = %v %v %v; linear scan says %v %v %v", addr, p, e.Identity, ok, best, model[best], found)
		}
	}
	got := map[netip.Prefix]identity.ID{}
	for p, e := range c.All() {
		got[p] = e.Identity
	}
	if !maps.Equal(got, model) {
		t.Error("All() differs from the model")
	}
}

// memWriter is an in-memory Writer whose calls can be made to fail.
type memWriter struct {
	m    map[netip.Prefix]Entry
	fail func(op string, p netip.Prefix) error
}

func newMemWriter() *memWriter { return &memWriter{m: map[netip.Prefix]Entry{}} }

func (w *memWriter) UpsertPrefix(p netip.Prefix, e Entry) error {
	if w.fail != nil {
		if err := w.fail("upsert", p); err != nil {
			return err
		}
	}
	w.m[p] = e
	return nil
}

func (w *memWriter) DeletePrefix(p netip.Prefix) error {
	if w.fail != nil {
		if err := w.fail("delete", p); err != nil {
			return err
		}
	}
	delete(w.m, p)
	return nil
}

func modelOf(c *IPCache) map[netip.Prefix]Entry {
	m := map[netip.Prefix]Entry{}
	for p, e := range c.All() {
		m[p] = e
	}
	return m
}

func TestIPCacheWriters(t *testing.T) {
	errFull := errors.New("map full")
	c := New()
	p1, p2 := netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")
	c.Upsert(p1, entry(65792))

	a, b := newMemWriter(), newMemWriter()
	if err := c.AddWriter(a); err != nil {
		t.Fatal(err)
	}
	if err := c.AddWriter(a); err == nil {
		t.Error("writer registered twice")
	}
	if err := c.AddWriter(b); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(a.m, modelOf(c)) || !maps.Equal(b.m, modelOf(c)) {
		t.Fatal("AddWriter did not copy the current entries")
	}
	c.Upsert(netip.MustParsePrefix("10.1.2.3/16"), entry(65793))
	if _, ok := a.m[netip.MustParsePrefix("10.1.0.0/16")]; !ok {
		t.Error("writer got an unmasked prefix")
	}

	// The second writer fails: the first is put back, nothing changes.
	b.fail = func(op string, p netip.Prefix) error {
		if op == "upsert" && p == p2 {
			return errFull
		}
		return nil
	}
	err := c.Upsert(p2, entry(65794))
	var werr *WriterError
	if !errors.Is(err, ErrWriter) || !errors.Is(err, errFull) || !errors.As(err, &werr) || werr.OutOfSync {
		t.Fatalf("failing writer: %v", err)
	}
	if _, ok := c.Get(p2); ok {
		t.Error("failed upsert changed the model")
	}
	if !maps.Equal(a.m, modelOf(c)) || !maps.Equal(b.m, modelOf(c)) || c.OutOfSync() != 0 {
		t.Error("writers disagree with the model after a rolled-back upsert")
	}

	// Changing an existing entry fails on b and b cannot be put back
	// either: the error says b is out of sync, and Resync repairs it.
	broken := true
	b.fail = func(op string, p netip.Prefix) error {
		if p == p1 && broken {
			if op == "upsert" {
				b.m[p] = entry(1) // a writer that half-applies: worst case
			}
			return errFull
		}
		return nil
	}
	err = c.Upsert(p1, entry(65800))
	if !errors.As(err, &werr) || !werr.OutOfSync || c.OutOfSync() != 1 {
		t.Fatalf("unrecoverable writer: %v, OutOfSync() = %d", err, c.OutOfSync())
	}
	if e, _ := c.Get(p1); e.Identity != 65792 || a.m[p1].Identity != 65792 {
		t.Error("model or healthy writer changed by a failed upsert")
	}
	if err := c.Resync(); !errors.Is(err, errFull) {
		t.Errorf("Resync while still broken: %v", err)
	}
	broken = false
	if err := c.Resync(); err != nil || c.OutOfSync() != 0 || !maps.Equal(b.m, modelOf(c)) {
		t.Errorf("Resync: %v, OutOfSync %d, writer %v, model %v", err, c.OutOfSync(), b.m, modelOf(c))
	}

	// A failing delete is rolled back too.
	b.fail = func(op string, p netip.Prefix) error {
		if op == "delete" {
			return errFull
		}
		return nil
	}
	if err := c.Delete(p1); !errors.Is(err, errFull) {
		t.Fatalf("failing delete: %v", err)
	}
	if _, ok := c.Get(p1); !ok || !maps.Equal(a.m, modelOf(c)) {
		t.Error("failed delete changed the model or the first writer")
	}
	b.fail = nil

	// A writer whose initial copy fails is not registered and is emptied.
	d := newMemWriter()
	d.fail = func(op string, p netip.Prefix) error {
		if op == "upsert" && p.Addr().Is6() {
			return errFull
		}
		return nil
	}
	c.Upsert(p2, entry(65794))
	if err := c.AddWriter(d); !errors.Is(err, errFull) || len(d.m) != 0 {
		t.Errorf("AddWriter with failing copy: %v, writer holds %v", err, d.m)
	}
	c.Upsert(netip.MustParsePrefix("192.0.2.0/24"), entry(65795))
	if len(d.m) != 0 {
		t.Error("unregistered writer receives changes")
	}
	if !c.RemoveWriter(b) || c.RemoveWriter(b) {
		t.Error("RemoveWriter")
	}
	c.Delete(p2)
	if _, ok := b.m[p2]; !ok {
		t.Error("removed writer still receives changes")
	}
	if !maps.Equal(a.m, modelOf(c)) {
		t.Error("remaining writer disagrees with the model")
	}
}

func TestIPCacheWatch(t *testing.T) {
	ctx := context.Background()
	c := New()
	p1 := netip.MustParsePrefix("10.0.0.0/8")
	c.Upsert(p1, entry(65792))
	snap, w := c.Watch(identity.WatchOptions{})
	defer w.Close()
	if len(snap) != 1 || snap[0].Prefix != p1 {
		t.Fatalf("snapshot %v", snap)
	}
	tun := Entry{Identity: 65792, TunnelEndpoint: netip.MustParseAddr("192.0.2.1"), Flags: FlagSkipTunnel}
	c.Upsert(p1, entry(65792)) // unchanged: no event
	c.Upsert(p1, tun)
	c.Delete(p1)
	for _, want := range []Event{{Prefix: p1, Entry: tun}, {Prefix: p1, Deleted: true}} {
		if got, err := w.Next(ctx); err != nil || got != want {
			t.Errorf("event %v, %v; want %v", got, err, want)
		}
	}
	if w.Backlog() != 0 {
		t.Error("extra events")
	}
}

// TestIPCacheAddWriterNil: a nil writer, untyped or a typed nil pointer, is
// refused when it is added, not found by a panic in the next Upsert.
func TestIPCacheAddWriterNil(t *testing.T) {
	for name, w := range map[string]Writer{
		"nil interface":     nil,
		"typed nil pointer": (*memWriter)(nil),
	} {
		t.Run(name, func(t *testing.T) {
			c := New()
			if err := c.AddWriter(w); !errors.Is(err, ErrInvalidWriter) {
				t.Errorf("AddWriter(nil) = %v, want ErrInvalidWriter", err)
			}
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("Upsert after AddWriter(nil) panicked: %v", r)
					}
				}()
				if err := c.Upsert(netip.MustParsePrefix("10.0.0.0/8"), entry(65792)); err != nil {
					t.Errorf("Upsert: %v", err)
				}
			}()
			if c.RemoveWriter(w) {
				t.Error("RemoveWriter found the nil writer registered")
			}
		})
	}
}

func TestIPCacheAddWriterTwice(t *testing.T) {
	c := New()
	w := newMemWriter()
	if err := c.AddWriter(w); err != nil {
		t.Fatal(err)
	}
	if err := c.AddWriter(w); !errors.Is(err, ErrInvalidWriter) {
		t.Fatalf("second AddWriter = %v, want ErrInvalidWriter", err)
	}
}
