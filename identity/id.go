package identity

import (
	"fmt"
	"strconv"
)

// ID is a numeric security identity.
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
	// ReservedKubeAPIServer is a node that runs the Kubernetes API server.
	ReservedKubeAPIServer ID = 7
	// ReservedIngress is the source address of ingress proxies.
	ReservedIngress ID = 8
	// ReservedWorldIPv4 is the IPv4 part of the world, in dual-stack clusters.
	ReservedWorldIPv4 ID = 9
	// ReservedWorldIPv6 is the IPv6 part of the world, in dual-stack clusters.
	ReservedWorldIPv6 ID = 10
)

const (
	// MinClusterLocal is the lowest per-cluster ID value the allocators hand
	// out; the values below it are reserved.
	MinClusterLocal = 256
	// clusterShift is where the cluster ID starts in a cluster-scoped ID.
	clusterShift = 16
	// LocalScopeFlag marks a node-local ID (CIDR and FQDN identities).
	LocalScopeFlag ID = 1 << 24
	// scopeMask covers the bits that decide the scope.
	scopeMask ID = 0xFF000000
	// MaxWireID is the largest ID that fits the 24 bits carried in packets.
	MaxWireID ID = 1<<24 - 1
)

var reservedNames = [...]string{
	Unknown:               "unknown",
	ReservedHost:          "host",
	ReservedWorld:         "world",
	ReservedUnmanaged:     "unmanaged",
	ReservedHealth:        "health",
	ReservedInit:          "init",
	ReservedRemoteNode:    "remote-node",
	ReservedKubeAPIServer: "kube-apiserver",
	ReservedIngress:       "ingress",
	ReservedWorldIPv4:     "world-ipv4",
	ReservedWorldIPv6:     "world-ipv6",
}

// IsReserved reports whether id is one of the reserved identities 1–10.
func (id ID) IsReserved() bool {
	return id > Unknown && id <= ReservedWorldIPv6
}

// IsLocal reports whether id has node-local scope.
func (id ID) IsLocal() bool {
	return id&scopeMask == LocalScopeFlag
}

// IsCluster reports whether id is a cluster-scoped identity: no scope bits
// set and above the reserved range.
func (id ID) IsCluster() bool {
	return id&scopeMask == 0 && id >= MinClusterLocal
}

// ClusterID returns the cluster a cluster-scoped identity belongs to, read
// from bits 16–23, or 0 for IDs without one.
func (id ID) ClusterID() uint8 {
	if id&scopeMask != 0 {
		return 0
	}
	return uint8(id >> clusterShift)
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
	switch {
	case id == Unknown:
		return "identity.Unknown"
	case id.IsReserved():
		return fmt.Sprintf("identity.ID(%d /* reserved:%s */)", uint32(id), reservedNames[id])
	case id.IsLocal():
		return fmt.Sprintf("identity.ID(%d /* local %d */)", uint32(id), uint32(id&^LocalScopeFlag))
	default:
		return fmt.Sprintf("identity.ID(%d /* cluster %d */)", uint32(id), id.ClusterID())
	}
}
