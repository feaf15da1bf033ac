package datapath

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
)

// randomPrefixes returns n random prefixes that overlap a lot: they are
// drawn around a few base addresses, with every length from /0 to the full
// address.
func randomPrefixes(rng *rand.Rand, n int) []netip.Prefix {
	bases := []netip.Addr{
		netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.1.200.3"),
		netip.MustParseAddr("192.0.2.77"), netip.MustParseAddr("fd00::1:2:3"),
		netip.MustParseAddr("fd00:0:0:ff::9"), netip.MustParseAddr("2001:db8::77"),
	}
	var out []netip.Prefix
	for len(out) < n {
		a := bases[rng.IntN(len(bases))]
		a = perturb(rng, a)
		bits := rng.IntN(a.BitLen() + 1)
		if rng.IntN(4) == 0 {
			bits = a.BitLen() // many host routes
		}
		out = append(out, netip.PrefixFrom(a, bits).Masked())
	}
	return out
}

// perturb flips a few random low bits of a.
func perturb(rng *rand.Rand, a netip.Addr) netip.Addr {
	b := a.AsSlice()
	for i := rng.IntN(3); i > 0; i-- {
		pos := len(b) - 1 - rng.IntN(min(len(b), 4))
		b[pos] ^= 1 << rng.IntN(8)
	}
	r, _ := netip.AddrFromSlice(b)
	return r
}

// TestPrivilegedIPCacheMatchesIdentityModel drives the BPF ipcache through
// ipcache.IPCache, the Go model, as its writer: random overlapping v4 and
// v6 prefixes (including /0, /32 and /128) are upserted and deleted, and
// the identity the from-endpoint program attaches to a destination must be
// the model's longest match, or world where the model has none.
func TestPrivilegedIPCacheMatchesIdentityModel(t *testing.T) {
	d, _ := newTestDatapath(t, Config{EventsBufferSize: 4096})
	ep := addDetached(t, d, 1, idA, "10.99.99.1", "fd99::1")

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	model := ipcache.New()
	if err := model.AddWriter(d.IPCache()); err != nil {
		t.Fatal(err)
	}
	prefixes := randomPrefixes(rng, 400)
	prefixes = append(prefixes, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))

	check := func(round int) {
		t.Helper()
		for i := 0; i < 1500; i++ {
			p := prefixes[rng.IntN(len(prefixes))]
			dst := perturb(rng, p.Addr())
			if dst.Is4() && dst == ep.IPv4() || dst.Is6() && dst == ep.IPv6() {
				continue
			}
			src := ep.IPv4()
			if dst.Is6() {
				src = ep.IPv6()
			}
			want := identity.ReservedWorld
			if _, e, ok := model.Lookup(dst); ok {
				want = e.Identity
			}
			// The policy map is empty: every packet is denied, so none
			// creates a connection, and the verdict names the identity.
			v, _, err := ep.TestRun(FromEndpoint, mustBytes(t, tcpPkt(src, dst, 1, 2, TCPSyn)))
			if err != nil {
				t.Fatal(err)
			}
			if v.DstIdentity != want {
				t.Fatalf("round %d: %v resolves to %d in the kernel, %d in the model", round, dst, v.DstIdentity, want)
			}
			// Userspace lookups walk the same trie.
			e, ok, err := d.IPCache().Lookup(dst)
			if err != nil {
				t.Fatal(err)
			}
			if got := map[bool]identity.ID{true: e.Identity, false: identity.ReservedWorld}[ok]; got != want {
				t.Fatalf("round %d: Lookup(%v) = %d, want %d", round, dst, got, want)
			}
		}
	}

	for round := 0; round < 4; round++ {
		for _, p := range prefixes {
			switch rng.IntN(3) {
			case 0:
				// Cluster-scoped or local-scope (CIDR) identities.
				e := ipcache.Entry{Identity: identity.ID(256 + rng.IntN(60000))}
				if rng.IntN(2) == 0 {
					e.Identity |= identity.LocalScopeFlag
					e.TunnelEndpoint = netip.MustParseAddr("172.16.0.1")
				}
				if err := model.Upsert(p, e); err != nil {
					t.Fatal(err)
				}
			case 1:
				if _, ok := model.Get(p); ok {
					if err := model.Delete(p); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		dump, err := d.IPCache().Dump()
		if err != nil {
			t.Fatal(err)
		}
		if len(dump) != model.Len() {
			t.Fatalf("round %d: dump has %d prefixes, model %d", round, len(dump), model.Len())
		}
		for p, e := range model.All() {
			if dump[p] != e {
				t.Fatalf("round %d: dump[%v] = %+v, want %+v", round, p, dump[p], e)
			}
		}
		check(round)
	}
}

// TestPrivilegedIPCacheRefusesInvalidIdentities: identity 0 means "any
// peer" in a policy key and cannot be a prefix's identity, nor can an ID
// that fits no range; the map is left as it was.
func TestPrivilegedIPCacheRefusesInvalidIdentities(t *testing.T) {
	d, _ := newTestDatapath(t, Config{})
	p := netip.MustParsePrefix("192.0.2.0/24")
	for _, id := range []identity.ID{identity.Unknown, 1 << 25, identity.LocalScopeFlag} {
		if err := d.IPCache().UpsertPrefix(p, ipcache.Entry{Identity: id}); !errors.Is(err, identity.ErrInvalidID) {
			t.Errorf("identity %d: %v, want identity.ErrInvalidID", uint32(id), err)
		}
	}
	if _, ok, err := d.IPCache().Lookup(netip.MustParseAddr("192.0.2.1")); ok || err != nil {
		t.Fatalf("a refused entry reached the map: %v %v", ok, err)
	}
	for _, id := range []identity.ID{identity.ReservedWorld, idRemote, identity.LocalScopeFlag | 5} {
		if err := d.IPCache().UpsertPrefix(p, ipcache.Entry{Identity: id}); err != nil {
			t.Errorf("identity %d: %v", uint32(id), err)
		}
	}
}
