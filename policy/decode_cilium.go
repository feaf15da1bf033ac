package policy

import (
	"net/netip"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// This file decodes the spec of cilium.io/v2 policies (pkg/policy/api in
// Cilium) into the rule model. Type and syntax errors are reported here;
// the semantic checks of Cilium's Rule.Sanitize are in validate.go.

func (d *docDecoder) rule(n *yaml.Node, path string) Rule {
	var r Rule
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"endpointSelector": func(v *yaml.Node, p string) { r.EndpointSelector = d.selectorPtr(v, p) },
		"nodeSelector":     func(v *yaml.Node, p string) { r.NodeSelector = d.selectorPtr(v, p) },
		"ingress": func(v *yaml.Node, p string) {
			d.list(v, p, func(item *yaml.Node, ip string) { r.Ingress = append(r.Ingress, d.ingressRule(item, ip, false)) })
		},
		"ingressDeny": func(v *yaml.Node, p string) {
			d.list(v, p, func(item *yaml.Node, ip string) { r.IngressDeny = append(r.IngressDeny, d.ingressRule(item, ip, true)) })
		},
		"egress": func(v *yaml.Node, p string) {
			d.list(v, p, func(item *yaml.Node, ip string) { r.Egress = append(r.Egress, d.egressRule(item, ip, false)) })
		},
		"egressDeny": func(v *yaml.Node, p string) {
			d.list(v, p, func(item *yaml.Node, ip string) { r.EgressDeny = append(r.EgressDeny, d.egressRule(item, ip, true)) })
		},
		"labels": func(v *yaml.Node, p string) { r.Labels = d.ruleLabels(v, p) },
		"enableDefaultDeny": func(v *yaml.Node, p string) {
			d.fields(v, p, map[string]func(*yaml.Node, string){
				"ingress": func(v *yaml.Node, p string) { r.EnableDefaultDeny.Ingress, _ = d.boolean(v, p) },
				"egress":  func(v *yaml.Node, p string) { r.EnableDefaultDeny.Egress, _ = d.boolean(v, p) },
			})
		},
		"description": func(v *yaml.Node, p string) { r.Description, _ = d.str(v, p) },
		// Hubble log tagging has no effect on verdicts.
		"log": func(v *yaml.Node, p string) {
			d.fields(v, p, map[string]func(*yaml.Node, string){"value": func(v *yaml.Node, p string) { d.str(v, p) }})
		},
	})
	return r
}

// selectorPtr decodes a label selector that may be absent (null).
func (d *docDecoder) selectorPtr(n *yaml.Node, path string) *identity.LabelSelector {
	if !d.present(n) {
		return nil
	}
	s := d.selector(n, path)
	return &s
}

// selector decodes a Kubernetes label selector. Its keys keep whatever
// source prefix they were written with.
func (d *docDecoder) selector(n *yaml.Node, path string) identity.LabelSelector {
	var s identity.LabelSelector
	n, ok := d.resolve(n)
	if !ok {
		return s
	}
	if isNull(n) {
		// "- null" in a selector list is an empty selector to Go's JSON
		// decoder, which is what Cilium reads it with.
		return s
	}
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"matchLabels": func(v *yaml.Node, p string) { s.MatchLabels = d.stringMap(v, p) },
		"matchExpressions": func(v *yaml.Node, p string) {
			d.list(v, p, func(item *yaml.Node, ip string) {
				var req identity.SelectorRequirement
				d.fields(item, ip, map[string]func(*yaml.Node, string){
					"key": func(v *yaml.Node, p string) { req.Key, _ = d.str(v, p) },
					"operator": func(v *yaml.Node, p string) {
						op, _ := d.str(v, p)
						req.Operator = identity.SelectorOperator(op)
					},
					"values": func(v *yaml.Node, p string) {
						d.list(v, p, func(val *yaml.Node, vp string) {
							s, _ := d.str(val, vp)
							req.Values = append(req.Values, s)
						})
					},
				})
				s.MatchExpressions = append(s.MatchExpressions, req)
			})
		},
	})
	return s
}

