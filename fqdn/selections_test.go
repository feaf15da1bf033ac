package fqdn

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func newTestSelections(t *testing.T, minTTL time.Duration) (*Selections, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1000, 0)}
	s, err := New(Config{MinTTL: minTTL, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func TestSelectionsFollowAnswersAndTTL(t *testing.T) {
	s, c := newTestSelections(t, 0)
	pat := Selector{MatchPattern: "*.example.test"}
	name := Selector{MatchName: "db.example.test"}
	if ch, err := s.AddSelector(pat); err != nil || len(ch) != 0 {
		t.Fatalf("AddSelector: %v %v", ch, err)
	}
	ch, err := s.Observe("WWW.example.test", addrs("192.0.2.1", "192.0.2.2"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch) != 2 || ch[0].Addr != addrs("192.0.2.1")[0] || !slices.Equal(ch[0].Selectors, []Selector{pat}) {
		t.Fatalf("changes %v", ch)
	}
	// A name no selector matches is remembered but selects nothing.
	if ch, _ := s.Observe("other.test", addrs("198.51.100.1"), time.Minute); len(ch) != 0 {
		t.Fatalf("unselected name changed %v", ch)
	}
	// A selector added later selects what the cache already holds.
	if _, err := s.Observe("db.example.test", addrs("192.0.2.2"), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	ch, _ = s.AddSelector(name)
	if len(ch) != 1 || ch[0].Addr != addrs("192.0.2.2")[0] || len(ch[0].Selectors) != 2 {
		t.Fatalf("AddSelector changes %v", ch)
	}
	if got := s.Selected(pat); !slices.Equal(got, addrs("192.0.2.1", "192.0.2.2")) {
		t.Fatalf("Selected(pat) = %v", got)
	}
	// Nothing expires early.
	c.t = c.t.Add(10*time.Second - time.Nanosecond)
	if ch := s.Expire(); len(ch) != 0 {
		t.Fatalf("early expiry %v", ch)
	}
	// At 10 s www's answer runs out: .1 loses everything, .2 keeps both
	// selectors through db's answer (20 s).
	c.t = c.t.Add(time.Nanosecond)
	ch = s.Expire()
	if len(ch) != 1 || ch[0].Addr != addrs("192.0.2.1")[0] || len(ch[0].Selectors) != 0 {
		t.Fatalf("expiry at 10s: %v", ch)
	}
	if got := s.Names(addrs("192.0.2.2")[0]); !slices.Equal(got, []string{"db.example.test."}) {
		t.Fatalf("names of .2: %v", got)
	}
	c.t = c.t.Add(10 * time.Second)
	ch = s.Expire()
	if len(ch) != 1 || ch[0].Addr != addrs("192.0.2.2")[0] || len(ch[0].Selectors) != 0 {
		t.Fatalf("expiry at 20s: %v", ch)
	}
	if ch := s.RemoveSelector(name); len(ch) != 0 {
		t.Fatalf("RemoveSelector %v", ch)
	}
}

func TestSelectionsRefreshExtendsNeverShortens(t *testing.T) {
	s, c := newTestSelections(t, 0)
	sel := Selector{MatchName: "a.test"}
	s.AddSelector(sel)
	s.Observe("a.test", addrs("192.0.2.1"), 30*time.Second)
	// A shorter answer later does not shorten the first.
	c.t = c.t.Add(5 * time.Second)
	s.Observe("a.test", addrs("192.0.2.1"), time.Second)
	c.t = c.t.Add(20 * time.Second)
	if ch := s.Expire(); len(ch) != 0 {
		t.Fatalf("shortened: %v", ch)
	}
	c.t = c.t.Add(5 * time.Second)
	if ch := s.Expire(); len(ch) != 1 {
		t.Fatalf("not expired at 30s: %v", ch)
	}
}

func TestSelectionsMinTTL(t *testing.T) {
	s, c := newTestSelections(t, time.Minute)
	sel := Selector{MatchName: "a.test"}
	s.AddSelector(sel)
	// TTL 0 answers are raised to the minimum.
	if ch, _ := s.Observe("a.test", addrs("192.0.2.1"), 0); len(ch) != 1 {
		t.Fatalf("observe: %v", ch)
	}
	c.t = c.t.Add(59 * time.Second)
	if ch := s.Expire(); len(ch) != 0 {
		t.Fatalf("expired before min TTL: %v", ch)
	}
	if next, ok := s.NextExpiry(); !ok || next != time.Unix(1060, 0) {
		t.Fatalf("NextExpiry %v %v", next, ok)
	}
	c.t = c.t.Add(time.Second)
	if ch := s.Expire(); len(ch) != 1 {
		t.Fatalf("not expired at min TTL: %v", ch)
	}
	if _, err := New(Config{MinTTL: -1}); err == nil {
		t.Fatal("negative MinTTL accepted")
	}
}

func TestSelectionsRemoveSelector(t *testing.T) {
	s, _ := newTestSelections(t, 0)
	sel := Selector{MatchPattern: "*"}
	s.AddSelector(sel)
	s.AddSelector(sel)
	s.Observe("x.test", addrs("2001:db8::1", "::ffff:192.0.2.9"), time.Minute)
	if got := s.Selected(sel); !slices.Equal(got, addrs("192.0.2.9", "2001:db8::1")) {
		t.Fatalf("Selected = %v", got)
	}
	if ch := s.RemoveSelector(sel); len(ch) != 0 {
		t.Fatalf("first release changed %v", ch)
	}
	if ch := s.RemoveSelector(sel); len(ch) != 2 {
		t.Fatalf("last release changed %v", ch)
	}
	if _, err := s.Observe(" ", nil, time.Second); err == nil {
		t.Fatal("empty name accepted")
	}
	if _, err := s.AddSelector(Selector{MatchName: "a[b]"}); err == nil {
		t.Fatal("invalid selector accepted")
	}
}

func TestSelectionsMaxIPsPerName(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	s, err := New(Config{MaxIPsPerName: 2, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	sel := Selector{MatchName: "a.test"}
	s.AddSelector(sel)
	s.Observe("a.test", addrs("192.0.2.1"), 10*time.Second)
	s.Observe("a.test", addrs("192.0.2.2"), 30*time.Second)
	// A third address pushes out the one that would expire first.
	ch, _ := s.Observe("a.test", addrs("192.0.2.3"), 20*time.Second)
	if got := s.Selected(sel); !slices.Equal(got, addrs("192.0.2.2", "192.0.2.3")) {
		t.Fatalf("Selected = %v", got)
	}
	if len(ch) != 2 || ch[0].Addr != addrs("192.0.2.1")[0] || len(ch[0].Selectors) != 0 {
		t.Fatalf("changes %v", ch)
	}
	if _, err := New(Config{MaxIPsPerName: -1}); err == nil {
		t.Fatal("negative MaxIPsPerName accepted")
	}
}

// An answer whose TTL is zero (and no MinTTL raises it) is learnt like any
// other, as Cilium learns it before the client gets the answer, and is
// forgotten ZeroTTLLifetime later.
func TestSelectionsZeroTTL(t *testing.T) {
	s, c := newTestSelections(t, 0)
	sel := Selector{MatchName: "zero.test"}
	s.AddSelector(sel)
	ch, err := s.Observe("zero.test", addrs("192.0.2.9"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch) != 1 || !slices.Equal(ch[0].Selectors, []Selector{sel}) {
		t.Fatalf("TTL 0 answer: changes %v, want the address selected", ch)
	}
	if ch := s.Expire(); len(ch) != 0 {
		t.Fatalf("expired on arrival: %v", ch)
	}
	if next, ok := s.NextExpiry(); !ok || !next.Equal(c.t.Add(ZeroTTLLifetime)) {
		t.Fatalf("NextExpiry = %v %v, want arrival + %v", next, ok, ZeroTTLLifetime)
	}
	c.t = c.t.Add(ZeroTTLLifetime)
	if ch := s.Expire(); len(ch) != 1 || len(ch[0].Selectors) != 0 {
		t.Fatalf("after %v: changes %v, want the address released", ZeroTTLLifetime, ch)
	}
}

// MaxEntries bounds the pairs of all names together: beyond it the pair
// that would expire first goes, whichever name it belongs to.
func TestSelectionsMaxEntries(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	s, err := New(Config{MaxEntries: 3, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	all := Selector{MatchPattern: "*"}
	s.AddSelector(all)
	s.Observe("a.test", addrs("192.0.2.1", "192.0.2.2"), 30*time.Second)
	s.Observe("b.test", addrs("192.0.2.3"), 10*time.Second)
	ch, _ := s.Observe("c.test", addrs("192.0.2.4"), 20*time.Second)
	if got := s.Selected(all); !slices.Equal(got, addrs("192.0.2.1", "192.0.2.2", "192.0.2.4")) {
		t.Fatalf("Selected = %v, want b.test's address (first to expire) forgotten", got)
	}
	if len(ch) != 2 || ch[0].Addr != addrs("192.0.2.3")[0] || len(ch[0].Selectors) != 0 {
		t.Fatalf("changes %v", ch)
	}
	if names := s.Names(addrs("192.0.2.3")[0]); len(names) != 0 {
		t.Fatalf("b.test still remembered: %v", names)
	}
	// Extending a pair many times leaves one live pair, and the heap of
	// expiries does not keep every extension.
	for i := range 1000 {
		s.Observe("a.test", addrs("192.0.2.1"), time.Duration(40+i)*time.Second)
	}
	if n := len(s.cache.expiries); n > 2*s.cache.entries+64 {
		t.Fatalf("%d expiry items for %d pairs", n, s.cache.entries)
	}
	if _, err := New(Config{MaxEntries: -1}); err == nil {
		t.Fatal("negative MaxEntries accepted")
	}
}
