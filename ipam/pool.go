package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/big"
	"net/netip"
	"slices"
	"sync"
	"unicode/utf8"
)

// maxOwnerLen bounds an owner string. A container ID and an interface name
// need well under 100 bytes; the bound keeps a state file from growing
// without limit on a caller's bug.
const maxOwnerLen = 1024

// Config configures a [Pool].
type Config struct {
	// Prefixes are the CIDRs addresses are handed out from: IPv4, IPv6 or
	// both. At least one is required. They must not overlap, must have their
	// host bits cleared, and must hold at least one allocatable address
	// (IPv4 /30 or shorter, IPv6 /126 or shorter).
	Prefixes []netip.Prefix
	// Reserved addresses are never handed out, for example a gateway that
	// something other than the pool assigned. Each must lie in one of the
	// Prefixes.
	Reserved []netip.Addr
	// State, if not nil, makes the pool durable: New restores every
	// allocation the state file holds, and every change is written to the
	// file before the call that made it returns. Nil keeps the pool in
	// memory only.
	State *StateFile
}

// Pool hands out addresses from one or more IPv4 and IPv6 prefixes to
// owners. It is safe for concurrent use.
type Pool struct {
	mu      sync.Mutex
	fams    [2]blockSet // by Family.index
	caps    [2]*big.Int // allocatable addresses per family
	used    [2]uint64
	owners  map[netip.Addr]string
	byOwner map[string]ownerAddrs
	state   *StateFile
}

// New returns a pool for cfg. With cfg.State set, it restores the
// allocations in the state file, if the file exists; a corrupt file fails
// with [ErrCorrupt], and allocations that the configuration no longer
// covers fail with [ErrOutOfRange] or [ErrReserved] rather than being
// dropped silently.
func New(cfg Config) (*Pool, error) {
	if len(cfg.Prefixes) == 0 {
		return nil, fmt.Errorf("new pool: no prefixes: %w", ErrInvalid)
	}
	p := &Pool{
		owners:  make(map[netip.Addr]string),
		byOwner: make(map[string]ownerAddrs),
	}
	for _, pfx := range cfg.Prefixes {
		if err := p.checkNewPrefix(pfx); err != nil {
			return nil, fmt.Errorf("new pool: %w", err)
		}
		p.addBlock(pfx)
	}
	for _, a := range cfg.Reserved {
		if err := checkAddr(a); err != nil {
			return nil, fmt.Errorf("new pool: reserved %w", err)
		}
		b, _ := p.fams[familyOf(a).index()].find(a)
		if b == nil {
			return nil, fmt.Errorf("new pool: reserved address %s: %w", a, ErrOutOfRange)
		}
		b.reserve(b.offset(a))
	}
	for i := range p.fams {
		p.caps[i] = p.fams[i].capacity()
	}

	if cfg.State != nil {
		snap, err := cfg.State.Load()
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("new pool: %w", err)
		default:
			if _, err := p.restoreLocked(snap); err != nil {
				return nil, fmt.Errorf("new pool: restore %s: %w", cfg.State.Path(), err)
			}
		}
		p.state = cfg.State
	}
	return p, nil
}

// checkNewPrefix validates a prefix to be added to the pool.
func (p *Pool) checkNewPrefix(pfx netip.Prefix) error {
	if err := checkPrefix(pfx); err != nil {
		return err
	}
	if pfx.Addr().BitLen()-pfx.Bits() < 2 {
		return fmt.Errorf("prefix %s has no allocatable address: %w", pfx, ErrInvalid)
	}
	for _, s := range p.fams {
		for _, b := range s.blocks {
			if b.prefix.Overlaps(pfx) {
				return fmt.Errorf("%s and %s: %w", b.prefix, pfx, ErrOverlap)
			}
		}
	}
	return nil
}

// addBlock adds a validated prefix. As in Cilium's host-scope allocator, the
// first and the last address of every prefix are never handed out: for IPv4
// the network and broadcast addresses, for IPv6 the subnet-router anycast
// address (RFC 4291) and the last address.
func (p *Pool) addBlock(pfx netip.Prefix) {
	s := &p.fams[familyOf(pfx.Addr()).index()]
	b := newBlock(pfx, 0)
	b.reserve(u128{})
	b.reserve(lowMask(b.taken.width))
	s.blocks = append(s.blocks, b)
}

