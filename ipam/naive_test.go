package ipam

import (
	"fmt"
	"net/netip"
	"sync"
)

// naivePool is the benchmark baseline: the allocator one writes first. A
// map from address to owner, and AllocateNext scans linearly from the
// first allocatable address for one that is not in the map.
type naivePool struct {
	mu          sync.Mutex
	first, last netip.Addr
	owners      map[netip.Addr]string
}

func newNaivePool(p netip.Prefix) *naivePool {
	first := p.Addr().Next()
	last := first
	for a := first; p.Contains(a.Next()); a = a.Next() {
		last = a
	}
	return &naivePool{first: first, last: last, owners: make(map[netip.Addr]string)}
}

func (n *naivePool) AllocateNext(owner string) (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for a := n.first; ; a = a.Next() {
		if _, taken := n.owners[a]; !taken {
			n.owners[a] = owner
			return a, nil
		}
		if a == n.last {
			return netip.Addr{}, ErrExhausted
		}
	}
}

func (n *naivePool) Allocate(a netip.Addr, owner string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, taken := n.owners[a]; taken {
		return ErrAllocated
	}
	n.owners[a] = owner
	return nil
}

func (n *naivePool) Release(a netip.Addr) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.owners[a]; !ok {
		return fmt.Errorf("release %s: %w", a, ErrNotAllocated)
	}
	delete(n.owners, a)
	return nil
}

// rotatingNaivePool is the second baseline: the same map, but the linear
// scan starts after the last address handed out, as CNI's host-local plugin
// does. It is fast while free addresses are close to the cursor and slows
// down with the distance to the next free one.
type rotatingNaivePool struct {
	naivePool
	cursor netip.Addr
	n      int // allocatable addresses
}

func newRotatingNaivePool(p netip.Prefix) *rotatingNaivePool {
	n := &rotatingNaivePool{naivePool: *newNaivePool(p)}
	n.cursor = n.first
	n.n = n.size()
	return n
}

func (n *rotatingNaivePool) AllocateNext(owner string) (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a := n.cursor
	for range n.n {
		if _, taken := n.owners[a]; !taken {
			n.owners[a] = owner
			n.cursor = n.wrap(a.Next())
			return a, nil
		}
		a = n.wrap(a.Next())
	}
	return netip.Addr{}, ErrExhausted
}

func (n *rotatingNaivePool) wrap(a netip.Addr) netip.Addr {
	if n.last.Less(a) {
		return n.first
	}
	return a
}

func (n *naivePool) size() int {
	size := 1
	for a := n.first; a != n.last; a = a.Next() {
		size++
	}
	return size
}
