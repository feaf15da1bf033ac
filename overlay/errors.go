package overlay

import "errors"

// Sentinel errors; every error the package returns for these conditions
// wraps one of them (test with [errors.Is]).
var (
	// ErrInvalidNode means a node is malformed: an empty or invalid name,
	// an invalid, zoned or unspecified underlay address, a pod CIDR with
	// host bits set, or no underlay address at all.
	ErrInvalidNode = errors.New("invalid node")
	// ErrPodCIDROverlap means a node's pod CIDRs overlap those of another
	// node (or each other). The error is an [*OverlapError].
	ErrPodCIDROverlap = errors.New("pod CIDRs overlap")
	// ErrNodeNotFound means the registry holds no node of that name.
	ErrNodeNotFound = errors.New("node not found")
	// ErrInvalidConfig means a constructor's configuration is invalid.
	ErrInvalidConfig = errors.New("invalid overlay configuration")
)

// OverlapError says which pod CIDRs of which nodes overlap.
type OverlapError struct {
	Node, OtherNode string
	CIDR, OtherCIDR string
}

func (e *OverlapError) Error() string {
	if e.Node == e.OtherNode {
		return "node " + e.Node + ": pod CIDR " + e.CIDR + " overlaps its own pod CIDR " + e.OtherCIDR
	}
	return "node " + e.Node + ": pod CIDR " + e.CIDR + " overlaps pod CIDR " + e.OtherCIDR + " of node " + e.OtherNode
}

// Is makes errors.Is(err, ErrPodCIDROverlap) true.
func (e *OverlapError) Is(target error) bool { return target == ErrPodCIDROverlap }
