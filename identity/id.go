package identity

import (
	"fmt"
	"strconv"
)

// ID is a numeric security identity. Its layout is Cilium's:
//
//	bits  0–15  index within the cluster (cluster scope)
//	bits 16–23  cluster ID, 1–255 (cluster scope)
//	bit     24  local scope: bits 0–23 are a node-local index
//
// IDs 1–10 are the reserved identities below; 11–255 are reserved for
// well-known and user-defined identities and never allocated here. Only the
// low 24 bits travel in packets (see [ID.Wire]).
type ID uint32

// Reserved identities, with the numbers Cilium gives them.
const (
	// Unknown is the zero ID: no identity has been determined. In a policy
	// key it means "any peer".
	Unknown ID = 0
	// ReservedHost is the local node.
	ReservedHost ID = 1
	// ReservedWorld is any peer outside the cluster.
	ReservedWorld ID = 2
	// ReservedUnmanaged is an endpoint not managed by the dataplane.
	ReservedUnmanaged ID = 3
	// ReservedHealth is the node's health-check endpoint.
	ReservedHealth ID = 4
	// ReservedInit is an endpoint whose labels are not known yet.
	ReservedInit ID = 5
	// ReservedRemoteNode is every node of the cluster but the local one.
	ReservedRemoteNode ID = 6
	// ReservedKubeAPIServer is a remote node that runs the Kubernetes API
	// server; its labels are reserved:kube-apiserver and reserved:remote-node.
	ReservedKubeAPIServer ID = 7
	// ReservedIngress is the source address of ingress proxies.
	ReservedIngress ID = 8
	// ReservedWorldIPv4 is the IPv4 part of the world, in dual-stack clusters.
	ReservedWorldIPv4 ID = 9
	// ReservedWorldIPv6 is the IPv6 part of the world, in dual-stack clusters.
	ReservedWorldIPv6 ID = 10
)

const (
	// MinClusterIndex is the lowest index (bits 0–15) of a cluster-scoped
	// ID; the indices below it stay free so that a cluster ID can never be
	// mistaken for a reserved one.
	MinClusterIndex = 256
	// MaxClusterIndex is the highest index of a cluster-scoped ID.
	MaxClusterIndex = 1<<16 - 1
	// MaxLocalIndex is the highest index (bits 0–23) of a local-scope ID;
	// the lowest is 1.
	MaxLocalIndex = 1<<24 - 1

	// clusterShift is where the cluster ID starts in a cluster-scoped ID.
	clusterShift = 16
	// LocalScopeFlag marks a node-local ID (CIDR and FQDN identities).
	LocalScopeFlag ID = 1 << 24
	// scopeMask covers the bits that decide the scope.
	scopeMask ID = 0xFF000000
	// MaxWireID is the largest ID that fits the 24 bits carried in packets;
	// the ID in a packet is ID(v & MaxWireID).
	MaxWireID ID = 1<<24 - 1
	// maxReservedRange is the top of the range kept for reserved IDs.
	maxReservedRange ID = 255
)

// Scope is the range an ID belongs to.
type Scope uint8

const (
	// ScopeInvalid: the ID fits no range (e.g. bits above 24 set).
	ScopeInvalid Scope = iota
	// ScopeUnknown: the ID is [Unknown].
	ScopeUnknown
	// ScopeReserved: IDs 1–255.
	ScopeReserved
	// ScopeCluster: the same label set has this ID on every node of the
	// cluster.
	ScopeCluster
	// ScopeLocal: the ID is meaningful on this node only.
	ScopeLocal
)

func (s Scope) String() string {
	switch s {
	case ScopeUnknown:
		return "unknown"
	case ScopeReserved:
		return "reserved"
	case ScopeCluster:
		return "cluster"
	case ScopeLocal:
		return "local"
	}
	return "invalid"
}

var reservedNames = [...]string{
	Unknown:               "unknown",
	ReservedHost:          LabelHost,
	ReservedWorld:         LabelWorld,
	ReservedUnmanaged:     LabelUnmanaged,
	ReservedHealth:        LabelHealth,
	ReservedInit:          LabelInit,
	ReservedRemoteNode:    LabelRemoteNode,
	ReservedKubeAPIServer: LabelKubeAPIServer,
	ReservedIngress:       LabelIngress,
	ReservedWorldIPv4:     LabelWorldIPv4,
	ReservedWorldIPv6:     LabelWorldIPv6,
}

// ClusterScopedID returns the ID with the given cluster (1–255) and index
// (256–65535).
func ClusterScopedID(cluster uint8, index uint16) (ID, error) {
	if cluster == 0 {
		return Unknown, fmt.Errorf("cluster-scoped identity: %w: cluster 0 is not a valid cluster", ErrInvalidID)
	}
	if index < MinClusterIndex {
		return Unknown, fmt.Errorf("cluster-scoped identity: %w: index %d below %d", ErrInvalidID, index, MinClusterIndex)
	}
	return ID(cluster)<<clusterShift | ID(index), nil
}

// LocalScopedID returns the local-scope ID with the given index (1 to
// [MaxLocalIndex]).
func LocalScopedID(index uint32) (ID, error) {
	if index == 0 || index > MaxLocalIndex {
		return Unknown, fmt.Errorf("local identity: %w: index %d outside 1–%d", ErrInvalidID, index, MaxLocalIndex)
	}
	return LocalScopeFlag | ID(index), nil
}

