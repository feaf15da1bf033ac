package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// This file turns a validated Policy into entries: one per rule item and
// direction, with compiled selectors, the way Cilium's ParseToCiliumRule
// and RulesToPolicyEntries do. It is where namespaced policies get their
// namespace and cluster scoping.

// RuleRef names one rule item of a policy: the unit that allows or denies,
// and the unit traces name.
type RuleRef struct {
	Policy PolicyID
	// Path is the item's place in its source document, e.g.
	// "spec.ingress[0]" or, for a NetworkPolicy, "spec.ingress[0].from[1]".
	Path string
}

func (r RuleRef) String() string {
	return r.Policy.String() + " " + r.Path
}

// entry is one rule item, resolved: Cilium's types.PolicyEntry.
type entry struct {
	ref         RuleRef
	subject     *selectorRef
	node        bool // the subject selects nodes (host policy)
	ingress     bool
	deny        bool
	defaultDeny bool
	// peers: nil selects no peer; an empty list selects every peer when
	// the entry has ports, and nothing otherwise (Cilium's "nil L3 =
	// nothing, empty L3 = everything, but only with L4").
	peers []*selectorRef
	// l4Given is whether the item had toPorts or icmps; ports are their
	// expanded entries (ANY split into TCP, UDP and SCTP). An item with
	// peers and without l4 allows every protocol.
	l4Given bool
	ports   []l4Port
	// implied maps, per peer (parallel to peers), the requirement keys
	// that scoping added to the user's selector to why it added them, for
	// traces (nearmiss.go).
	implied []map[string]string
}

// l4Port is one port entry of a rule item, its protocol concrete.
type l4Port struct {
	proto   nodeplane.Protocol
	port    uint16
	endPort uint16
	name    string // named port; port is 0
	// dns are the port's DNS rules; nil: none (every query, as far as
	// this entry goes).
	dns *dnsRules
	// http holds the port rule's HTTP rules: traffic to the port is
	// redirected to the HTTP proxy, which allows what one of them matches.
	// An empty (given) HTTP list has no rule and is still redirected.
	http      []HTTPRuleRef
	redirHTTP bool
}

func (p l4Port) String() string {
	var s string
	switch {
	case p.name != "":
		s = p.name
	case p.port == 0:
		s = "*"
	case p.endPort > p.port:
		s = fmt.Sprintf("%d-%d", p.port, p.endPort)
	default:
		s = fmt.Sprint(p.port)
	}
	return s + "/" + p.proto.String()
}

// bounds returns the first and last port of a numbered port entry as
// Cilium's l4.go reads it: a range only when port != 0 && endPort > port,
// else the single port, and port 0 is every port whatever endPort says.
func (p l4Port) bounds() (first, last uint16) {
	switch {
	case p.port == 0:
		return 0, 0xFFFF
	case p.endPort > p.port:
		return p.port, p.endPort
	}
	return p.port, p.port
}

// matches reports whether the port entry covers a packet's protocol and
// destination port; namedPort resolves a name to a port number (0: not
// defined).
func (p l4Port) matches(proto nodeplane.Protocol, port uint16, namedPort func(name string, proto nodeplane.Protocol) []uint16) bool {
	if p.proto != proto {
		return false
	}
	if p.name != "" {
		return slices.Contains(namedPort(p.name, proto), port)
	}
	if p.port == 0 {
		return true
	}
	if p.endPort > p.port {
		return port >= p.port && port <= p.endPort
	}
	return port == p.port
}

// resolver carries what resolution needs from the configuration.
type resolver struct {
	clusterName string
	stack       nodeplane.StackMode
	cache       *selectorCache
}