// selectorList decodes a list of selectors, keeping an empty list
// distinct from an absent one.
func (d *docDecoder) selectorList(n *yaml.Node, path string) []identity.LabelSelector {
	if !d.present(n) {
		return nil
	}
	out := []identity.LabelSelector{}
	d.list(n, path, func(item *yaml.Node, ip string) { out = append(out, d.selector(item, ip)) })
	return out
}

func (d *docDecoder) ingressRule(n *yaml.Node, path string, deny bool) IngressRule {
	var r IngressRule
	r.Origin = path
	handlers := map[string]func(*yaml.Node, string){
		"fromEndpoints": func(v *yaml.Node, p string) { r.FromEndpoints = d.selectorList(v, p) },
		"fromNodes":     func(v *yaml.Node, p string) { r.FromNodes = d.selectorList(v, p) },
		"fromEntities":  func(v *yaml.Node, p string) { r.FromEntities = d.entities(v, p) },
		"fromCIDR":      func(v *yaml.Node, p string) { r.FromCIDR = d.cidrs(v, p) },
		"fromCIDRSet":   func(v *yaml.Node, p string) { r.FromCIDRSet = d.cidrSet(v, p) },
		"fromRequires":  d.deprecatedRequires,
		"fromGroups":    d.unsupported("cloud-provider groups"),
		"toPorts":       func(v *yaml.Node, p string) { r.ToPorts = d.portRules(v, p, deny) },
		"icmps":         func(v *yaml.Node, p string) { r.ICMPs = d.icmpRules(v, p) },
	}
	if !deny {
		handlers["authentication"] = d.authentication
	}
	d.fields(n, path, handlers)
	return r
}

func (d *docDecoder) egressRule(n *yaml.Node, path string, deny bool) EgressRule {
	var r EgressRule
	r.Origin = path
	handlers := map[string]func(*yaml.Node, string){
		"toEndpoints": func(v *yaml.Node, p string) { r.ToEndpoints = d.selectorList(v, p) },
		"toNodes":     func(v *yaml.Node, p string) { r.ToNodes = d.selectorList(v, p) },
		"toEntities":  func(v *yaml.Node, p string) { r.ToEntities = d.entities(v, p) },
		"toCIDR":      func(v *yaml.Node, p string) { r.ToCIDR = d.cidrs(v, p) },
		"toCIDRSet":   func(v *yaml.Node, p string) { r.ToCIDRSet = d.cidrSet(v, p) },
		"toRequires":  d.deprecatedRequires,
		"toServices":  d.unsupported("toServices (service selection)"),
		"toGroups":    d.unsupported("cloud-provider groups"),
		"toPorts":     func(v *yaml.Node, p string) { r.ToPorts = d.portRules(v, p, deny) },
		"icmps":       func(v *yaml.Node, p string) { r.ICMPs = d.icmpRules(v, p) },
	}
	if !deny {
		handlers["authentication"] = d.authentication
		handlers["toFQDNs"] = func(v *yaml.Node, p string) {
			if !d.present(v) {
				return
			}
			r.ToFQDNs = []FQDNSelector{}
			d.list(v, p, func(item *yaml.Node, ip string) {
				var f FQDNSelector
				d.fields(item, ip, map[string]func(*yaml.Node, string){
					"matchName":    func(v *yaml.Node, p string) { f.MatchName, _ = d.str(v, p) },
					"matchPattern": func(v *yaml.Node, p string) { f.MatchPattern, _ = d.str(v, p) },
				})
				r.ToFQDNs = append(r.ToFQDNs, f)
			})
		}
	}
	d.fields(n, path, handlers)
	return r
}