// AddPrefix adds a further prefix to the pool, for example a node CIDR that
// a [ClusterAllocator] handed out because the pool was exhausted. The pool
// does not persist its prefixes: a caller with a state file passes every
// prefix to [New] again after a restart.
func (p *Pool) AddPrefix(pfx netip.Prefix) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.checkNewPrefix(pfx); err != nil {
		return fmt.Errorf("add prefix: %w", err)
	}
	p.addBlock(pfx)
	i := familyOf(pfx.Addr()).index()
	p.caps[i] = p.fams[i].capacity()
	return nil
}

// Prefixes returns the pool's prefixes, IPv4 first, each family in the
// order it was configured.
func (p *Pool) Prefixes() []netip.Prefix {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append(p.fams[0].prefixes(), p.fams[1].prefixes()...)
}

func checkOwner(owner string) error {
	switch {
	case owner == "":
		return fmt.Errorf("empty owner: %w", ErrInvalid)
	case len(owner) > maxOwnerLen:
		return fmt.Errorf("owner of %d bytes, more than %d: %w", len(owner), maxOwnerLen, ErrInvalid)
	case !utf8.ValidString(owner):
		return fmt.Errorf("owner %q is not valid UTF-8: %w", owner, ErrInvalid)
	}
	return nil
}

// family returns the block set of f, or an error if the pool has no
// prefix of that family.
func (p *Pool) family(f Family) (*blockSet, error) {
	if !f.valid() {
		return nil, fmt.Errorf("%s: %w", f, ErrInvalid)
	}
	s := &p.fams[f.index()]
	if len(s.blocks) == 0 {
		return nil, fmt.Errorf("pool has no %s prefix: %w", f, ErrInvalid)
	}
	return s, nil
}

