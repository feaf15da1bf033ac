package identity

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedInProcessAllocatorDiskFull runs a persisted allocator out
// of disk space: allocating a new label set fails with ENOSPC and hands out
// nothing (no ID, no lookup); releasing a last reference fails the same
// way and keeps the identity; held sets still allocate (a reference needs
// no write). Once there is room it writes again, and a restarted allocator
// has exactly the acknowledged identities.
func TestPrivilegedInProcessAllocatorDiskFull(t *testing.T) {
	ctx := context.Background()
	tmp := testutils.NewTmpfs(t, 64<<10)
	path := filepath.Join(tmp.Dir, "identity.state")
	a, err := NewInProcessAllocator(InProcessConfig{ClusterID: 1, StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	acked := map[ID]Labels{}
	for i := range 10 {
		ls := mustLabels(t, fmt.Sprintf("k8s:app=a%d", i))
		id, _, err := a.Allocate(ctx, ls)
		if err != nil {
			t.Fatal(err)
		}
		acked[id] = ls
	}

	tmp.Fill(t)
	fresh := mustLabels(t, "k8s:app=on-a-full-disk")
	if id, _, err := a.Allocate(ctx, fresh); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Allocate of a new set on a full disk = %v, %v; want ENOSPC", id, err)
	}
	if id, ok := a.LookupByLabels(fresh); ok {
		t.Fatalf("the failed Allocate left identity %v", id)
	}
	var some ID
	for id := range acked {
		some = id
		break
	}
	if id, isNew, err := a.Allocate(ctx, acked[some]); err != nil || isNew || id != some {
		t.Fatalf("Allocate of a held set on a full disk = %v, %v, %v", id, isNew, err)
	}
	if _, err := a.Release(ctx, some); err != nil {
		t.Fatal(err) // the second reference: no write
	}
	if released, err := a.Release(ctx, some); !errors.Is(err, unix.ENOSPC) || released {
		t.Fatalf("Release of the last reference on a full disk = %v, %v; want ENOSPC", released, err)
	}
	if ls, ok := a.Lookup(some); !ok || ls != acked[some] {
		t.Fatalf("after the failed Release identity %v is %v, %v", some, ls, ok)
	}

	tmp.Free(t)
	id, isNew, err := a.Allocate(ctx, fresh)
	if err != nil || !isNew {
		t.Fatalf("Allocate once there is room = %v, %v, %v", id, isNew, err)
	}
	acked[id] = fresh
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	b, err := NewInProcessAllocator(InProcessConfig{ClusterID: 1, StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for id, ls := range acked {
		if got, ok := b.Lookup(id); !ok || got != ls {
			t.Fatalf("restarted allocator: %v is %v, %v; want %v", id, got, ok, ls)
		}
	}
}