func (d *docDecoder) deprecatedRequires(v *yaml.Node, p string) {
	v, ok := d.resolve(v)
	if !ok || isNull(v) || v.Kind == yaml.SequenceNode && len(v.Content) == 0 {
		return
	}
	d.fail(v, p, "deprecated and no longer supported by Cilium (the CRD allows no items)")
}

func (d *docDecoder) unsupported(what string) func(*yaml.Node, string) {
	return func(v *yaml.Node, p string) {
		if !d.present(v) {
			return
		}
		d.fail(v, p, "%s is not supported by this implementation", what)
	}
}

// authentication decodes a rule's authentication requirement. Mode
// "disabled" is what a rule without one means; the modes that require
// authentication are not enforced, so they are rejected (unsupported.go).
func (d *docDecoder) authentication(v *yaml.Node, p string) {
	if !d.present(v) {
		return
	}
	if rv, ok := d.resolve(v); ok && rv.Kind == yaml.MappingNode && fieldNode(rv, "mode") == nil {
		// The CRD requires it: an authentication block without a mode
		// asks for something it does not name.
		d.fail(v, p+".mode", "mode must be specified (disabled, required or test-always-fail)")
	}
	d.fields(v, p, map[string]func(*yaml.Node, string){
		"mode": func(v *yaml.Node, p string) {
			m, ok := d.str(v, p)
			switch {
			case !ok, m == "disabled":
			case m == "required" || m == "test-always-fail":
				d.fail(v, p, reasonAuth, m)
			default:
				d.fail(v, p, "unsupported value %q: want disabled, required or test-always-fail", m)
			}
		},
	})
}

func (d *docDecoder) entities(n *yaml.Node, path string) []Entity {
	if !d.present(n) {
		return nil
	}
	out := []Entity{}
	d.list(n, path, func(item *yaml.Node, ip string) {
		s, ok := d.str(item, ip)
		if ok {
			out = append(out, Entity(s))
		}
	})
	return out
}

