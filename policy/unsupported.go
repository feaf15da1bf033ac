package policy

import (
	"fmt"

	"go.yaml.in/yaml/v3"
)

// This file rejects the parts of the Cilium policy API that are valid in
// Cilium but that nodeplane does not enforce yet. Accepting them would
// enforce something else: an HTTP rule would open its port to every
// request, a toFQDNs rule would depend on a DNS proxy that does not exist,
// a rule that requires mutual authentication would allow unauthenticated
// peers, and a host policy would leave the host unrestricted. Until each
// is enforced, it fails validation ("fail closed") with a message that
// says so, at the field that asks for it. toFQDNs and DNS rules are
// enforced by an Engine configured with the DNS machinery
// (EngineConfig.FQDN): Parse accepts them, as Cilium does, and an engine
// without it rejects them with the same message.

const notSupportedYet = "not supported yet"

// Reasons for the fields rejected as not supported yet.
const (
	reasonHTTP = "HTTP rules are " + notSupportedYet +
		" without an HTTP proxy (policy Config.ProxyPorts.HTTP): the port would be open to every request"
	reasonHeaderSecret = "header values from secrets are " + notSupportedYet +
		": nodeplane reads no Kubernetes secrets, so the header could not be checked"
	reasonHeaderMismatch = "mismatch action %q is " + notSupportedYet +
		": the HTTP proxy does not log, add, delete or replace headers, and a header match without it denies instead"
	reasonDNS = "DNS rules are " + notSupportedYet +
		" without a DNS proxy (policy EngineConfig.FQDN and Config.ProxyPorts.DNS): the port would be open to every query"
	reasonKafka = "Kafka rules are " + notSupportedYet +
		": there is no L7 proxy, so the port would be open to every request"
	reasonGenericL7 = "L7 rules (l7proto, l7) are " + notSupportedYet +
		": there is no L7 proxy, so the port would be open to every request"
	reasonFQDN = "toFQDNs is " + notSupportedYet +
		" without a DNS proxy (policy EngineConfig.FQDN and Config.ProxyPorts.DNS): DNS names resolve to addresses only through one"
	reasonAuth = "mutual authentication (mode %q) is " + notSupportedYet +
		": the rule would allow peers that did not authenticate"
	reasonHost = "host policies (nodeSelector) are " + notSupportedYet +
		": nothing enforces policy on the host"
)

// unsupportedRule rejects a host policy. Cilium's own checks on
// nodeSelector (only in a clusterwide policy, not with endpointSelector)
// come first; this is for a rule that passes them.
func (v *validator) unsupportedRule(r *Rule, path string) {
	if r.NodeSelector != nil && r.EndpointSelector == nil && v.p.Kind == KindCiliumClusterwideNetworkPolicy {
		v.fail(path+".nodeSelector", reasonHost)
	}
}

// unsupportedEgress rejects toFQDNs in an allow rule (Cilium itself
// rejects it in a deny rule) when the policy reaches a repository without
// the DNS machinery (an engine without EngineConfig.FQDN has no
// ProxyPorts.DNS).
func (v *validator) unsupportedEgress(r *EgressRule, path string, deny bool) {
	if r.ToFQDNs != nil && !deny && v.cfg != nil && v.cfg.ProxyPorts.DNS == 0 {
		v.fail(path+".toFQDNs", reasonFQDN)
	}
}

// unsupportedL7 rejects the L7 rules of a port rule, per kind: HTTP rules
// without an HTTP proxy (checked when the policy reaches a Repository,
// whose Config says; the static validation of decoding accepts them), and
// the parts of HTTP rules nothing carries out.
func (v *validator) unsupportedL7(pr PortRule, path string) {
	if pr.Rules == nil {
		return
	}
	if len(pr.Rules.HTTP) > 0 && v.cfg != nil && v.cfg.ProxyPorts.HTTP == 0 {
		v.fail(path+".rules.http", reasonHTTP)
	}
	for i, h := range pr.Rules.HTTP {
		for j, m := range h.HeaderMatches {
			mp := fmt.Sprintf("%s.rules.http[%d].headerMatches[%d]", path, i, j)
			if m.Secret != nil {
				v.fail(mp+".secret", reasonHeaderSecret)
			}
			if m.Mismatch != "" {
				v.fail(mp+".mismatch", reasonHeaderMismatch, m.Mismatch)
			}
		}
	}
	if len(pr.Rules.DNS) > 0 && v.cfg != nil && v.cfg.ProxyPorts.DNS == 0 {
		v.fail(path+".rules.dns", reasonDNS)
	}
}

// notSupportedYet returns a decoder for a field that the model has no
// place for and that cannot be enforced yet: if the field is given, it is
// an error with the given reason.
func (d *docDecoder) notSupportedYet(reason string) func(*yaml.Node, string) {
	return func(v *yaml.Node, p string) {
		if d.present(v) {
			d.fail(v, p, "%s", reason)
		}
	}
}
