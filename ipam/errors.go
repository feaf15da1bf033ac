package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/nodeplane/nodeplane/internal/statefile"
)

// Sentinel errors. Every error a Pool or ClusterPool returns wraps one of
// them (or an error of the state file's I/O); test with [errors.Is].
var (
	// ErrExhausted means no free address (or node CIDR) is left of the
	// requested family. The error is an [*ExhaustedError].
	ErrExhausted = errors.New("pool exhausted")
	// ErrOutOfRange means an address or CIDR is not inside any of the
	// pool's prefixes.
	ErrOutOfRange = errors.New("outside the pool")
	// ErrAllocated means an address or CIDR already has an owner. The error
	// is an [*AllocatedError], which names the owner.
	ErrAllocated = errors.New("already allocated")
	// ErrReserved means an address is one the pool never hands out: the
	// first or last address of a prefix, or one of Config.Reserved.
	ErrReserved = errors.New("reserved address")
	// ErrNotAllocated means a release named an address or CIDR that has no
	// owner (or, for a node CIDR, a different owner).
	ErrNotAllocated = errors.New("not allocated")
	// ErrOverlap means two configured CIDRs overlap.
	ErrOverlap = errors.New("overlapping CIDRs")
	// ErrMaskSize means a node mask size is invalid for the cluster CIDRs:
	// the node CIDR would be larger than a cluster CIDR, or longer than the
	// address.
	ErrMaskSize = errors.New("invalid node mask size")
	// ErrInvalid means an argument or configuration field is malformed: an
	// invalid or non-canonical prefix, an empty owner, a family the pool
	// does not serve.
	ErrInvalid = errors.New("invalid argument")
	// ErrCorrupt means a state file failed its checksum, has an unknown
	// version, or holds inconsistent content. It is the same error as
	// identity.ErrCorruptState: one sentinel for every state file.
	ErrCorrupt = statefile.ErrCorrupt
)

// ExhaustedError reports that no free address or node CIDR of Family is
// left in Prefixes. It matches [ErrExhausted].
type ExhaustedError struct {
	Family   Family
	Prefixes []netip.Prefix
}

func (e *ExhaustedError) Error() string {
	ps := make([]string, len(e.Prefixes))
	for i, p := range e.Prefixes {
		ps[i] = p.String()
	}
	return fmt.Sprintf("%s pool exhausted (%s)", e.Family, strings.Join(ps, ", "))
}

// Is makes errors.Is(err, ErrExhausted) true.
func (e *ExhaustedError) Is(target error) bool { return target == ErrExhausted }

// AllocatedError reports that an address (Addr, in a [Pool]) or a node CIDR
// (CIDR, in a [ClusterPool]) already belongs to Owner. It matches
// [ErrAllocated].
type AllocatedError struct {
	Addr  netip.Addr   // valid for an address
	CIDR  netip.Prefix // valid for a node CIDR
	Owner string
}

func (e *AllocatedError) Error() string {
	what := e.Addr.String()
	if e.CIDR.IsValid() {
		what = e.CIDR.String()
	}
	return fmt.Sprintf("%s already allocated to %q", what, e.Owner)
}

// Is makes errors.Is(err, ErrAllocated) true.
func (e *AllocatedError) Is(target error) bool { return target == ErrAllocated }