// cidrs decodes fromCIDR/toCIDR: prefixes, or bare addresses meaning a
// single host, as Cilium's CIDR.sanitize accepts them.
func (d *docDecoder) cidrs(n *yaml.Node, path string) []netip.Prefix {
	if !d.present(n) {
		return nil
	}
	out := []netip.Prefix{}
	d.list(n, path, func(item *yaml.Node, ip string) {
		s, ok := d.str(item, ip)
		if !ok {
			return
		}
		if s == "" {
			d.fail(item, ip, "IP must be specified")
			return
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil || a.Zone() != "" {
				d.fail(item, ip, "unable to parse CIDR %q: %s", s, strings.TrimPrefix(err.Error(), "netip.ParsePrefix("+strconv.Quote(s)+"): "))
				return
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p)
	})
	return out
}

func (d *docDecoder) cidrSet(n *yaml.Node, path string) []CIDRRule {
	if !d.present(n) {
		return nil
	}
	out := []CIDRRule{}
	d.list(n, path, func(item *yaml.Node, ip string) {
		var r CIDRRule
		var haveCIDR bool
		d.fields(item, ip, map[string]func(*yaml.Node, string){
			"cidr": func(v *yaml.Node, p string) {
				s, ok := d.str(v, p)
				if !ok || s == "" {
					return
				}
				haveCIDR = true
				// Unlike fromCIDR, a CIDR set needs prefix notation.
				pfx, err := netip.ParsePrefix(s)
				if err != nil {
					d.fail(v, p, "unable to parse CIDRRule %q: want address/length", s)
					return
				}
				r.CIDR = pfx
			},
			"except": func(v *yaml.Node, p string) {
				d.list(v, p, func(e *yaml.Node, ep string) {
					s, ok := d.str(e, ep)
					if !ok {
						return
					}
					pfx, err := netip.ParsePrefix(s)
					if err != nil {
						d.fail(e, ep, "unable to parse except CIDR %q: want address/length", s)
						return
					}
					r.Except = append(r.Except, pfx)
				})
			},
			"cidrGroupRef":      d.unsupported("CIDR groups (cidrGroupRef)"),
			"cidrGroupSelector": d.unsupported("CIDR groups (cidrGroupSelector)"),
		})
		if !haveCIDR && fieldNode(item, "cidrGroupRef") == nil && fieldNode(item, "cidrGroupSelector") == nil {
			d.fail(item, ip+".cidr", "one of cidr, cidrGroupRef, or cidrGroupSelector is required")
		}
		out = append(out, r)
	})
	return out
}

func (d *docDecoder) portRules(n *yaml.Node, path string, deny bool) []PortRule {
	if !d.present(n) {
		return nil
	}
	out := []PortRule{}
	d.list(n, path, func(item *yaml.Node, ip string) {
		var pr PortRule
		handlers := map[string]func(*yaml.Node, string){
			"ports": func(v *yaml.Node, p string) {
				if !d.present(v) {
					return
				}
				pr.Ports = []PortProtocol{}
				d.list(v, p, func(pp *yaml.Node, ppath string) {
					pr.Ports = append(pr.Ports, d.portProtocol(pp, ppath))
				})
			},
		}
		if !deny {
			handlers["rules"] = func(v *yaml.Node, p string) { pr.Rules = d.l7Rules(v, p) }
			handlers["terminatingTLS"] = d.unsupported("TLS termination")
			handlers["originatingTLS"] = d.unsupported("TLS origination")
			handlers["serverNames"] = d.unsupported("TLS server names")
			handlers["listener"] = d.unsupported("Envoy listeners")
		}
		d.fields(item, ip, handlers)
		out = append(out, pr)
	})
	return out
}

// portProtocol decodes one port entry. The port is a number, a range
// start, or an IANA service name (a named port), read as Cilium reads it:
// service names first, then strconv.ParseUint with base prefixes.
func (d *docDecoder) portProtocol(n *yaml.Node, path string) PortProtocol {
	var pp PortProtocol
	var portGiven bool
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"port": func(v *yaml.Node, p string) {
			// The CRD types port as a string: an unquoted number is an
			// error for the API server and for Cilium's decoder alike.
			if rv, ok := d.resolve(v); ok && rv.Kind == yaml.ScalarNode && rv.Tag == "!!int" {
				d.fail(v, p, "must be a string, not a number; quote it: port: %q", rv.Value)
				return
			}
			s, ok := d.str(v, p)
			if !ok {
				return
			}
			portGiven = s != ""
			if s == "" {
				return
			}
			if isSvcName(s) {
				pp.Name = strings.ToLower(s)
				return
			}
			port, err := strconv.ParseUint(s, 0, 16)
			if err != nil {
				d.fail(v, p, "unable to parse port %q: want a number 0-65535 or a port name", s)
				return
			}
			pp.Port = uint16(port)
		},
		"endPort": func(v *yaml.Node, p string) {
			e, ok := d.integer(v, p, 0, 65535)
			if ok {
				pp.EndPort = uint16(e)
			}
		},
		"protocol": func(v *yaml.Node, p string) {
			s, ok := d.str(v, p)
			if !ok {
				return
			}
			proto, err := nodeplane.ParseProtocol(s)
			if err != nil || !portProtocolValid(proto) || s != "" && strings.Trim(s, "0123456789") == "" {
				d.fail(v, p, "invalid protocol %q, must be { tcp | udp | sctp | vrrp | igmp | gre | ipip | ipv6 | esp | ah | any }", s)
				return
			}
			pp.Protocol = proto
		},
	})
	if !portGiven {
		d.fail(n, path+".port", "port must be specified")
	}
	return pp
}

