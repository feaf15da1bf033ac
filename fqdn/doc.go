// Package fqdn is the model behind DNS-based policy: what Cilium's toFQDNs
// selectors select at a given moment.
//
// Cilium lets a policy name destinations by DNS name (matchName) or pattern
// (matchPattern). Names do not resolve by themselves: a DNS proxy watches
// the lookups endpoints make and reports each answer (name, addresses, TTL).
// The cache remembers those answers until their TTL runs out (never sooner
// than a configurable minimum, Cilium's --tofqdns-min-ttl, default 0: the
// answer's own TTL; an answer whose TTL is still zero is remembered for
// [ZeroTTLLifetime], not dropped), at most Config.MaxIPsPerName addresses
// per name (Cilium's --tofqdns-endpoint-max-ip-per-hostname) and
// Config.MaxEntries pairs in all. [Selections] combines the cache with the selectors the
// policies use and says, for every address, which selectors select it now;
// each change (an answer arrived, a TTL ran out, a selector came or went)
// returns the addresses whose set of selectors changed, so that the caller
// (policy.Engine) updates only their identities.
//
// Names are compared the way Cilium compares them: case-insensitively, as
// fully qualified names with a trailing dot ([Normalize]). [Selector]
// implements matchName and matchPattern exactly as Cilium's
// pkg/fqdn/matchpattern: '*' matches any run of the characters
// [-a-zA-Z0-9_] within one label, a leading "**." matches one or more
// whole labels, and a pattern of only '*' matches every name.
//
// The package is pure Go and has no clock of its own beyond the one its
// Config gives it; nothing here touches the kernel or the network.
package fqdn
