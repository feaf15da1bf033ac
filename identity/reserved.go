package identity

// reservedLabels holds the label set of each reserved identity, in canonical
// form. Package-level but immutable.
var reservedLabels = func() [ReservedWorldIPv6 + 1]Labels {
	var t [ReservedWorldIPv6 + 1]Labels
	for id := ReservedHost; id <= ReservedWorldIPv6; id++ {
		ls := []Label{{Source: SourceReserved, Key: reservedNames[id]}}
		if id == ReservedKubeAPIServer {
			// The kube-apiserver runs on (remote) nodes: policy that
			// selects remote-node must select it too.
			ls = append(ls, Label{Source: SourceReserved, Key: LabelRemoteNode})
		}
		t[id] = makeLabels(ls)
	}
	return t
}()

// ReservedLabels returns the labels of a reserved identity, e.g.
// "reserved:host" for [ReservedHost], and false for other IDs.
func (id ID) ReservedLabels() (Labels, bool) {
	if !id.IsReserved() {
		return Labels{}, false
	}
	return reservedLabels[id], true
}

// ReservedIdentities returns the reserved identities 1–10 with their labels,
// in ID order.
func ReservedIdentities() []Identity {
	ids := make([]Identity, 0, ReservedWorldIPv6)
	for id := ReservedHost; id <= ReservedWorldIPv6; id++ {
		ids = append(ids, Identity{ID: id, Labels: reservedLabels[id]})
	}
	return ids
}

// LookupReserved returns the reserved identity a label set resolves to, as
// Cilium's LookupReservedIdentityByLabels decides it:
//
//   - a set with reserved:host is the host, whatever else it holds;
//   - otherwise a set with reserved:remote-node is remote-node, or
//     kube-apiserver when it also holds reserved:kube-apiserver;
//   - otherwise only a set of exactly one reserved label naming a reserved
//     identity resolves ("reserved:world" is 2), so that workloads cannot
//     claim a reserved identity by adding a reserved label.
//
// Allocators return these IDs for such sets without allocating.
func LookupReserved(ls Labels) (ID, bool) {
	if !ls.HasSource(SourceReserved) {
		return Unknown, false
	}
	switch {
	case ls.Has(Label{Source: SourceReserved, Key: LabelHost}):
		return ReservedHost, true
	case ls.Has(Label{Source: SourceReserved, Key: LabelRemoteNode}):
		if ls.Has(Label{Source: SourceReserved, Key: LabelKubeAPIServer}) {
			return ReservedKubeAPIServer, true
		}
		return ReservedRemoteNode, true
	}
	if ls.Len() != 1 {
		return Unknown, false
	}
	l, _ := decodeNext(ls.kv)
	for id := ReservedHost; id <= ReservedWorldIPv6; id++ {
		if reservedNames[id] == l.Key {
			return id, true
		}
	}
	return Unknown, false
}

// Scope returns the scope an allocator gives the set if it is not
// reserved (see [LookupReserved]): local when every label comes from the
// cidr, cidrgroup, fqdn or reserved source (addresses outside the cluster,
// known only to this node), cluster otherwise. Empty sets have no scope
// ([ScopeInvalid]).
func (ls Labels) Scope() Scope {
	if ls.IsEmpty() {
		return ScopeInvalid
	}
	for rest := ls.kv; rest != ""; {
		var l Label
		l, rest = decodeNext(rest)
		switch l.Source {
		case SourceCIDR, SourceCIDRGroup, SourceFQDN, SourceReserved:
		default:
			return ScopeCluster
		}
	}
	return ScopeLocal
}