// isSvcName is IANA's service-name syntax as Cilium checks it: 1-15
// characters of letters, digits and single inner hyphens, with at least
// one letter.
func isSvcName(s string) bool {
	if len(s) == 0 || len(s) > 15 {
		return false
	}
	letter := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			letter = true
		case c >= '0' && c <= '9':
		case c == '-':
			if i == 0 || i == len(s)-1 || s[i-1] == '-' {
				return false
			}
		default:
			return false
		}
	}
	return letter
}

func (d *docDecoder) l7Rules(n *yaml.Node, path string) *L7Rules {
	if !d.present(n) {
		return nil
	}
	r := &L7Rules{}
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"http": func(v *yaml.Node, p string) {
			if d.present(v) {
				// An empty list is still an HTTP rule set (Cilium's
				// L7Rules.IsEmpty tests for nil): it redirects to a proxy.
				r.HTTP = []HTTPRule{}
			}
			d.list(v, p, func(item *yaml.Node, ip string) {
				var h HTTPRule
				d.fields(item, ip, map[string]func(*yaml.Node, string){
					"method": func(v *yaml.Node, p string) { h.Method, _ = d.str(v, p) },
					"path":   func(v *yaml.Node, p string) { h.Path, _ = d.str(v, p) },
					"host":   func(v *yaml.Node, p string) { h.Host, _ = d.str(v, p) },
					"headers": func(v *yaml.Node, p string) {
						d.list(v, p, func(hv *yaml.Node, hp string) {
							s, _ := d.str(hv, hp)
							h.Headers = append(h.Headers, s)
						})
					},
					"headerMatches": func(v *yaml.Node, p string) {
						d.list(v, p, func(mv *yaml.Node, mp string) {
							var m HeaderMatch
							d.fields(mv, mp, map[string]func(*yaml.Node, string){
								"mismatch": func(v *yaml.Node, p string) { m.Mismatch, _ = d.str(v, p) },
								"name":     func(v *yaml.Node, p string) { m.Name, _ = d.str(v, p) },
								"value":    func(v *yaml.Node, p string) { m.Value, _ = d.str(v, p) },
								"secret": func(v *yaml.Node, p string) {
									if !d.present(v) {
										return
									}
									m.Secret = &Secret{}
									d.fields(v, p, map[string]func(*yaml.Node, string){
										"namespace": func(v *yaml.Node, p string) { m.Secret.Namespace, _ = d.str(v, p) },
										"name":      func(v *yaml.Node, p string) { m.Secret.Name, _ = d.str(v, p) },
									})
								},
							})
							h.HeaderMatches = append(h.HeaderMatches, m)
						})
					},
				})
				r.HTTP = append(r.HTTP, h)
			})
		},
		"dns": func(v *yaml.Node, p string) {
			if d.present(v) {
				r.DNS = []DNSRule{}
			}
			d.list(v, p, func(item *yaml.Node, ip string) {
				var dr DNSRule
				d.fields(item, ip, map[string]func(*yaml.Node, string){
					"matchName":    func(v *yaml.Node, p string) { dr.MatchName, _ = d.str(v, p) },
					"matchPattern": func(v *yaml.Node, p string) { dr.MatchPattern, _ = d.str(v, p) },
				})
				r.DNS = append(r.DNS, dr)
			})
		},
		"kafka":   d.notSupportedYet(reasonKafka),
		"l7proto": d.notSupportedYet(reasonGenericL7),
		"l7":      d.notSupportedYet(reasonGenericL7),
	})
	return r
}

