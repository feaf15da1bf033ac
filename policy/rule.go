package policy

import (
	"fmt"
	"net/netip"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// Kind is the kind of a policy object.
type Kind string

// The policy kinds this package reads.
const (
	// KindCiliumNetworkPolicy is a namespaced cilium.io/v2 policy: its
	// selectors only see endpoints of its namespace unless they name a
	// namespace themselves.
	KindCiliumNetworkPolicy Kind = "CiliumNetworkPolicy"
	// KindCiliumClusterwideNetworkPolicy is a cluster-scoped cilium.io/v2
	// policy.
	KindCiliumClusterwideNetworkPolicy Kind = "CiliumClusterwideNetworkPolicy"
	// KindNetworkPolicy is a networking.k8s.io/v1 NetworkPolicy, translated
	// into rules of this package's model as Cilium translates it.
	KindNetworkPolicy Kind = "NetworkPolicy"
)

// Policy is one policy object: the unit a [Repository] adds, replaces and
// deletes. Namespace and Name identify it within its Kind.
type Policy struct {
	Kind Kind
	// Namespace is the namespace of a CiliumNetworkPolicy or NetworkPolicy;
	// it must be empty for a CiliumClusterwideNetworkPolicy.
	Namespace string
	Name      string
	// UID is the Kubernetes object UID, if known; it only appears in the
	// rules' labels.
	UID string
	// Rules are the policy's rules: spec followed by specs for Cilium
	// policies, the translation of the spec for a NetworkPolicy.
	Rules []Rule
	// Source says where the policy was read from ("policies.yaml, document
	// 2"), for messages; it may be empty.
	Source string

	// rulePaths are the paths of Rules in the source document ("spec",
	// "specs[1]"); lines maps field paths to source lines. Both are only
	// known for parsed policies and only serve messages.
	rulePaths []string
	lines     map[string]int
	// file and doc are the source and document number of a parsed
	// policy, for the errors of a later validation (Engine.AddPolicy).
	file string
	doc  int
}

// ID returns the identity of the policy within a repository.
func (p *Policy) ID() PolicyID {
	return PolicyID{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name}
}

// PolicyID names a policy object.
type PolicyID struct {
	Kind      Kind
	Namespace string
	Name      string
}

func (id PolicyID) String() string {
	if id.Namespace == "" {
		return fmt.Sprintf("%s %s", id.Kind, id.Name)
	}
	return fmt.Sprintf("%s %s/%s", id.Kind, id.Namespace, id.Name)
}

// Rule is one rule in the CiliumNetworkPolicy model: the endpoints it
// applies to, what it allows and denies in each direction, and whether it
// puts the endpoints it selects into default-deny mode.
//
// The zero value of a list means "not given". A list that is given but
// empty is not the same: an empty peer list (FromEndpoints: []) selects no
// peer at all, as in Cilium, while a nil one leaves the peers
// unconstrained when ToPorts is given.
type Rule struct {
	// EndpointSelector selects the endpoints the rule applies to. Exactly
	// one of EndpointSelector and NodeSelector must be set. In a namespaced
	// policy it only selects endpoints of the policy's namespace.
	EndpointSelector *identity.LabelSelector
	// NodeSelector selects nodes (host policy); only clusterwide policies
	// may use it. Nothing enforces policy on the host yet, so validation
	// rejects it as not supported yet.
	NodeSelector *identity.LabelSelector

	// Ingress rules allow traffic into the selected endpoints.
	Ingress []IngressRule
	// IngressDeny rules deny traffic into the selected endpoints, whatever
	// any rule allows.
	IngressDeny []IngressRule
	// Egress rules allow traffic out of the selected endpoints.
	Egress []EgressRule
	// EgressDeny rules deny traffic out of the selected endpoints.
	EgressDeny []EgressRule

	// EnableDefaultDeny says whether the rule puts the endpoints it selects
	// into default-deny mode per direction. Unset means yes for each
	// direction the rule has (allow or deny) rules for.
	EnableDefaultDeny DefaultDenyConfig

	// Labels are user labels of the rule; the repository adds the labels
	// that name the policy (k8s:io.cilium.k8s.policy.name=...).
	Labels identity.Labels
	// Description is free text.
	Description string
}

// DefaultDenyConfig is a rule's wish for default-deny mode per direction;
// nil means the default.
type DefaultDenyConfig struct {
	Ingress *bool
	Egress  *bool
}

// IngressRule is one ingress item: which peers, on which ports. Peers are
// given by at most one of the From* fields; ports by ToPorts or ICMPs (not
// both). An item with neither peers nor ports allows nothing (it only
// makes the direction default-deny). Deny rules use the same type but may
// not carry L7 rules.
type IngressRule struct {
	// FromEndpoints selects peer endpoints by labels. In a namespaced
	// policy a selector only sees the policy's namespace unless it selects
	// on a namespace label itself.
	FromEndpoints []identity.LabelSelector
	// FromEntities selects well-known peers (world, host, cluster, ...).
	FromEntities []Entity
	// FromCIDR selects peers outside the cluster by address prefix.
	FromCIDR []netip.Prefix
	// FromCIDRSet selects peers outside the cluster by prefix, with
	// sub-prefixes carved out.
	FromCIDRSet []CIDRRule
	// FromNodes selects nodes by their labels; it requires node-label
	// identities, which the default configuration lacks.
	FromNodes []identity.LabelSelector

	// ToPorts restricts the rule to these destination ports.
	ToPorts []PortRule
	// ICMPs restricts the rule to these ICMP types.
	ICMPs []ICMPRule

	// Origin says where the item comes from in its source document
	// ("spec.ingress[0]", "spec.ingress[1].from[0]" for a translated
	// NetworkPolicy), for tracing. Optional.
	Origin string
}

// EgressRule is one egress item: like [IngressRule] with destinations for
// sources.
type EgressRule struct {
	ToEndpoints []identity.LabelSelector
	ToEntities  []Entity
	ToCIDR      []netip.Prefix
	ToCIDRSet   []CIDRRule
	ToNodes     []identity.LabelSelector
	// ToFQDNs selects destinations by DNS name: the addresses a DNS
	// answer seen by the DNS proxy gave to a matching name, until the
	// answer's TTL runs out (see EngineConfig.FQDN). An engine without
	// the DNS machinery rejects a rule that gives it (even empty).
	ToFQDNs []FQDNSelector

	ToPorts []PortRule
	ICMPs   []ICMPRule

	// Origin is as in [IngressRule].
	Origin string
}

// CIDRRule is a prefix with sub-prefixes that are not selected.
type CIDRRule struct {
	CIDR   netip.Prefix
	Except []netip.Prefix
}

// FQDNSelector selects destinations by DNS name or pattern, with Cilium's
// semantics (see package fqdn): names are compared case-insensitively and
// fully qualified; in a pattern '*' matches within one label, a leading
// "**." one or more labels, and "*" alone every name.
type FQDNSelector struct {
	MatchName    string
	MatchPattern string
}

// PortRule is a list of ports with optional L7 rules.
type PortRule struct {
	Ports []PortProtocol
	// Rules are L7 rules. They need an L7 proxy: a repository without the
	// matching proxy (Config.ProxyPorts; for DNS, EngineConfig.FQDN too)
	// rejects HTTP and DNS rules (given, even empty) rather than open the
	// port to everything. Nil or empty (&L7Rules{}) means no L7 rules.
	Rules *L7Rules
}

// PortProtocol is a port or port range with a protocol.
type PortProtocol struct {
	// Port is the destination port; 0 means every port, whatever EndPort
	// says (as in Cilium, which only expands a range from a port above 0).
	Port uint16
	// Name is a named port (a container port name) instead of a number.
	Name string
	// EndPort, when Port is not 0 and EndPort is greater than Port, makes
	// the rule cover Port..EndPort; otherwise it is ignored.
	EndPort uint16
	// Protocol is the L4 protocol; [nodeplane.ProtoAny] covers TCP, UDP and
	// SCTP.
	Protocol nodeplane.Protocol
}

// ICMPRule lists ICMP types.
type ICMPRule struct {
	Fields []ICMPField
}

// ICMPField is one ICMP (IPv4) or ICMPv6 type.
type ICMPField struct {
	// IPv6 selects ICMPv6; false is ICMP for IPv4.
	IPv6 bool
	Type uint8
}

// L7Rules are HTTP or DNS rules of a port. They are decoded and checked as
// Cilium checks them. HTTP rules are enforced by the HTTP proxy when the
// engine has one (Config.ProxyPorts.HTTP) and rejected as not supported
// otherwise; DNS rules are rejected as not supported yet.
type L7Rules struct {
	HTTP []HTTPRule
	DNS  []DNSRule
}

// HTTPRule matches HTTP requests; empty fields match everything (Cilium's
// PortRuleHTTP, enforced as Cilium's Envoy configuration does). Method,
// Path and Host are regular expressions (RE2, Envoy's safe_regex) that
// must match the whole request method, request target (path and query, as
// sent) and Host header. A Headers item "Name" requires the header, "Name:
// value" or "Name value" (split at the first space, a trailing colon
// trimmed) requires that exact value. HeaderMatches require a header's
// exact value, or its presence without a Value.
type HTTPRule struct {
	Method        string
	Path          string
	Host          string
	Headers       []string
	HeaderMatches []HeaderMatch
}

// HeaderMatch is Cilium's HeaderMatch. Mismatch actions (LOG, ADD,
// DELETE, REPLACE) and Secret are decoded and validated but rejected as
// not supported: nothing would carry them out.
type HeaderMatch struct {
	Mismatch string
	Name     string
	Value    string
	Secret   *Secret
}

// Secret names a Kubernetes secret holding a header value.
type Secret struct {
	Namespace, Name string
}

// DNSRule matches DNS queries by name or pattern.
type DNSRule struct {
	MatchName    string
	MatchPattern string
}

func (r *L7Rules) empty() bool {
	return r == nil || len(r.HTTP)+len(r.DNS) == 0
}
