package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// Limits of Cilium's rule validation.
const (
	maxPortsPerRule  = 40
	maxICMPFields    = 40
	maxFQDNLength    = 255
	clusterNameDflt  = "default"
	podNamespaceKey  = identity.SourceK8s + ":" + LabelPodNamespace
	anyNamespaceKey  = identity.SourceAny + ":" + LabelPodNamespace
	k8sNSLabelsKey   = identity.SourceK8s + ":" + LabelNamespaceLabelsPrefix
	anyNSLabelsKey   = identity.SourceAny + ":" + LabelNamespaceLabelsPrefix
	clusterKey       = identity.SourceK8s + ":" + LabelCluster
	anyClusterKey    = identity.SourceAny + ":" + LabelCluster
	reservedKeyStart = identity.SourceReserved + ":"
	initKey          = identity.SourceReserved + ":" + identity.LabelInit
)

var (
	fqdnNameChars    = regexp.MustCompile(`^[-a-zA-Z0-9_.]+$`)
	fqdnPatternChars = regexp.MustCompile(`^[-a-zA-Z0-9_.*]+$`)
)

// validator collects the errors of one policy with their paths.
type validator struct {
	p *Policy
	// cfg is the repository's configuration when the policy is added to
	// one; nil for the static validation of decoding.
	cfg  *Config
	errs []error
}

