package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// This file reads networking.k8s.io/v1 NetworkPolicy objects, checks them
// as the Kubernetes API server would, and translates them into rules of
// this package's model exactly as Cilium's ParseNetworkPolicy translates
// them (pkg/k8s/network_policy.go):
//
//   - the pod selector becomes the endpoint selector, with k8s: sources;
//   - each peer of a rule becomes its own rule item with the rule's ports;
//     a pod selector alone is scoped to the policy's namespace, a namespace
//     selector's keys get the io.cilium.k8s.namespace.labels prefix (an
//     empty one requires only that a namespace label exist), and an ipBlock
//     becomes a CIDR set with its except list;
//   - a rule without peers allows every peer (on its ports, if any);
//   - ports default to TCP, a missing port means every port;
//   - the policy is default-deny for ingress when it has no ingress rules
//     and policyTypes lists Ingress or does not list Egress, and for egress
//     when it has no egress rules and policyTypes lists Egress.
//
// The cluster-name requirement Cilium adds to peer selectors is added when
// rules are resolved, as for every namespaced policy.

type knpPeer struct {
	pod, ns *identity.LabelSelector
	ipBlock *CIDRRule
	path    string
}

type knpPort struct {
	pp   PortProtocol
	path string
}

func (d *docDecoder) networkPolicySpec(n *yaml.Node, path, namespace string) []Rule {
	var (
		podSelector  *identity.LabelSelector
		policyTypes  []string
		ingress      [][]knpPeer
		ingressPorts [][]knpPort
		egress       [][]knpPeer
		egressPorts  [][]knpPort
		ingressPaths []string
		egressPaths  []string
	)
	rule := func(v *yaml.Node, p, peerField string, peers *[][]knpPeer, ports *[][]knpPort, paths *[]string) {
		d.list(v, p, func(item *yaml.Node, ip string) {
			var rp []knpPeer
			var rports []knpPort
			d.fields(item, ip, map[string]func(*yaml.Node, string){
				peerField: func(v *yaml.Node, p string) {
					d.list(v, p, func(peer *yaml.Node, pp string) { rp = append(rp, d.knpPeer(peer, pp)) })
				},
				"ports": func(v *yaml.Node, p string) {
					d.list(v, p, func(port *yaml.Node, pp string) {
						rports = append(rports, knpPort{d.knpPort(port, pp), pp})
					})
				},
			})
			*peers = append(*peers, rp)
			*ports = append(*ports, rports)
			*paths = append(*paths, ip)
		})
	}
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"podSelector": func(v *yaml.Node, p string) {
			if d.present(v) {
				s := d.knpSelector(v, p)
				podSelector = &s
			}
		},
		"policyTypes": func(v *yaml.Node, p string) {
			d.list(v, p, func(item *yaml.Node, ip string) {
				s, ok := d.str(item, ip)
				if !ok {
					return
				}
				if s != "Ingress" && s != "Egress" {
					d.fail(item, ip, "unsupported value %q: supported values: \"Ingress\", \"Egress\"", s)
				}
				policyTypes = append(policyTypes, s)
			})
		},
		"ingress": func(v *yaml.Node, p string) { rule(v, p, "from", &ingress, &ingressPorts, &ingressPaths) },
		"egress":  func(v *yaml.Node, p string) { rule(v, p, "to", &egress, &egressPorts, &egressPaths) },
	})
	if podSelector == nil {
		// podSelector is required by the API; {} selects every pod.
		if fieldNode(n, "podSelector") == nil {
			d.fail(n, joinPath(path, "podSelector"), "required (use {} to select every pod)")
		}
		podSelector = &identity.LabelSelector{}
	}

	hasType := func(t string) bool {
		for _, pt := range policyTypes {
			if pt == t {
				return true
			}
		}
		return false
	}

	r := Rule{EndpointSelector: k8sSourced(podSelector)}
	yes := true
	r.EnableDefaultDeny = DefaultDenyConfig{Ingress: &yes, Egress: &yes}
	for i, peers := range ingress {
		ports := translateKNPPorts(ingressPorts[i])
		if len(peers) == 0 {
			item := IngressRule{ToPorts: ports, Origin: ingressPaths[i] + " (no from: every source)"}
			if len(ports) == 0 {
				item.FromEntities = []Entity{EntityAll}
			}
			r.Ingress = append(r.Ingress, item)
			continue
		}
		for _, peer := range peers {
			item := IngressRule{ToPorts: ports, Origin: peer.path}
			switch {
			case peer.ipBlock != nil:
				item.FromCIDRSet = []CIDRRule{*peer.ipBlock}
			default:
				item.FromEndpoints = []identity.LabelSelector{knpPeerSelector(peer, namespace)}
			}
			r.Ingress = append(r.Ingress, item)
		}
	}
	for i, peers := range egress {
		ports := translateKNPPorts(egressPorts[i])
		if len(peers) == 0 {
			item := EgressRule{ToPorts: ports, Origin: egressPaths[i] + " (no to: every destination)"}
			if len(ports) == 0 {
				item.ToEntities = []Entity{EntityAll}
			}
			r.Egress = append(r.Egress, item)
			continue
		}
		for _, peer := range peers {
			item := EgressRule{ToPorts: ports, Origin: peer.path}
			switch {
			case peer.ipBlock != nil:
				item.ToCIDRSet = []CIDRRule{*peer.ipBlock}
			default:
				item.ToEndpoints = []identity.LabelSelector{knpPeerSelector(peer, namespace)}
			}
			r.Egress = append(r.Egress, item)
		}
	}
	if len(r.Ingress) == 0 && (hasType("Ingress") || !hasType("Egress")) {
		// An item that selects no peer: the direction is default-deny
		// and nothing is allowed.
		r.Ingress = []IngressRule{{FromEndpoints: []identity.LabelSelector{},
			Origin: joinPath(path, "policyTypes") + " (Ingress without rules: deny all ingress)"}}
	}
	if len(r.Egress) == 0 && hasType("Egress") {
		r.Egress = []EgressRule{{ToEndpoints: []identity.LabelSelector{},
			Origin: joinPath(path, "policyTypes") + " (Egress without rules: deny all egress)"}}
	}
	return []Rule{r}
}