// AllocateNext hands the next free address of family f to owner.
//
// The search starts just after the address AllocateNext handed out last and
// wraps around, so a released address is reused only after every other free
// address has been offered; a new workload does not inherit the address of
// one that just went away while stale entries (conntrack, caches on other
// nodes) may still name it. Finding the next free address costs O(log64 N)
// for N addresses, however full the pool is.
//
// An owner may hold any number of addresses. A full family fails with an
// [*ExhaustedError].
func (p *Pool) AllocateNext(f Family, owner string) (netip.Addr, error) {
	if err := checkOwner(owner); err != nil {
		return netip.Addr{}, fmt.Errorf("allocate next %s address: %w", f, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	a, undo, err := p.allocateNextLocked(f, owner)
	if err == nil {
		err = p.persist(func() { p.undoAllocateNext(undo) })
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocate next %s address for %q: %w", f, owner, err)
	}
	return a, nil
}

// AllocateNextDual hands owner the next free IPv4 and the next free IPv6
// address, both or neither. The pool must have prefixes of both families.
func (p *Pool) AllocateNextDual(owner string) (v4, v6 netip.Addr, err error) {
	if err := checkOwner(owner); err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("allocate dual-stack addresses: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	v4, undo4, err := p.allocateNextLocked(IPv4, owner)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("allocate dual-stack addresses for %q: %w", owner, err)
	}
	v6, undo6, err := p.allocateNextLocked(IPv6, owner)
	if err != nil {
		p.undoAllocateNext(undo4)
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("allocate dual-stack addresses for %q: %w", owner, err)
	}
	if err := p.persist(func() { p.undoAllocateNext(undo6); p.undoAllocateNext(undo4) }); err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("allocate dual-stack addresses for %q: %w", owner, err)
	}
	return v4, v6, nil
}

// nextUndo is what it takes to undo one AllocateNext. It is a value, not a
// closure, so that the common path allocates nothing for it.
type nextUndo struct {
	s      *blockSet
	b      *block
	off    u128
	cur    int
	curOff u128
	addr   netip.Addr
}

// allocateNextLocked takes the next free address of f for owner.
func (p *Pool) allocateNextLocked(f Family, owner string) (netip.Addr, nextUndo, error) {
	s, err := p.family(f)
	if err != nil {
		return netip.Addr{}, nextUndo{}, err
	}
	bi, off, ok := s.next()
	if !ok {
		return netip.Addr{}, nextUndo{}, &ExhaustedError{Family: f, Prefixes: s.prefixes()}
	}
	b := s.blocks[bi]
	u := nextUndo{s: s, b: b, off: off, cur: s.cur, curOff: s.curOff}
	b.taken.set(off)
	s.advance(bi, off)
	u.addr = b.addr(off)
	p.addOwner(u.addr, owner)
	return u.addr, u, nil
}

func (p *Pool) undoAllocateNext(u nextUndo) {
	p.removeOwner(u.addr)
	u.b.taken.clear(u.off)
	u.s.cur, u.s.curOff = u.cur, u.curOff
}

// Allocate hands the address a to owner. It fails with [ErrOutOfRange] if
// no prefix holds a, [ErrReserved] for an address the pool never hands out,
// and an [*AllocatedError] naming the current owner if a is taken, even by
// owner itself.
func (p *Pool) Allocate(a netip.Addr, owner string) error {
	if err := checkAddr(a); err != nil {
		return fmt.Errorf("allocate: %w", err)
	}
	if err := checkOwner(owner); err != nil {
		return fmt.Errorf("allocate %s: %w", a, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	undo, err := p.allocateLocked(a, owner)
	if err == nil {
		err = p.persist(undo)
	}
	if err != nil {
		return fmt.Errorf("allocate %s for %q: %w", a, owner, err)
	}
	return nil
}

func (p *Pool) allocateLocked(a netip.Addr, owner string) (func(), error) {
	b, _ := p.fams[familyOf(a).index()].find(a)
	if b == nil {
		return nil, ErrOutOfRange
	}
	if cur, ok := p.owners[a]; ok {
		return nil, &AllocatedError{Addr: a, Owner: cur}
	}
	off := b.offset(a)
	if !b.taken.set(off) {
		return nil, ErrReserved
	}
	p.addOwner(a, owner)
	return func() {
		p.removeOwner(a)
		b.taken.clear(off)
	}, nil
}

// Release returns a to the pool. It fails with [ErrNotAllocated] if a has
// no owner (so a caller that wants idempotent release ignores that error),
// [ErrReserved] for a reserved address and [ErrOutOfRange] outside the pool.
func (p *Pool) Release(a netip.Addr) error {
	if err := checkAddr(a); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := p.fams[familyOf(a).index()].find(a)
	if b == nil {
		return fmt.Errorf("release %s: %w", a, ErrOutOfRange)
	}
	owner, ok := p.owners[a]
	if !ok {
		if b.taken.isSet(b.offset(a)) {
			return fmt.Errorf("release %s: %w", a, ErrReserved)
		}
		return fmt.Errorf("release %s: %w", a, ErrNotAllocated)
	}
	off := b.offset(a)
	b.taken.clear(off)
	p.removeOwner(a)
	if err := p.persist(func() {
		b.taken.set(off)
		p.addOwner(a, owner)
	}); err != nil {
		return fmt.Errorf("release %s: %w", a, err)
	}
	return nil
}

// ReleaseOwner releases every address owner holds and returns them, in
// ascending order. An owner with no address is not an error: the result is
// empty, so a CNI DEL that runs twice succeeds twice.
func (p *Pool) ReleaseOwner(owner string) ([]netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	addrs := p.byOwner[owner].list()
	if len(addrs) == 0 {
		return nil, nil
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		b, _ := p.fams[familyOf(a).index()].find(a)
		b.taken.clear(b.offset(a))
		p.removeOwner(a)
	}
	if err := p.persist(func() {
		for _, a := range addrs {
			b, _ := p.fams[familyOf(a).index()].find(a)
			b.taken.set(b.offset(a))
			p.addOwner(a, owner)
		}
	}); err != nil {
		return nil, fmt.Errorf("release addresses of %q: %w", owner, err)
	}
	return addrs, nil
}

// Owner returns the owner of a, if a is allocated.
func (p *Pool) Owner(a netip.Addr) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o, ok := p.owners[a]
	return o, ok
}

// Addrs returns the addresses owner holds, in ascending order.
func (p *Pool) Addrs(owner string) []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	addrs := p.byOwner[owner].list()
	slices.SortFunc(addrs, netip.Addr.Compare)
	return addrs
}

// Contains reports whether a lies in one of the pool's prefixes.
func (p *Pool) Contains(a netip.Addr) bool {
	if checkAddr(a) != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := p.fams[familyOf(a).index()].find(a)
	return b != nil
}

// Used returns the number of allocated addresses of family f.
func (p *Pool) Used(f Family) uint64 {
	if !f.valid() {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used[f.index()]
}

// Free returns the number of addresses of family f that can still be handed
// out: every address of the family's prefixes minus reserved and allocated
// ones. An IPv6 pool easily has more than fit in a uint64 (a /64 alone has
// 2^64 - 2 allocatable addresses, several /64s overflow), so Free saturates
// at math.MaxUint64: that value means "at least this many".
func (p *Pool) Free(f Family) uint64 {
	if !f.valid() {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	i := f.index()
	free := new(big.Int).Sub(p.caps[i], new(big.Int).SetUint64(p.used[i]))
	if !free.IsUint64() {
		return math.MaxUint64
	}
	return free.Uint64()
}

func (p *Pool) addOwner(a netip.Addr, owner string) {
	p.owners[a] = owner
	as := p.byOwner[owner]
	as.add(a)
	p.byOwner[owner] = as
	p.used[familyOf(a).index()]++
}

func (p *Pool) removeOwner(a netip.Addr) {
	owner := p.owners[a]
	delete(p.owners, a)
	as := p.byOwner[owner]
	if as.remove(a) {
		delete(p.byOwner, owner)
	} else {
		p.byOwner[owner] = as
	}
	p.used[familyOf(a).index()]--
}

// ownerAddrs are the addresses of one owner. Nearly every owner holds one
// address, or one of each family, and those are stored inline: allocating
// for a new owner then costs no heap allocation.
type ownerAddrs struct {
	inline [2]netip.Addr
	n      int // addresses in inline
	more   []netip.Addr
}

func (o *ownerAddrs) add(a netip.Addr) {
	if o.n < len(o.inline) {
		o.inline[o.n] = a
		o.n++
		return
	}
	o.more = append(o.more, a)
}

// remove removes a and reports whether o is now empty.
func (o *ownerAddrs) remove(a netip.Addr) bool {
	if i := slices.Index(o.more, a); i >= 0 {
		o.more = slices.Delete(o.more, i, i+1)
	} else if i := slices.Index(o.inline[:o.n], a); i >= 0 {
		copy(o.inline[i:], o.inline[i+1:o.n])
		o.n--
		if len(o.more) > 0 { // refill inline from the overflow
			o.inline[o.n] = o.more[len(o.more)-1]
			o.n++
			o.more = o.more[:len(o.more)-1]
		}
	}
	return o.n == 0
}

func (o ownerAddrs) list() []netip.Addr {
	if o.n == 0 {
		return nil
	}
	return append(slices.Clone(o.inline[:o.n]), o.more...)
}

// persist writes the pool's state through to the state file, if there is
// one. If that fails, undo reverts the change in memory, so a failed call
// leaves the pool as it was, and the error is returned. If the failure came
// after the new file was renamed into place, the old state is written back
// so that the file agrees with memory again.
func (p *Pool) persist(undo func()) error {
	if p.state == nil {
		return nil
	}
	renamed, err := p.state.write(p.snapshotLocked())
	if err == nil {
		return nil
	}
	undo()
	if renamed {
		if _, err2 := p.state.write(p.snapshotLocked()); err2 != nil {
			err = errors.Join(err, fmt.Errorf("write back previous state: %w", err2))
		}
	}
	return fmt.Errorf("persist state: %w", err)
}