func (v *validator) fail(path, format string, args ...any) {
	line := 0
	// The line of the deepest known ancestor of the path.
	for p := path; p != "" && v.p.lines != nil; p = parentPath(p) {
		if l, ok := v.p.lines[p]; ok {
			line = l
			break
		}
	}
	v.errs = append(v.errs, &ValidationError{Source: v.p.file, Document: v.p.doc, Object: v.p.ID().String(), Path: path, Line: line,
		Reason: fmt.Sprintf(format, args...)})
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// validate checks the policy as Cilium's CiliumNetworkPolicy.Parse and
// Rule.Sanitize check it. It returns every problem found.
func (p *Policy) validate() error { return p.validateFor(nil) }

// validateFor validates p for a repository configured with cfg (nil:
// statically, without one). What needs a proxy (HTTP rules; DNS rules
// and toFQDNs) is refused for a repository without it.
func (p *Policy) validateFor(cfg *Config) error {
	v := &validator{p: p, cfg: cfg}
	switch p.Kind {
	case KindCiliumNetworkPolicy, KindNetworkPolicy:
	case KindCiliumClusterwideNetworkPolicy:
		if p.Namespace != "" {
			v.fail("metadata.namespace", "a %s is not namespaced", p.Kind)
		}
	default:
		v.fail("kind", "unsupported kind %q", p.Kind)
	}
	if p.Name == "" {
		v.fail("metadata.name", "a %s must have a name", p.Kind)
	}
	if len(p.Rules) == 0 {
		v.fail("spec", "a %s needs spec or specs", p.Kind)
	}
	for i := range p.Rules {
		v.rule(&p.Rules[i], p.rulePath(i))
	}
	return errors.Join(v.errs...)
}

// rulePath returns the path of rule i in the source document ("spec",
// "specs[2]") or in the Policy value ("rules[2]").
func (p *Policy) rulePath(i int) string {
	if i < len(p.rulePaths) {
		return p.rulePaths[i]
	}
	return fmt.Sprintf("rules[%d]", i)
}

func (v *validator) rule(r *Rule, path string) {
	if len(r.Ingress) == 0 && len(r.IngressDeny) == 0 && len(r.Egress) == 0 && len(r.EgressDeny) == 0 {
		v.fail(path, "rule must have at least one of ingress, ingressDeny, egress, egressDeny")
	}
	switch {
	case r.EndpointSelector == nil && r.NodeSelector == nil:
		v.fail(path, "rule must have one of endpointSelector or nodeSelector")
	case r.EndpointSelector != nil && r.NodeSelector != nil:
		v.fail(path, "rule cannot have both endpointSelector and nodeSelector")
	case r.NodeSelector != nil && v.p.Kind != KindCiliumClusterwideNetworkPolicy:
		v.fail(path+".nodeSelector", "only a CiliumClusterwideNetworkPolicy may select nodes")
	}
	v.unsupportedRule(r, path)
	if r.EndpointSelector != nil {
		v.selector(*r.EndpointSelector, path+".endpointSelector")
	}
	if r.NodeSelector != nil {
		v.selector(*r.NodeSelector, path+".nodeSelector")
	}
	host := r.NodeSelector != nil
	for i := range r.Ingress {
		v.ingress(&r.Ingress[i], itemPath(r.Ingress[i].Origin, path, "ingress", i), false, host)
	}
	for i := range r.IngressDeny {
		v.ingress(&r.IngressDeny[i], itemPath(r.IngressDeny[i].Origin, path, "ingressDeny", i), true, host)
	}
	for i := range r.Egress {
		v.egress(&r.Egress[i], itemPath(r.Egress[i].Origin, path, "egress", i), false, host)
	}
	for i := range r.EgressDeny {
		v.egress(&r.EgressDeny[i], itemPath(r.EgressDeny[i].Origin, path, "egressDeny", i), true, host)
	}
}

// itemPath is the path of a rule item: where it came from in its document
// when known, else its position in the rule.
func itemPath(origin, rulePath, field string, i int) string {
	if origin != "" {
		if j := strings.Index(origin, " ("); j >= 0 {
			origin = origin[:j]
		}
		return origin
	}
	return fmt.Sprintf("%s.%s[%d]", rulePath, field, i)
}

func (v *validator) selector(s identity.LabelSelector, path string) {
	if _, err := identity.NewSelector(s); err != nil {
		var n int
		for _, e := range flatten(err) {
			var se *identity.SelectorError
			if errors.As(e, &se) {
				v.fail(path+"."+se.Field, "invalid value %q: %s", se.Value, se.Reason)
			} else {
				v.fail(path, "%v", e)
			}
			n++
		}
		if n == 0 {
			v.fail(path, "%v", err)
		}
	}
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// l3Members checks that at most one peer kind is given (Cilium rejects
// combinations) and validates the peers.
func (v *validator) l3Members(path string, members []struct {
	name string
	n    int
}) {
	var given []string
	for _, m := range members {
		if m.n > 0 {
			given = append(given, m.name)
		}
	}
	if len(given) > 1 {
		v.fail(path, "combining %s and %s is not supported yet", given[0], given[1])
	}
}

type l3member = struct {
	name string
	n    int
}

func (v *validator) ingress(r *IngressRule, path string, deny, host bool) {
	v.l3Members(path, []l3member{
		{"fromEndpoints", len(r.FromEndpoints)}, {"fromCIDR", len(r.FromCIDR)},
		{"fromCIDRSet", len(r.FromCIDRSet)}, {"fromEntities", len(r.FromEntities)},
		{"fromNodes", len(r.FromNodes)},
	})
	v.peers(path, "from", r.FromEndpoints, r.FromNodes, r.FromEntities, r.FromCIDR, r.FromCIDRSet)
	v.l4(path, r.ToPorts, r.ICMPs, true, deny, host)
}

func (v *validator) egress(r *EgressRule, path string, deny, host bool) {
	v.l3Members(path, []l3member{
		{"toEndpoints", len(r.ToEndpoints)}, {"toCIDR", len(r.ToCIDR)},
		{"toCIDRSet", len(r.ToCIDRSet)}, {"toEntities", len(r.ToEntities)},
		{"toNodes", len(r.ToNodes)}, {"toFQDNs", len(r.ToFQDNs)},
	})
	v.peers(path, "to", r.ToEndpoints, r.ToNodes, r.ToEntities, r.ToCIDR, r.ToCIDRSet)
	if deny && r.ToFQDNs != nil {
		v.fail(path+".toFQDNs", "deny rules cannot select by DNS name")
	}
	v.unsupportedEgress(r, path, deny)
	for i, f := range r.ToFQDNs {
		fp := fmt.Sprintf("%s.toFQDNs[%d]", path, i)
		switch {
		case f.MatchName != "" && f.MatchPattern != "":
			v.fail(fp, "only one of matchName or matchPattern is allowed in an FQDN selector")
		case f.MatchName != "" && !fqdnNameChars.MatchString(f.MatchName):
			v.fail(fp+".matchName", "invalid characters in %q: only 0-9, a-z, A-Z and ., -, _ are allowed", f.MatchName)
		default:
			v.fqdnPattern(f.MatchPattern, fp+".matchPattern")
		}
	}
	v.l4(path, r.ToPorts, r.ICMPs, false, deny, host)
}

func (v *validator) fqdnPattern(p, path string) {
	if len(strings.TrimSpace(p)) > maxFQDNLength {
		v.fail(path, "pattern longer than %d characters", maxFQDNLength)
	} else if p != "" && !fqdnPatternChars.MatchString(p) {
		v.fail(path, "invalid characters in %q: only 0-9, a-z, A-Z and ., -, _ and * are allowed", p)
	}
}

func (v *validator) peers(path, dir string, endpoints, nodes []identity.LabelSelector, entities []Entity, cidrs []netip.Prefix, sets []CIDRRule) {
	if len(nodes) > 0 {
		v.fail(path+"."+dir+"Nodes", "%sNodes rules can only be applied when node-label identities are enabled (Cilium's %q flag)", dir, "enable-node-selector-labels")
	}
	for i, s := range endpoints {
		v.selector(s, fmt.Sprintf("%s.%sEndpoints[%d]", path, dir, i))
	}
	for i, s := range nodes {
		v.selector(s, fmt.Sprintf("%s.%sNodes[%d]", path, dir, i))
	}
	for i, e := range entities {
		if !e.Valid() {
			v.fail(fmt.Sprintf("%s.%sEntities[%d]", path, dir, i), "unsupported entity: %s", e)
		}
	}
	for i, c := range cidrs {
		if !c.IsValid() {
			v.fail(fmt.Sprintf("%s.%sCIDR[%d]", path, dir, i), "IP must be specified")
		}
	}
	for i, s := range sets {
		sp := fmt.Sprintf("%s.%sCIDRSet[%d]", path, dir, i)
		if !s.CIDR.IsValid() {
			v.fail(sp+".cidr", "one of cidr, cidrGroupRef, or cidrGroupSelector is required")
			continue
		}
		for j, e := range s.Except {
			if !e.IsValid() || s.CIDR.Bits() > e.Bits() || !s.CIDR.Contains(e.Addr()) {
				v.fail(fmt.Sprintf("%s.except[%d]", sp, j), "allow CIDR prefix %s does not contain exclude CIDR prefix %s", s.CIDR, e)
			}
		}
	}
}

// l4 checks ports, ICMP types and L7 rules as Cilium's PortRule.sanitize
// and ICMPRule.verify do.
func (v *validator) l4(path string, ports []PortRule, icmps []ICMPRule, ingress, deny, host bool) {
	if len(icmps) > 0 && len(ports) > 0 {
		v.fail(path, "the icmps block may only be present without toPorts; define a separate rule to use toPorts")
	}
	for i, ir := range icmps {
		if len(ir.Fields) > maxICMPFields {
			v.fail(fmt.Sprintf("%s.icmps[%d].fields", path, i), "too many types, the max is %d", maxICMPFields)
		}
	}
	for i, pr := range ports {
		pp := fmt.Sprintf("%s.toPorts[%d]", path, i)
		if len(pr.Ports) > maxPortsPerRule {
			v.fail(pp+".ports", "too many ports, the max is %d", maxPortsPerRule)
		}
		v.unsupportedL7(pr, pp)
		v.httpRules(pr, pp)
		hasDNS := pr.Rules != nil && len(pr.Rules.DNS) > 0
		hasL7 := !pr.Rules.empty()
		if deny && hasL7 {
			v.fail(pp+".rules", "deny rules cannot have L7 rules")
		}
		if ingress && hasDNS {
			v.fail(pp+".rules.dns", "DNS rules are not allowed on ingress")
		}
		if host && pr.Rules != nil && len(pr.Rules.HTTP) > 0 {
			v.fail(pp+".rules.http", "L7 policy is not supported on host %s yet", map[bool]string{true: "ingress", false: "egress"}[ingress])
		}
		if pr.Rules != nil && len(pr.Rules.HTTP) > 0 && len(pr.Rules.DNS) > 0 {
			v.fail(pp+".rules", "multiple L7 protocol rule types specified in single rule")
		}
		if hasDNS && len(pr.Ports) == 0 {
			v.fail(pp+".rules.dns", "port 53 must be specified for DNS rules")
		}
		for j, h := range pr.Rules.httpRules() {
			hp := fmt.Sprintf("%s.rules.http[%d]", pp, j)
			if _, err := regexp.Compile(h.Path); err != nil {
				v.fail(hp+".path", "%v", err)
			}
			if _, err := regexp.Compile(h.Method); err != nil {
				v.fail(hp+".method", "%v", err)
			}
		}
		for j, d := range pr.Rules.dnsRules() {
			dp := fmt.Sprintf("%s.rules.dns[%d]", pp, j)
			if d.MatchName != "" && !fqdnNameChars.MatchString(d.MatchName) {
				v.fail(dp+".matchName", "invalid characters in %q: only 0-9, a-z, A-Z and ., - are allowed", d.MatchName)
			}
			v.fqdnPattern(d.MatchPattern, dp+".matchPattern")
		}
		for j, port := range pr.Ports {
			portPath := fmt.Sprintf("%s.ports[%d]", pp, j)
			if !portProtocolValid(port.Protocol) {
				v.fail(portPath+".protocol", "invalid protocol %q, must be { tcp | udp | sctp | vrrp | igmp | gre | ipip | ipv6 | esp | ah | any }", port.Protocol)
			}
			if extendedProtocol(port.Protocol) && (port.Port != 0 || port.Name != "") {
				v.fail(portPath+".port", "port must be empty or 0 for protocol %s", port.Protocol)
			}
			if port.Name != "" && !isSvcName(port.Name) {
				v.fail(portPath+".port", "invalid port name %q", port.Name)
			}
			if hasDNS && port.Name == "" && port.EndPort > port.Port {
				v.fail(portPath+".endPort", "DNS rules do not support port ranges")
			}
			if hasL7 && !hasDNS && port.Protocol != nodeplane.ProtoTCP {
				v.fail(portPath+".protocol", "L7 rules can only apply to TCP (not %s) except for DNS rules", port.Protocol)
			}
			if hasL7 && port.Name == "" && port.Port == 0 {
				v.fail(portPath+".port", "L7 rules can not be used when a port is 0")
			}
		}
	}
}

func (r *L7Rules) httpRules() []HTTPRule {
	if r == nil {
		return nil
	}
	return r.HTTP
}

func (r *L7Rules) dnsRules() []DNSRule {
	if r == nil {
		return nil
	}
	return r.DNS
}