// knpPeerSelector builds the endpoint selector of a pod/namespace peer.
func knpPeerSelector(peer knpPeer, namespace string) identity.LabelSelector {
	pod := identity.LabelSelector{}
	if peer.pod != nil {
		pod = *k8sSourced(peer.pod)
	}
	if peer.ns == nil {
		// A pod selector alone selects pods of the policy's namespace.
		pod.MatchLabels = cloneMap(pod.MatchLabels)
		pod.MatchLabels[identity.SourceK8s+":"+LabelPodNamespace] = namespace
		return pod
	}
	// Namespace labels are pod labels with Cilium's prefix.
	ns := identity.LabelSelector{}
	for k, v := range peer.ns.MatchLabels {
		if ns.MatchLabels == nil {
			ns.MatchLabels = map[string]string{}
		}
		ns.MatchLabels[identity.SourceK8s+":"+LabelNamespaceLabelsPrefix+"."+k] = v
	}
	for _, e := range peer.ns.MatchExpressions {
		e.Key = identity.SourceK8s + ":" + LabelNamespaceLabelsPrefix + "." + e.Key
		ns.MatchExpressions = append(ns.MatchExpressions, e)
	}
	if len(ns.MatchLabels) == 0 && len(ns.MatchExpressions) == 0 {
		// An empty namespace selector selects every namespace: the pod
		// must have a namespace.
		ns.MatchExpressions = []identity.SelectorRequirement{{
			Key: identity.SourceK8s + ":" + LabelPodNamespace, Operator: identity.SelectorOpExists,
		}}
	}
	// Merge: pod requirements after namespace requirements, as Cilium's
	// NewESFromK8sLabelSelector(namespaceSelector, podSelector) does.
	for k, v := range pod.MatchLabels {
		if ns.MatchLabels == nil {
			ns.MatchLabels = map[string]string{}
		}
		ns.MatchLabels[k] = v
	}
	ns.MatchExpressions = append(ns.MatchExpressions, pod.MatchExpressions...)
	return ns
}