// ParseID parses a decimal identity and checks it with [ID.Validate]
// (Unknown is accepted).
func ParseID(s string) (ID, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return Unknown, fmt.Errorf("parse identity %q: %w: not a decimal uint32", s, ErrInvalidID)
	}
	id := ID(n)
	if id == Unknown {
		return id, nil
	}
	if err := id.Validate(); err != nil {
		return Unknown, err
	}
	return id, nil
}

// Scope returns the range the ID belongs to, judged by its bits alone.
func (id ID) Scope() Scope {
	switch {
	case id == Unknown:
		return ScopeUnknown
	case id <= maxReservedRange:
		return ScopeReserved
	case id&scopeMask == 0:
		if id&0xFFFF < MinClusterIndex {
			return ScopeInvalid
		}
		return ScopeCluster
	case id&scopeMask == LocalScopeFlag && id != LocalScopeFlag:
		return ScopeLocal
	}
	return ScopeInvalid
}

// Validate reports whether the ID could be handed out: a reserved ID 1–10, a
// cluster-scoped ID of a cluster 1–255, or a local-scope ID. Unknown, the
// unassigned reserved range 11–255, cluster 0 and stray high bits are
// errors wrapping [ErrInvalidID].
func (id ID) Validate() error {
	switch id.Scope() {
	case ScopeReserved:
		if id.IsReserved() {
			return nil
		}
		return fmt.Errorf("identity %d: %w: in the reserved range but not assigned", uint32(id), ErrInvalidID)
	case ScopeCluster:
		if id.ClusterID() == 0 {
			return fmt.Errorf("identity %d: %w: cluster 0 is not a valid cluster", uint32(id), ErrInvalidID)
		}
		return nil
	case ScopeLocal:
		return nil
	case ScopeUnknown:
		return fmt.Errorf("identity 0: %w: unknown", ErrInvalidID)
	}
	return fmt.Errorf("identity %d: %w: fits no identity range", uint32(id), ErrInvalidID)
}

// IsReserved reports whether id is one of the reserved identities 1–10.
func (id ID) IsReserved() bool {
	return id > Unknown && id <= ReservedWorldIPv6
}

// IsLocal reports whether id has node-local scope.
func (id ID) IsLocal() bool { return id.Scope() == ScopeLocal }

// IsCluster reports whether id is a cluster-scoped identity.
func (id ID) IsCluster() bool { return id.Scope() == ScopeCluster }

// ClusterID returns the cluster a cluster-scoped identity belongs to, read
// from bits 16–23, or 0 for IDs of other scopes.
func (id ID) ClusterID() uint8 {
	if id.Scope() != ScopeCluster {
		return 0
	}
	return uint8(id >> clusterShift)
}

// Index returns the ID's index within its scope: bits 0–15 of a
// cluster-scoped ID, bits 0–23 of a local one, the ID itself otherwise.
func (id ID) Index() uint32 {
	switch id.Scope() {
	case ScopeCluster:
		return uint32(id & 0xFFFF)
	case ScopeLocal:
		return uint32(id &^ LocalScopeFlag)
	}
	return uint32(id)
}

// Wire returns the 24-bit value that carries the ID in packets (a VXLAN
// VNI, a Geneve option). Local-scope IDs never leave the node: for them, and
// for invalid IDs, ok is false.
func (id ID) Wire() (v uint32, ok bool) {
	if id > MaxWireID {
		return 0, false
	}
	return uint32(id), true
}

// ReservedName returns the name of a reserved identity ("host", "world",
// ...) and whether id is reserved.
func (id ID) ReservedName() (string, bool) {
	if int(id) < len(reservedNames) {
		return reservedNames[id], id != Unknown
	}
	return "", false
}

// String renders the ID as a decimal number, the form Cilium's tools print.
func (id ID) String() string {
	return strconv.FormatUint(uint64(id), 10)
}

// GoString renders the ID with its scope, for debugging.
func (id ID) GoString() string {
	switch id.Scope() {
	case ScopeUnknown:
		return "identity.Unknown"
	case ScopeReserved:
		if name, ok := id.ReservedName(); ok {
			return fmt.Sprintf("identity.ID(%d /* reserved:%s */)", uint32(id), name)
		}
		return fmt.Sprintf("identity.ID(%d /* reserved range */)", uint32(id))
	case ScopeLocal:
		return fmt.Sprintf("identity.ID(%d /* local %d */)", uint32(id), id.Index())
	case ScopeCluster:
		return fmt.Sprintf("identity.ID(%d /* cluster %d index %d */)", uint32(id), id.ClusterID(), id.Index())
	}
	return fmt.Sprintf("identity.ID(%d /* invalid */)", uint32(id))
}

// Identity is an ID together with its labels.
type Identity struct {
	ID     ID
	Labels Labels
}

// String renders the identity as "ID (labels)", e.g.
// "65792 (k8s:app=web,k8s:io.kubernetes.pod.namespace=prod)".
func (i Identity) String() string {
	return i.ID.String() + " (" + i.Labels.String() + ")"
}
