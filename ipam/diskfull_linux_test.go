package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedPoolDiskFull runs a durable pool out of disk space: an
// allocation fails with ENOSPC and is undone (the address stays free, the
// file keeps the earlier allocations); a release fails the same way and
// keeps the address allocated; once there is room the pool writes again,
// and a new pool restores exactly what was acknowledged.
func TestPrivilegedPoolDiskFull(t *testing.T) {
	tmp := testutils.NewTmpfs(t, 64<<10)
	path := filepath.Join(tmp.Dir, "ipam.state")
	open := func() *Pool {
		t.Helper()
		sf, err := NewStateFile(path)
		if err != nil {
			t.Fatal(err)
		}
		p, err := New(Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, State: sf})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := open()
	var acked []netip.Addr
	for i := range 10 {
		a, err := p.AllocateNext(IPv4, fmt.Sprintf("pod-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, a)
	}

	tmp.Fill(t)
	if a, err := p.AllocateNext(IPv4, "pod-full"); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("AllocateNext on a full disk = %v, %v; want ENOSPC", a, err)
	}
	if addrs := p.Addrs("pod-full"); len(addrs) != 0 {
		t.Fatalf("the failed allocation left %v allocated", addrs)
	}
	if err := p.Release(acked[0]); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Release on a full disk: %v, want ENOSPC", err)
	}
	if owner, ok := p.Owner(acked[0]); !ok || owner != "pod-0" {
		t.Fatalf("after the failed Release %v is owned by %q, %v; want pod-0", acked[0], owner, ok)
	}
	if used := p.Used(IPv4); used != uint64(len(acked)) {
		t.Fatalf("Used = %d after the failed calls, want %d", used, len(acked))
	}

	tmp.Free(t)
	a, err := p.AllocateNext(IPv4, "pod-after")
	if err != nil {
		t.Fatalf("AllocateNext once there is room: %v", err)
	}
	acked = append(acked, a)

	q := open()
	if used := q.Used(IPv4); used != uint64(len(acked)) {
		t.Fatalf("restored pool uses %d addresses, want %d", used, len(acked))
	}
	for _, a := range acked {
		if _, ok := q.Owner(a); !ok {
			t.Fatalf("restored pool lost %v", a)
		}
	}
}