// k8sSourced returns a copy of s with every key given the k8s: source, as
// Cilium reads NetworkPolicy selectors.
func k8sSourced(s *identity.LabelSelector) *identity.LabelSelector {
	out := &identity.LabelSelector{}
	if s.MatchLabels != nil {
		out.MatchLabels = make(map[string]string, len(s.MatchLabels))
		for k, v := range s.MatchLabels {
			out.MatchLabels[identity.SourceK8s+":"+k] = v
		}
	}
	for _, e := range s.MatchExpressions {
		e.Key = identity.SourceK8s + ":" + e.Key
		e.Values = append([]string(nil), e.Values...)
		out.MatchExpressions = append(out.MatchExpressions, e)
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

func translateKNPPorts(ports []knpPort) []PortRule {
	if len(ports) == 0 {
		return nil
	}
	out := make([]PortRule, 0, len(ports))
	for _, p := range ports {
		out = append(out, PortRule{Ports: []PortProtocol{p.pp}})
	}
	return out
}

func (d *docDecoder) knpPeer(n *yaml.Node, path string) knpPeer {
	p := knpPeer{path: path}
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"podSelector": func(v *yaml.Node, fp string) {
			if d.present(v) {
				s := d.knpSelector(v, fp)
				p.pod = &s
			}
		},
		"namespaceSelector": func(v *yaml.Node, fp string) {
			if d.present(v) {
				s := d.knpSelector(v, fp)
				p.ns = &s
			}
		},
		"ipBlock": func(v *yaml.Node, fp string) {
			if !d.present(v) {
				return
			}
			var b CIDRRule
			d.fields(v, fp, map[string]func(*yaml.Node, string){
				"cidr": func(v *yaml.Node, cp string) {
					s, ok := d.str(v, cp)
					if !ok {
						return
					}
					pfx, err := netip.ParsePrefix(s)
					if err != nil {
						d.fail(v, cp, "must be a valid CIDR, e.g. 10.0.0.0/8 (got %q)", s)
						return
					}
					b.CIDR = pfx
				},
				"except": func(v *yaml.Node, ep string) {
					d.list(v, ep, func(e *yaml.Node, eip string) {
						s, ok := d.str(e, eip)
						if !ok {
							return
						}
						pfx, err := netip.ParsePrefix(s)
						if err != nil {
							d.fail(e, eip, "must be a valid CIDR (got %q)", s)
							return
						}
						b.Except = append(b.Except, pfx)
					})
				},
			})
			if !b.CIDR.IsValid() {
				if fieldNode(v, "cidr") == nil {
					d.fail(v, fp+".cidr", "required")
				}
			} else {
				for i, e := range b.Except {
					// The API server wants every except strictly inside
					// the block.
					if e.Addr().Is4() != b.CIDR.Addr().Is4() || e.Bits() <= b.CIDR.Bits() || !b.CIDR.Contains(e.Addr()) {
						d.fail(v, fmt.Sprintf("%s.except[%d]", fp, i), "must be a strict subset of `cidr` %s (got %s)", b.CIDR, e)
					}
				}
			}
			p.ipBlock = &b
		},
	})
	switch {
	case p.ipBlock != nil && (p.pod != nil || p.ns != nil):
		d.fail(n, path, "may not specify both ipBlock and another peer")
	case p.ipBlock == nil && p.pod == nil && p.ns == nil:
		d.fail(n, path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
	}
	return p
}

// knpSelector decodes a Kubernetes label selector and checks that its keys
// are plain Kubernetes label keys (no Cilium source prefix).
func (d *docDecoder) knpSelector(n *yaml.Node, path string) identity.LabelSelector {
	s := d.selector(n, path)
	if _, err := identity.NewSelector(s); err != nil {
		for _, e := range flatten(err) {
			var se *identity.SelectorError
			if errors.As(e, &se) {
				d.fail(n, path+"."+se.Field, "invalid value %q: %s", se.Value, se.Reason)
			} else {
				d.fail(n, path, "%v", e)
			}
		}
	}
	for k := range s.MatchLabels {
		if strings.Contains(k, ":") {
			d.fail(n, fmt.Sprintf("%s.matchLabels[%s]", path, k), "a Kubernetes label key cannot contain ':'")
		}
	}
	for i, e := range s.MatchExpressions {
		if strings.Contains(e.Key, ":") {
			d.fail(n, fmt.Sprintf("%s.matchExpressions[%d].key", path, i), "a Kubernetes label key cannot contain ':'")
		}
	}
	return s
}

// knpPort decodes a NetworkPolicyPort: protocol (TCP default, UDP, SCTP),
// port (number or name; absent means every port) and endPort (only with a
// numeric port, not below it).
func (d *docDecoder) knpPort(n *yaml.Node, path string) PortProtocol {
	pp := PortProtocol{Protocol: nodeplane.ProtoTCP}
	var endGiven bool
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"protocol": func(v *yaml.Node, p string) {
			s, ok := d.str(v, p)
			if !ok {
				return
			}
			switch s {
			case "TCP":
				pp.Protocol = nodeplane.ProtoTCP
			case "UDP":
				pp.Protocol = nodeplane.ProtoUDP
			case "SCTP":
				pp.Protocol = nodeplane.ProtoSCTP
			default:
				d.fail(v, p, "unsupported value %q: supported values: \"SCTP\", \"TCP\", \"UDP\"", s)
			}
		},
		"port": func(v *yaml.Node, p string) {
			v, ok := d.resolve(v)
			if !ok || isNull(v) {
				return
			}
			if v.Kind == yaml.ScalarNode && v.Tag == "!!int" {
				port, err := strconv.ParseInt(v.Value, 10, 32)
				if err != nil || port < 1 || port > 65535 {
					d.fail(v, p, "must be between 1 and 65535, inclusive (got %s)", v.Value)
					return
				}
				pp.Port = uint16(port)
				return
			}
			s, ok := d.str(v, p)
			if !ok {
				return
			}
			if !isSvcName(s) || strings.ToLower(s) != s {
				d.fail(v, p, "invalid port name %q: must be an IANA service name (lowercase letters, digits and '-', at most 15, with a letter)", s)
				return
			}
			pp.Name = s
		},
		"endPort": func(v *yaml.Node, p string) {
			if !d.present(v) {
				return
			}
			e, ok := d.integer(v, p, 1, 65535)
			if ok {
				pp.EndPort = uint16(e)
				endGiven = true
			}
		},
	})
	if endGiven {
		switch {
		case pp.Name != "":
			d.fail(n, path+".endPort", "may not be specified when `port` is non-numeric")
		case pp.Port == 0:
			d.fail(n, path+".endPort", "may not be specified when `port` is not specified")
		case pp.EndPort < pp.Port:
			d.fail(n, path+".endPort", "must be greater than or equal to `port` (%d < %d)", pp.EndPort, pp.Port)
		}
	}
	return pp
}