// icmpRules decodes icmps: each field has a family (IPv4, the default, or
// IPv6) and a type given as a number 0-255 or one of the family's type
// names.
func (d *docDecoder) icmpRules(n *yaml.Node, path string) []ICMPRule {
	if !d.present(n) {
		return nil
	}
	out := []ICMPRule{}
	d.list(n, path, func(item *yaml.Node, ip string) {
		var r ICMPRule
		d.fields(item, ip, map[string]func(*yaml.Node, string){
			"fields": func(v *yaml.Node, p string) {
				d.list(v, p, func(fn *yaml.Node, fp string) {
					var f ICMPField
					var typeNode *yaml.Node
					var family string
					d.fields(fn, fp, map[string]func(*yaml.Node, string){
						"family": func(v *yaml.Node, p string) {
							family, _ = d.str(v, p)
							switch family {
							case "", "IPv4":
							case "IPv6":
								f.IPv6 = true
							default:
								d.fail(v, p, "wrong family: %s (want IPv4 or IPv6)", family)
							}
						},
						"type": func(v *yaml.Node, p string) { typeNode = v },
					})
					if typeNode == nil {
						d.fail(fn, fp+".type", "ICMP type must be specified")
					} else {
						f.Type = d.icmpType(typeNode, fp+".type", f.IPv6)
					}
					r.Fields = append(r.Fields, f)
				})
			},
		})
		out = append(out, r)
	})
	return out
}

func (d *docDecoder) icmpType(n *yaml.Node, path string, v6 bool) uint8 {
	s, ok := d.strOrNumber(n, path)
	if !ok {
		return 0
	}
	if t, err := strconv.ParseUint(s, 10, 8); err == nil {
		return uint8(t)
	}
	names, family := icmpV4Types, "IPv4"
	if v6 {
		names, family = icmpV6Types, "IPv6"
	}
	if t, ok := names[s]; ok {
		return t
	}
	d.fail(n, path, "ICMP type %s not found in %s (want 0-255 or a type name)", s, family)
	return 0
}

var icmpV4Types = map[string]uint8{
	"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
	"RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
	"Timestamp": 13, "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42,
	"ExtendedEchoReply": 43,
}

var icmpV6Types = map[string]uint8{
	"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
	"EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130,
	"MulticastListenerReport": 131, "MulticastListenerDone": 132, "RouterSolicitation": 133,
	"RouterAdvertisement": 134, "NeighborSolicitation": 135, "NeighborAdvertisement": 136,
	"RedirectMessage": 137, "RouterRenumbering": 138, "ICMPNodeInformationQuery": 139,
	"ICMPNodeInformationResponse": 140, "InverseNeighborDiscoverySolicitation": 141,
	"InverseNeighborDiscoveryAdvertisement": 142, "HomeAgentAddressDiscoveryRequest": 144,
	"HomeAgentAddressDiscoveryReply": 145, "MobilePrefixSolicitation": 146,
	"MobilePrefixAdvertisement": 147, "DuplicateAddressRequestCodeSuffix": 157,
	"DuplicateAddressConfirmationCodeSuffix": 158, "ExtendedEchoRequest": 160,
	"ExtendedEchoReply": 161,
}

// ruleLabels decodes a rule's labels: a list of "source:key=value"
// strings or {key, value, source} objects, as Cilium's LabelArray reads.
func (d *docDecoder) ruleLabels(n *yaml.Node, path string) identity.Labels {
	var ls []identity.Label
	d.list(n, path, func(item *yaml.Node, ip string) {
		item, ok := d.resolve(item)
		if !ok {
			return
		}
		var l identity.Label
		if item.Kind == yaml.ScalarNode {
			s, ok := d.str(item, ip)
			if !ok {
				return
			}
			var err error
			if l, err = identity.ParseLabel(s); err != nil {
				d.fail(item, ip, "%v", err)
				return
			}
		} else {
			d.fields(item, ip, map[string]func(*yaml.Node, string){
				"key":    func(v *yaml.Node, p string) { l.Key, _ = d.str(v, p) },
				"value":  func(v *yaml.Node, p string) { l.Value, _ = d.str(v, p) },
				"source": func(v *yaml.Node, p string) { l.Source, _ = d.str(v, p) },
			})
			if l.Source == "" {
				l.Source = identity.SourceUnspec
			}
		}
		ls = append(ls, l)
	})
	labels, err := identity.NewLabels(ls...)
	if err != nil {
		d.fail(n, path, "%v", err)
	}
	return labels
}