// resolve builds the entries of a validated policy, acquiring their
// selectors in the cache. The caller releases them with releaseEntries.
func (rv *resolver) resolve(p *Policy) ([]*entry, error) {
	var entries []*entry
	namespace := p.Namespace
	if p.Kind == KindCiliumClusterwideNetworkPolicy {
		namespace = ""
	}
	fail := func(err error) ([]*entry, error) {
		rv.cache.releaseEntries(entries)
		return nil, err
	}
	for i := range p.Rules {
		r := &p.Rules[i]
		rulePath := p.rulePath(i)
		var subject identity.LabelSelector
		node := r.NodeSelector != nil
		if node {
			subject = normalizeSelector(*r.NodeSelector)
		} else {
			subject = normalizeSelector(*r.EndpointSelector)
			if namespace != "" {
				// The endpoint selector only applies in the policy's
				// namespace; Cilium overwrites a k8s: namespace match
				// and keeps any other.
				subject.MatchLabels[podNamespaceKey] = namespace
			}
		}
		// Peers of a policy whose subject selects initializing endpoints
		// (which have no labels yet) are not scoped to namespaces.
		matchesInit := !node && selectorHasKey(subject, initKey)
		subjRef, err := rv.cache.acquire(selectorSpec{kind: selLabels, labels: subject})
		if err != nil {
			return fail(fmt.Errorf("%s %s.endpointSelector: %w", p.ID(), rulePath, err))
		}
		ingressDD := r.EnableDefaultDeny.Ingress == nil || *r.EnableDefaultDeny.Ingress
		egressDD := r.EnableDefaultDeny.Egress == nil || *r.EnableDefaultDeny.Egress

		type item struct {
			path      string
			ingress   bool
			deny      bool
			endpoints []identity.LabelSelector
			nodes     []identity.LabelSelector
			entities  []Entity
			cidrs     []netip.Prefix
			cidrSets  []CIDRRule
			fqdns     []FQDNSelector
			ports     []PortRule
			icmps     []ICMPRule
		}
		var items []item
		for j, in := range r.Ingress {
			items = append(items, item{itemPath(in.Origin, rulePath, "ingress", j), true, false,
				in.FromEndpoints, in.FromNodes, in.FromEntities, in.FromCIDR, in.FromCIDRSet, nil, in.ToPorts, in.ICMPs})
		}
		for j, in := range r.IngressDeny {
			items = append(items, item{itemPath(in.Origin, rulePath, "ingressDeny", j), true, true,
				in.FromEndpoints, in.FromNodes, in.FromEntities, in.FromCIDR, in.FromCIDRSet, nil, in.ToPorts, in.ICMPs})
		}
		for j, eg := range r.Egress {
			items = append(items, item{itemPath(eg.Origin, rulePath, "egress", j), false, false,
				eg.ToEndpoints, eg.ToNodes, eg.ToEntities, eg.ToCIDR, eg.ToCIDRSet, eg.ToFQDNs, eg.ToPorts, eg.ICMPs})
		}
		for j, eg := range r.EgressDeny {
			items = append(items, item{itemPath(eg.Origin, rulePath, "egressDeny", j), false, true,
				eg.ToEndpoints, eg.ToNodes, eg.ToEntities, eg.ToCIDR, eg.ToCIDRSet, eg.ToFQDNs, eg.ToPorts, eg.ICMPs})
		}
		for _, it := range items {
			e := &entry{
				ref:         RuleRef{Policy: p.ID(), Path: it.path},
				subject:     rv.cache.retain(subjRef),
				node:        node,
				ingress:     it.ingress,
				deny:        it.deny,
				defaultDeny: map[bool]bool{true: ingressDD, false: egressDD}[it.ingress],
			}
			entries = append(entries, e)

			// A peer list that is given but empty selects nothing; the
			// rule still counts for default deny. (Only one peer kind
			// can be given per item.)
			emptyGiven := it.endpoints != nil && len(it.endpoints) == 0 ||
				it.nodes != nil && len(it.nodes) == 0 ||
				it.entities != nil && len(it.entities) == 0 ||
				it.cidrs != nil && len(it.cidrs) == 0 ||
				it.cidrSets != nil && len(it.cidrSets) == 0 ||
				it.fqdns != nil && len(it.fqdns) == 0
			if !emptyGiven {
				e.peers = []*selectorRef{}
				var specs []selectorSpec
				for _, s := range it.endpoints {
					scoped := rv.peerSelector(s, namespace, matchesInit)
					specs = append(specs, selectorSpec{kind: selLabels, labels: scoped})
					e.implied = append(e.implied, impliedRequirements(normalizeSelector(s), scoped))
				}
				for _, s := range it.nodes {
					ns := normalizeSelector(s)
					ns.MatchExpressions = append(ns.MatchExpressions, identity.SelectorRequirement{
						Key: reservedKeyStart + identity.LabelRemoteNode, Operator: identity.SelectorOpExists})
					rv.addClusterFilter(&ns)
					specs = append(specs, selectorSpec{kind: selLabels, labels: ns})
				}
				for _, ent := range it.entities {
					for _, s := range entitySelectors(ent, rv.clusterName) {
						specs = append(specs, selectorSpec{kind: selLabels, labels: s})
					}
				}
				for _, c := range it.cidrs {
					specs = append(specs, selectorSpec{kind: selCIDR, cidr: c, stack: rv.stack})
				}
				for _, c := range it.cidrSets {
					specs = append(specs, selectorSpec{kind: selCIDR, cidr: c.CIDR, except: c.Except, stack: rv.stack})
				}
				for _, f := range it.fqdns {
					specs = append(specs, selectorSpec{kind: selFQDN, fqdn: f})
				}
				for _, spec := range specs {
					ref, err := rv.cache.acquire(spec)
					if err != nil {
						return fail(fmt.Errorf("%s %s: %w", p.ID(), it.path, err))
					}
					e.peers = append(e.peers, ref)
				}
			}

			e.l4Given = len(it.ports)+len(it.icmps) > 0
			for pi, pr := range it.ports {
				// Of L7 rules only HTTP and DNS get here (unsupported.go).
				var http []HTTPRuleRef
				// Cilium takes the HTTP parser (the redirect) only for a
				// non-empty list (pkg/policy/l4.go): "http: []" is plain L4.
				redir := pr.Rules != nil && len(pr.Rules.HTTP) > 0
				if redir {
					http, err = compileHTTP(e.ref, fmt.Sprintf("%s.toPorts[%d]", it.path, pi), pr.Rules.HTTP)
					if err != nil {
						return fail(fmt.Errorf("%s %s: %w", p.ID(), it.path, err))
					}
				}
				dns, err := compileDNSRules(pr.Rules)
				if err != nil {
					return fail(fmt.Errorf("%s %s: %w", p.ID(), it.path, err))
				}
				for _, pp := range pr.Ports {
					protos := []nodeplane.Protocol{pp.Protocol}
					if pp.Protocol == nodeplane.ProtoAny {
						protos = []nodeplane.Protocol{nodeplane.ProtoTCP, nodeplane.ProtoUDP, nodeplane.ProtoSCTP}
					}
					for _, proto := range protos {
						e.ports = append(e.ports, l4Port{proto: proto, port: pp.Port, endPort: pp.EndPort, name: pp.Name,
							http: http, redirHTTP: redir, dns: dns})
					}
				}
			}
			for _, ir := range it.icmps {
				for _, f := range ir.Fields {
					proto := nodeplane.ProtoICMP
					if f.IPv6 {
						proto = nodeplane.ProtoICMPv6
					}
					e.ports = append(e.ports, l4Port{proto: proto, port: uint16(f.Type)})
				}
			}
		}
		rv.cache.release(subjRef)
	}
	return entries, nil
}

