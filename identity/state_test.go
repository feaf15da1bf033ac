package identity

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
)

func TestPersistenceRestoresEveryID(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "identities.state")

	a, err := NewInProcessAllocator(InProcessConfig{ClusterID: 7, StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	want := map[Labels]ID{}
	for i := range 300 {
		var ls Labels
		if i%5 == 0 {
			ls, _ = CIDRLabels(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, byte(i), 0}), 24), nodeplane.SingleStack)
		} else {
			ls = mustLabels(t, fmt.Sprintf("k8s:app=a%d", i), "k8s:io.kubernetes.pod.namespace=prod")
		}
		id, _, err := a.Allocate(ctx, ls)
		if err != nil {
			t.Fatal(err)
		}
		want[ls] = id
	}
	// Free some, so that the restored set has holes.
	for ls, id := range want {
		if id.Index()%7 == 0 {
			if released, err := a.Release(ctx, id); err != nil || !released {
				t.Fatal(released, err)
			}
			delete(want, ls)
		}
	}
	if _, err := NewInProcessAllocator(InProcessConfig{ClusterID: 7, StatePath: path}); err == nil ||
		!strings.Contains(err.Error(), "in use by another allocator") {
		t.Errorf("second allocator on a live state file: %v", err)
	}
	a.Close()

	b, err := NewInProcessAllocator(InProcessConfig{ClusterID: 7, StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	snap, _ := b.Watch(WatchOptions{})
	if len(snap) != len(want) {
		t.Fatalf("restored %d identities, want %d", len(snap), len(want))
	}
	for ls, id := range want {
		if got, ok := b.Lookup(id); !ok || got != ls {
			t.Fatalf("restored Lookup(%v) = %v, %v; want %v", id, got, ok, ls)
		}
	}
	// Claim half of them: same IDs, not new.
	claimed := 0
	for ls, id := range want {
		if claimed*2 >= len(want) {
			break
		}
		got, isNew, err := b.Allocate(ctx, ls)
		if err != nil || got != id || isNew {
			t.Fatalf("Allocate(%v) after restart = %v, %v, %v; want %v", ls, got, isNew, err, id)
		}
		claimed++
	}
	// A new label set gets an ID that collides with none.
	fresh, isNew, err := b.Allocate(ctx, mustLabels(t, "k8s:app=fresh"))
	if err != nil || !isNew {
		t.Fatal(fresh, isNew, err)
	}
	for _, id := range want {
		if id == fresh {
			t.Fatalf("new ID %v reuses a restored one", fresh)
		}
	}
	// Restored IDs hold no reference.
	for ls, id := range want {
		if _, ok := b.a.cluster.byLabels[ls]; ok && b.a.cluster.byLabels[ls].restored {
			if _, err := b.Release(ctx, id); !errors.Is(err, ErrNotAllocated) {
				t.Errorf("Release of an unclaimed restored ID: %v", err)
			}
			break
		}
	}
	n, err := b.ReleaseRestored(ctx)
	if err != nil || n != len(want)-claimed {
		t.Fatalf("ReleaseRestored = %d, %v; want %d", n, err, len(want)-claimed)
	}
	b.Close()

	c, err := NewInProcessAllocator(InProcessConfig{ClusterID: 7, StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if snap, _ := c.Watch(WatchOptions{}); len(snap) != claimed+1 {
		t.Errorf("after ReleaseRestored and restart: %d identities, want %d", len(snap), claimed+1)
	}
}

func TestPersistenceFailureChangesNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	a := newTestAllocator(t, InProcessConfig{StatePath: path})
	web := mustLabels(t, "k8s:app=web")
	id, _, err := a.Allocate(ctx, web)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	_, w := a.Watch(WatchOptions{})

	// Make the temporary file impossible to create.
	if err := os.Mkdir(path+".tmp", 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Allocate(ctx, mustLabels(t, "k8s:app=db")); err == nil {
		t.Fatal("Allocate succeeded without persisting")
	}
	if _, ok := a.LookupByLabels(mustLabels(t, "k8s:app=db")); ok {
		t.Error("failed Allocate left an identity")
	}
	a.Allocate(ctx, web) // a second reference needs no write
	a.Release(ctx, id)
	if _, err := a.Release(ctx, id); err == nil {
		t.Fatal("last Release succeeded without persisting")
	}
	if ls, ok := a.Lookup(id); !ok || ls != web {
		t.Error("failed Release removed the identity")
	}
	if w.Backlog() != 0 {
		t.Errorf("failed operations announced %d events", w.Backlog())
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("state file changed")
	}
	os.Remove(path + ".tmp")
	if released, err := a.Release(ctx, id); err != nil || !released {
		t.Errorf("Release after the fault cleared = %v, %v", released, err)
	}
}

func writeState(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, stateFormat.Encode([]byte(body)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLegacyStateFileLoads: a file in the header spelling the allocator
// wrote before the state file was shared with ipam ("v1 length=<n>
// crc32c=<hex>", built here as that code built it) still restores its IDs,
// and the next save rewrites it in the current spelling.
func TestLegacyStateFileLoads(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state")
	body := `{"clusterID":2,"identities":[{"id":131328,"labels":"k8s:app=web;"},{"id":16777217,"labels":"cidr:10.0.0.0/8=;"}]}`
	header := fmt.Sprintf("nodeplane-identity-state v1 length=%d crc32c=%08x\n", len(body), crc32.Checksum([]byte(body), crc32.MakeTable(crc32.Castagnoli)))
	if err := os.WriteFile(path, []byte(header+body), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := NewInProcessAllocator(InProcessConfig{ClusterID: 2, StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if id, ok := a.LookupByLabels(mustLabels(t, "k8s:app=web")); !ok || id != 131328 {
		t.Errorf("k8s:app=web = %v, %v; want 131328 from the legacy file", id, ok)
	}
	if id, ok := a.LookupByLabels(mustLabels(t, "cidr:10.0.0.0/8")); !ok || id != 16777217 {
		t.Errorf("cidr:10.0.0.0/8 = %v, %v; want 16777217 from the legacy file", id, ok)
	}
	if _, _, err := a.Allocate(ctx, mustLabels(t, "k8s:app=db")); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("nodeplane-identity-state 1 ")) {
		t.Errorf("after a save the file starts %q, want the current header", data[:min(len(data), 40)])
	}
	if _, err := stateFormat.Decode(data); err != nil {
		t.Errorf("saved file: %v", err)
	}
}

func TestCorruptStateIsRejected(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	a, err := NewInProcessAllocator(InProcessConfig{ClusterID: 2, StatePath: good})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		a.Allocate(ctx, mustLabels(t, fmt.Sprintf("k8s:app=a%d", i)))
	}
	a.Close()
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}

	raw := map[string][]byte{
		"empty":          {},
		"torn header":    data[:10],
		"torn body":      data[:len(data)-7],
		"flipped byte":   append(append([]byte{}, data[:len(data)-20]...), append([]byte{data[len(data)-20] ^ 0x20}, data[len(data)-19:]...)...),
		"trailing bytes": append(append([]byte{}, data...), '\n'),
		"other format":   []byte("{\"clusterID\":2}\n"),
	}
	bodies := map[string]string{
		"wrong cluster":    `{"clusterID":3,"identities":[]}`,
		"duplicate id":     `{"clusterID":2,"identities":[{"id":131328,"labels":"k8s:a=1;"},{"id":131328,"labels":"k8s:a=2;"}]}`,
		"duplicate labels": `{"clusterID":2,"identities":[{"id":131328,"labels":"k8s:a=1;"},{"id":131329,"labels":"k8s:a=1;"}]}`,
		"foreign cluster":  `{"clusterID":2,"identities":[{"id":65792,"labels":"k8s:a=1;"}]}`,
		"reserved id":      `{"clusterID":2,"identities":[{"id":1,"labels":"reserved:host=;"}]}`,
		"invalid id":       `{"clusterID":2,"identities":[{"id":300,"labels":"k8s:a=1;"}]}`,
		"scope mismatch":   `{"clusterID":2,"identities":[{"id":131328,"labels":"cidr:10.0.0.0/8=;reserved:world=;"}]}`,
		"local k8s labels": `{"clusterID":2,"identities":[{"id":16777217,"labels":"k8s:a=1;"}]}`,
		"reserved labels":  `{"clusterID":2,"identities":[{"id":16777217,"labels":"reserved:world=;"}]}`,
		"bad labels":       `{"clusterID":2,"identities":[{"id":131328,"labels":"k8s:b=1;k8s:a=1;"}]}`,
		"no labels":        `{"clusterID":2,"identities":[{"id":131328,"labels":""}]}`,
		"unknown field":    `{"clusterID":2,"identities":[],"extra":1}`,
		"two documents":    `{"clusterID":2,"identities":[]}{"clusterID":2,"identities":[]}`,
		"not json":         `clusterID=2`,
	}
	check := func(name, path string) {
		t.Helper()
		before, _ := os.ReadFile(path)
		_, err := NewInProcessAllocator(InProcessConfig{ClusterID: 2, StatePath: path})
		if !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s: %v, want ErrCorruptState", name, err)
		} else if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
		if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
			t.Errorf("%s: a failed open changed the file", name)
		}
	}
	for name, b := range raw {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		os.WriteFile(path, b, 0o600)
		check(name, path)
	}
	for name, body := range bodies {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		writeState(t, path, body)
		check(name, path)
	}

	// The good file still opens with its IDs.
	b, err := NewInProcessAllocator(InProcessConfig{ClusterID: 2, StatePath: good})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if id, ok := b.LookupByLabels(mustLabels(t, "k8s:app=a0")); !ok || id != 2<<16|256 {
		t.Errorf("good state: a0 = %v, %v", id, ok)
	}
}
