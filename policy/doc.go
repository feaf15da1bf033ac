// Package policy turns CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy
// and Kubernetes NetworkPolicy into the per-endpoint policy maps the
// datapath enforces, keeps those maps up to date incrementally, and
// explains its verdicts.
//
// # Model
//
// A [Policy] is one policy object: a list of [Rule]s in the
// CiliumNetworkPolicy model (an endpoint selector; ingress, ingressDeny,
// egress and egressDeny items that name peers by label selector, entity or
// CIDR and restrict ports; whether the rule makes its endpoints
// default-deny). [Parse] and [ParseFiles] read YAML and JSON documents as
// users have them; a NetworkPolicy is translated into the same model as
// Cilium translates it.
//
// An [Engine] is the one way to change policy. It holds the policies and
// the identities they are resolved against (each distinct selector is
// compiled once and tracks the identities it selects as identities come
// and go), and keeps the policy maps of the node's endpoints current: when
// a policy changes it recompiles only the endpoints the policy selects and
// applies the difference; when identities are added or removed (from an
// identity allocator's watch) it updates only those identities' entries.
// It allocates the identities of the prefixes that CIDR rules name and
// publishes them in the ipcache, excepts included, so that the datapath
// maps addresses to them.
//
// The compiled form is package [github.com/nodeplane/nodeplane/policy/mapstate]:
// an endpoint's map, keyed by peer identity (0 for any peer), direction,
// protocol and port prefix. Port ranges become power-of-two prefixes; deny
// entries override allow entries they cover; a direction that no rule
// restricts, or that no rule makes default-deny, gets an allow-all entry.
// The engine writes it through [LocalEndpoint], which *datapath.Endpoint
// implements; this package imports no kernel code.
//
// [Engine.Repository] is a read-only view: [Repository.Compile] computes
// an endpoint's [EndpointPolicy]; [Repository.Evaluate] decides by direct
// evaluation of the rules, which the datapath's lookups over the compiled
// map ([mapstate.Lookup]) must match (the oracle test checks it over random
// policies); [Repository.Trace] runs both and explains the verdict: which
// rules select the endpoint, which rules and selectors allowed or denied,
// why the direction is default-deny.
//
// # Composition
//
// Every endpoint of the node must be given to [Engine.AddEndpoint], also
// one that no policy selects: the datapath denies all traffic of an
// endpoint whose map is empty, and the engine writes the allow-all entries
// of an unselected one. The endpoint's identity must be known to the
// engine first: run [Engine.WatchIdentities] on the identity allocator and
// [Engine.WaitForIdentities] before adding the endpoint.
//
// # Semantics
//
// Verdicts follow Cilium v1.20 with its default configuration, and were
// checked against Cilium's own policy engine on a large set of random
// policies and flows. The points that surprise:
//
//   - Rules of a CiliumNetworkPolicy or NetworkPolicy only select
//     endpoints of its namespace; peer selectors are limited to the
//     namespace too, unless they select on the namespace
//     (k8s:io.kubernetes.pod.namespace) or namespace labels
//     (k8s:io.cilium.k8s.namespace.labels.*) themselves, or on a reserved
//     label. Clusterwide peer selectors require a namespace label. Every
//     peer selector requires the local cluster's name
//     (k8s:io.cilium.k8s.policy.cluster=default) unless it names a
//     cluster. A CiliumNetworkPolicy without a namespace is clusterwide,
//     as Cilium parses it.
//   - An endpoint is default-deny in a direction when any rule item that
//     selects it in that direction enables default deny (the default,
//     deny-only rules included). "ingress: [{}]" denies all ingress in a
//     CiliumNetworkPolicy, but allows all in a NetworkPolicy.
//   - A peer list that is given but empty selects nothing; items with
//     ports but no peers select every peer.
//   - Dual stack is the default: addresses outside the cluster carry
//     world-ipv4 or world-ipv6, 0.0.0.0/0 selects only IPv4, and the world
//     entity covers every CIDR identity.
//   - The host is not subject to endpoint policy (no host firewall); an
//     endpoint with an init label is default-deny both ways; policy
//     enforcement mode is "default".
//   - Port 0 is every port of its protocol even with an endPort: like
//     Cilium, a range is only expanded from a port above 0.
//
// What this package cannot enforce it rejects rather than enforce as
// something wider ("fail closed"): Kafka and generic L7 rules under
// toPorts[].rules, mutual authentication (authentication.mode required or
// test-always-fail) and host policies (nodeSelector) fail validation as "not
// supported yet", as do the other fields [Parse] lists; HTTP rules, DNS
// rules and toFQDNs do so for an engine without the proxy that enforces
// them. A GET-only HTTP rule would otherwise open its port to every
// request.
//
// # DNS-based policy
//
// With EngineConfig.FQDN (and Config.ProxyPorts.DNS) the engine follows
// Cilium's model: ports with DNS rules redirect to the DNS proxy
// (proxy/dnsproxy), which asks [Engine.EvaluateDNS] about each query and
// reports each answer with [Engine.ObserveDNS]; every address an answer
// gives to a name a toFQDNs selector matches gets a local identity with
// its cidr labels and one fqdn:<name or pattern> label per matching
// selector, published in the ipcache; [Engine.ExpireDNS] (or
// [Engine.RunDNSExpiry]) takes it away when the answer's TTL runs out
// (at least the configured minimum, Cilium's --tofqdns-min-ttl; an
// answer with TTL 0 is learnt too, for fqdn.ZeroTTLLifetime), so new
// connections to the address are denied while tracked ones continue. An
// identity or ipcache change that fails is retried by the next one.
//
// # Lifetime and errors
//
// Engines, their repositories and endpoint policies are safe for
// concurrent use. An Engine holds identity references for CIDR rules
// until it is closed. Invalid policies are rejected with errors wrapping
// [ErrInvalidPolicy] that name the document and field path
// ([ValidationError]); a rejected change leaves the repository as it was.
package policy