// normalizeSelector returns a deep copy of s whose keys all carry a
// source: keys without one select every source ("any:"), "$name" is
// "reserved:name". This is Cilium's EndpointSelector.Sanitize.
func normalizeSelector(s identity.LabelSelector) identity.LabelSelector {
	out := identity.LabelSelector{MatchLabels: make(map[string]string, len(s.MatchLabels)+2)}
	for k, v := range s.MatchLabels {
		out.MatchLabels[normalizeKey(k)] = v
	}
	for _, e := range s.MatchExpressions {
		e.Key = normalizeKey(e.Key)
		e.Values = slices.Clone(e.Values)
		out.MatchExpressions = append(out.MatchExpressions, e)
	}
	return out
}

func normalizeKey(k string) string {
	if strings.HasPrefix(k, "$") {
		return reservedKeyStart + k[1:]
	}
	if i := strings.IndexByte(k, ':'); i > 0 {
		return k
	} else if i == 0 {
		return identity.SourceAny + k
	}
	return identity.SourceAny + ":" + k
}

func selectorHasKey(s identity.LabelSelector, keys ...string) bool {
	for _, key := range keys {
		if _, ok := s.MatchLabels[key]; ok {
			return true
		}
		for _, e := range s.MatchExpressions {
			if e.Key == key {
				return true
			}
		}
	}
	return false
}

func selectorHasKeyPrefix(s identity.LabelSelector, prefixes ...string) bool {
	for _, prefix := range prefixes {
		for k := range s.MatchLabels {
			if strings.HasPrefix(k, prefix) {
				return true
			}
		}
		for _, e := range s.MatchExpressions {
			if strings.HasPrefix(e.Key, prefix) {
				return true
			}
		}
	}
	return false
}

// peerSelector scopes a peer endpoint selector as Cilium's
// getEndpointSelector does: selectors on reserved labels are taken as
// they are; otherwise a namespaced policy's selector is limited to its
// namespace unless it selects a namespace or namespace labels itself, a
// clusterwide policy's selector to endpoints that have a namespace (unless
// its subject selects initializing endpoints), and both to the local
// cluster unless the selector names a cluster.
func (rv *resolver) peerSelector(s identity.LabelSelector, namespace string, matchesInit bool) identity.LabelSelector {
	out := normalizeSelector(s)
	if selectorHasKeyPrefix(out, reservedKeyStart) {
		return out
	}
	if !selectorHasKey(out, podNamespaceKey, anyNamespaceKey) {
		if namespace == "" {
			if !matchesInit {
				out.MatchExpressions = append(out.MatchExpressions, identity.SelectorRequirement{
					Key: podNamespaceKey, Operator: identity.SelectorOpExists})
			}
		} else if !selectorHasKeyPrefix(out, k8sNSLabelsKey, anyNSLabelsKey) {
			out.MatchLabels[podNamespaceKey] = namespace
		}
	}
	rv.addClusterFilter(&out)
	return out
}

func (rv *resolver) addClusterFilter(s *identity.LabelSelector) {
	if rv.clusterName != "" && !selectorHasKey(*s, clusterKey, anyClusterKey) {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[clusterKey] = rv.clusterName
	}
}

// matchesPeer reports whether the entry's peers select a peer with the
// given labels, for entries that have ports or peers (see entry.peers).
func (e *entry) matchesPeer(labels identity.Labels) bool {
	if e.peers == nil {
		return false
	}
	if len(e.peers) == 0 {
		return e.l4Given
	}
	for _, p := range e.peers {
		if p.cs.matches(labels) {
			return true
		}
	}
	return false
}

// l3Only reports whether the entry allows or denies every protocol: it
// has peers and no ports.
func (e *entry) l3Only() bool {
	return !e.l4Given && len(e.peers) > 0
}
