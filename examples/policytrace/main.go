// Command policytrace explains whether network policy allows a flow, the
// way Cilium decides it, and exits 0 if it does, 1 if it does not and 2 for
// bad input or an internal error (then it prints no verdict).
//
//	policytrace -policies ./policies \
//	    -from k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default \
//	    -to   k8s:app=db,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default \
//	    -dport 5432/TCP
//
// -policies is a YAML or JSON file, or a directory of them, holding
// CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy
// documents. Every file is validated first; any invalid document fails the
// run with exit 2 and a message naming the file, document and field path.
// So does a rule nodeplane cannot enforce yet (Kafka and generic L7 rules,
// mutual authentication, host policies; DNS rules and toFQDNs unless
// -dns-name or -to-fqdn is given): it is reported as "not supported yet"
// rather than traced as the wider L3/L4 rule it would become.
//
// HTTP rules (toPorts.rules.http) are traced as a node with nodeplane's
// HTTP proxy enforces them: a side whose entry redirects the flow to the
// proxy lists the HTTP rules that decide its requests. -http-method,
// -http-path (the request target, path and query), -http-host and
// -http-header (NAME:VALUE, repeatable) describe one request; with any of
// them the side also decides that request, naming the rule that allows it
// or, for each rule, the field that failed, and a denied request (403 from
// the proxy) makes the verdict DENIED (exit 1).
//
// toFQDNs and DNS rules need the DNS machinery (a DNS proxy feeding the
// policy engine), which -dns-name and -to-fqdn give the trace: -dns-name
// NAME traces a DNS query for NAME (a port with DNS rules redirects it to
// the DNS proxy, whose rules decide it; a name no rule allows is REFUSED,
// exit 1), and -to-fqdn NAME with -to-cidr ADDRESS traces a connection to
// an address that a DNS answer gave to NAME (toFQDNs selects it if a
// matchName or matchPattern matches NAME). Without either flag such
// policies are "not supported yet", as before.
//
// -from and -to are the labels Cilium gives the two sides, with their
// sources: a pod has k8s:<label> for each pod label,
// k8s:io.kubernetes.pod.namespace=<ns>, k8s:io.cilium.k8s.policy.cluster=<cluster>
// and k8s:io.cilium.k8s.namespace.labels.<key>=<value> for each label of its
// namespace; reserved:host, reserved:world and the other reserved labels
// name the reserved identities. -to-cidr (or -from-cidr) names a peer
// outside the cluster by address or prefix instead.
//
// Without -direction the verdict is for the whole path: the source's egress
// policy and the destination's ingress policy must both allow the flow.
// Policy only applies at sides that can be local endpoints (pods and the
// health, init and ingress identities); the world, CIDRs, remote nodes and
// the host are decided by the other side alone. -direction egress or
// ingress decides one side.
//
// A side that denies the flow because no rule allows it lists its near
// misses: for each allow rule item that selects the endpoint, the part
// that failed (the peer selector and its label requirement, such as the
// cluster name Cilium adds to peer selectors; the port; the protocol; a
// CIDR except).
//
// The verdict comes from the compiled policy map, looked up the way the
// datapath looks it up, and is cross-checked against a direct evaluation
// of the rules. Should the two disagree (a bug in the policy package),
// policytrace says so on stderr and exits 2 without a verdict.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/fqdn"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy"
)

// nominalDNSProxyPort is the DNS proxy port of the engine -dns-name and
// -to-fqdn build: only traces see it.
const nominalDNSProxyPort = 10053

// Exit codes.
const (
	exitAllowed  = 0
	exitDenied   = 1
	exitBadInput = 2
	// exitError is an internal inconsistency: the compiled policy map and
	// the rules disagree on the flow. It shares its code with bad input:
	// either way there is no verdict.
	exitError = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type namedPortsFlag []policy.NamedPort

func (f *namedPortsFlag) String() string { return fmt.Sprint(*f) }

type headersFlag map[string][]string

func (f headersFlag) String() string { return fmt.Sprint(map[string][]string(f)) }

func (f headersFlag) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return fmt.Errorf("want NAME:VALUE, got %q", s)
	}
	key := textproto.CanonicalMIMEHeaderKey(name)
	f[key] = append(f[key], strings.TrimSpace(value))
	return nil
}

// tracedHTTPProxyPort is the HTTP proxy port of the node policytrace
// simulates; only the trace's text shows it.
const tracedHTTPProxyPort = 15001

func (f *namedPortsFlag) Set(s string) error {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("want NAME=PORT[/PROTO], got %q", s)
	}
	port, proto, err := parsePort(rest)
	if err != nil {
		return err
	}
	*f = append(*f, policy.NamedPort{Name: strings.ToLower(name), Port: port, Protocol: proto})
	return nil
}

// tracer decides a flow; run uses [policy.Repository.Trace], tests
// substitute their own to reach paths no correct repository takes.
type tracer func(*policy.Repository, policy.TraceRequest) (*policy.TraceResult, error)

func run(args []string, stdout, stderr io.Writer) int {
	return runWith(args, stdout, stderr, (*policy.Repository).Trace)
}

func runWith(args []string, stdout, stderr io.Writer, trace tracer) int {
	fs := flag.NewFlagSet("policytrace", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		policiesPath = fs.String("policies", "", "policy `file or directory` (YAML or JSON)")
		from         = fs.String("from", "", "source `labels`, comma-separated (e.g. k8s:app=web,k8s:io.kubernetes.pod.namespace=prod)")
		to           = fs.String("to", "", "destination `labels`, comma-separated")
		fromCIDR     = fs.String("from-cidr", "", "source outside the cluster: an `address or prefix`")
		toCIDR       = fs.String("to-cidr", "", "destination outside the cluster: an `address or prefix`")
		dport        = fs.String("dport", "", "destination `port[/protocol]` (TCP by default; for ICMP and ICMPv6 the port is the type)")
		direction    = fs.String("direction", "", "decide only `egress` (the source's policy) or ingress (the destination's)")
		clusterName  = fs.String("cluster-name", "default", "the local cluster's `name`")
		dnsName      = fs.String("dns-name", "", "trace a DNS query for `name`: a port with DNS rules sends it to the DNS proxy, whose rules decide it (enables toFQDNs and DNS rules)")
		toFQDN       = fs.String("to-fqdn", "", "with -to-cidr ADDRESS: a DNS answer gave the address to `name`, as the DNS proxy would have seen it (enables toFQDNs and DNS rules)")
		namedPorts   namedPortsFlag
		httpMethod   = fs.String("http-method", "", "decide an HTTP request with this `method` where HTTP rules apply")
		httpPath     = fs.String("http-path", "", "... with this request `target` (path and query, e.g. /public/x?q=1)")
		httpHost     = fs.String("http-host", "", "... with this Host `header`")
		httpHeaders  = headersFlag{}
	)
	fs.Var(&namedPorts, "named-port", "a named port of the destination, `NAME=PORT[/PROTO]` (repeatable)")
	fs.Var(httpHeaders, "http-header", "... with this header, `NAME:VALUE` (repeatable)")
	if err := fs.Parse(args); err != nil {
		return exitBadInput
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "policytrace: "+format+"\n", a...)
		return exitBadInput
	}
	if fs.NArg() > 0 {
		return bad("unexpected arguments: %q", fs.Args())
	}
	switch {
	case *policiesPath == "":
		return bad("-policies is required")
	case *from == "" && *fromCIDR == "":
		return bad("one of -from and -from-cidr is required")
	case *from != "" && *fromCIDR != "":
		return bad("-from and -from-cidr are exclusive")
	case *to == "" && *toCIDR == "":
		return bad("one of -to and -to-cidr is required")
	case *to != "" && *toCIDR != "":
		return bad("-to and -to-cidr are exclusive")
	case *dport == "":
		return bad("-dport is required")
	case *toFQDN != "" && *toCIDR == "":
		return bad("-to-fqdn needs -to-cidr (the address the name resolved to)")
	}
	var dirs policy.TraceDirections
	switch strings.ToLower(*direction) {
	case "":
		dirs = policy.TraceBoth
	case "egress":
		dirs = policy.TraceEgressOnly
	case "ingress":
		dirs = policy.TraceIngressOnly
	default:
		return bad("-direction must be egress or ingress, not %q", *direction)
	}
	port, proto, err := parsePort(*dport)
	if err != nil {
		return bad("-dport: %v", err)
	}

	alloc, err := identity.NewInProcessAllocator(identity.InProcessConfig{})
	if err != nil {
		return bad("%v", err)
	}
	defer alloc.Close()
	ecfg := policy.EngineConfig{Policy: policy.Config{ClusterName: *clusterName,
		ProxyPorts: policy.ProxyPorts{HTTP: tracedHTTPProxyPort}}}
	ipc := ipcache.New()
	if *dnsName != "" || *toFQDN != "" {
		// The DNS machinery, without a proxy: toFQDNs and DNS rules are
		// then traced instead of refused. The port is nominal.
		ecfg.CIDRAllocator, ecfg.IPCache, ecfg.FQDN = alloc, ipc, &fqdn.Config{}
		ecfg.Policy.ProxyPorts.DNS = nominalDNSProxyPort
	}
	eng, err := policy.NewEngine(ecfg)
	if err != nil {
		return bad("%v", err)
	}
	defer eng.Close()
	// Validate every policy file before deciding anything, for this
	// engine: what it cannot enforce (toFQDNs and DNS rules without
	// -dns-name or -to-fqdn) is reported with every other problem.
	policies, err := eng.ParseFiles(*policiesPath)
	if err != nil {
		if ves := policy.ValidationErrors(err); len(ves) > 0 {
			fmt.Fprintf(stderr, "policytrace: %d invalid field(s) in %s:\n", len(ves), *policiesPath)
			for _, ve := range ves {
				fmt.Fprintf(stderr, "  %v\n", ve)
			}
			return exitBadInput
		}
		return bad("%v", err)
	}

	repo := eng.Repository()
	seen := map[policy.PolicyID]string{}
	var notes []string
	for _, p := range policies {
		// A later definition of the same object replaces the earlier one,
		// as kubectl apply of the whole directory would.
		if first, ok := seen[p.ID()]; ok {
			notes = append(notes, fmt.Sprintf("%s (%s) replaces its definition in %s", p.ID(), p.Source, first))
		}
		seen[p.ID()] = p.Source
		if _, err := eng.ReplacePolicy(p); err != nil {
			return bad("%s: %v", p.Source, err)
		}
	}

	ctx := context.Background()
	side := func(name, labels, cidr string) (identity.Identity, error) {
		var ls identity.Labels
		if cidr != "" {
			pfx, err := parsePrefix(cidr)
			if err != nil {
				return identity.Identity{}, fmt.Errorf("-%s-cidr: %w", name, err)
			}
			if ls, err = identity.CIDRLabels(pfx, repo.Config().Stack); err != nil {
				return identity.Identity{}, fmt.Errorf("-%s-cidr: %w", name, err)
			}
		} else {
			var err error
			if ls, err = identity.ParseLabelList(labels); err != nil {
				return identity.Identity{}, fmt.Errorf("-%s: %w", name, err)
			}
			if ls.IsEmpty() {
				return identity.Identity{}, fmt.Errorf("-%s: no labels", name)
			}
		}
		id, _, err := alloc.Allocate(ctx, ls)
		if err != nil {
			return identity.Identity{}, fmt.Errorf("-%s: %w", name, err)
		}
		return identity.Identity{ID: id, Labels: ls}, nil
	}
	var fqdnDst *identity.Identity
	if *toFQDN != "" {
		addr, err := netip.ParseAddr(*toCIDR)
		if err != nil {
			return bad("-to-fqdn: -to-cidr must be one address: %v", err)
		}
		if err := eng.ObserveDNS(*toFQDN, []netip.Addr{addr}, time.Hour); err != nil {
			return bad("-to-fqdn: %v", err)
		}
		// The address has the identity of its toFQDNs selectors now,
		// if the name matches any.
		if _, ent, ok := ipc.Lookup(addr); ok {
			ls, _ := alloc.Lookup(ent.Identity)
			fqdnDst = &identity.Identity{ID: ent.Identity, Labels: ls}
		}
	}
	src, err := side("from", *from, *fromCIDR)
	if err != nil {
		return bad("%v", err)
	}
	dst, err := side("to", *to, *toCIDR)
	if err != nil {
		return bad("%v", err)
	}
	if fqdnDst != nil {
		dst = *fqdnDst
		notes = append(notes, fmt.Sprintf("%s resolved to %s: the destination has the identity of the toFQDNs selectors that match the name", *toFQDN, *toCIDR))
	}
	if err := eng.UpdateIdentities([]identity.Identity{src, dst}, nil); err != nil {
		return bad("%v", err)
	}

	fmt.Fprintf(stdout, "Tracing %s/%s from identity %d to identity %d against %d policies (repository revision %d)\n",
		portString(port, proto), proto, src.ID, dst.ID, len(policies), repo.Revision())
	for _, p := range policies {
		if p.Kind == policy.KindCiliumNetworkPolicy && p.Namespace == "" {
			notes = append(notes, fmt.Sprintf("%s (%s) has no namespace; like Cilium, it is treated as clusterwide", p.ID(), p.Source))
		}
	}
	treq := policy.TraceRequest{
		From: src, To: dst, ToNamedPorts: namedPorts,
		Protocol: proto, Port: port, Directions: dirs, DNSName: *dnsName,
	}
	if *dnsName != "" {
		fmt.Fprintf(stdout, "DNS query: %s\n", *dnsName)
	}
	if *httpMethod != "" || *httpPath != "" || *httpHost != "" || len(httpHeaders) > 0 {
		target := *httpPath
		if target == "" {
			target = "/"
		}
		// The proxy judges the path as Cilium's Envoy normalizes it.
		switch norm, redirect, ok := policy.NormalizeHTTPPath(target); {
		case !ok:
			notes = append(notes, fmt.Sprintf("the HTTP proxy answers 400 to path %q, which Envoy cannot normalize", target))
		case redirect:
			notes = append(notes, fmt.Sprintf("the HTTP proxy answers 307 to path %q (escaped slashes), redirecting to %q, which is traced", target, norm))
			target = norm
		case norm != target:
			notes = append(notes, fmt.Sprintf("path %q is judged as %q, normalized as Cilium's Envoy does", target, norm))
			target = norm
		}
		method := *httpMethod
		if method == "" {
			method = "GET"
		}
		treq.HTTP = &policy.HTTPRequest{Method: method, Target: target, Host: *httpHost, Header: httpHeaders}
		fmt.Fprintf(stdout, "HTTP request: %s %s (host %q, %d header(s))\n", method, target, *httpHost, len(httpHeaders))
	}
	for _, n := range notes {
		fmt.Fprintf(stdout, "note: %s\n", n)
	}
	fmt.Fprintln(stdout)
	res, err := trace(repo, treq)
	if errors.Is(err, policy.ErrInconsistent) {
		// The compiled map and the rules disagree: a bug, with no verdict
		// to trust either way.
		fmt.Fprintf(stderr, "policytrace: internal error, no verdict: %v\n", err)
		return exitError
	}
	if err != nil {
		fmt.Fprintf(stderr, "policytrace: %v\n", err)
		return exitBadInput
	}
	fmt.Fprint(stdout, res)
	if res.Allowed {
		return exitAllowed
	}
	return exitDenied
}

// parsePort reads PORT[/PROTO]; the protocol defaults to TCP.
func parsePort(s string) (uint16, nodeplane.Protocol, error) {
	portStr, protoStr, hasProto := strings.Cut(s, "/")
	proto := nodeplane.ProtoTCP
	if hasProto {
		p, err := nodeplane.ParseProtocol(protoStr)
		if err != nil {
			return 0, 0, err
		}
		if p == nodeplane.ProtoAny {
			return 0, 0, fmt.Errorf("a packet has one protocol, not %q", protoStr)
		}
		proto = p
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return 0, 0, fmt.Errorf("invalid port %q: want 0-65535", portStr)
	}
	if (proto == nodeplane.ProtoICMP || proto == nodeplane.ProtoICMPv6) && port > 255 {
		return 0, 0, fmt.Errorf("invalid ICMP type %d: want 0-255", port)
	}
	return uint16(port), proto, nil
}

func portString(port uint16, proto nodeplane.Protocol) string {
	if proto == nodeplane.ProtoICMP || proto == nodeplane.ProtoICMPv6 {
		return "type " + strconv.Itoa(int(port))
	}
	return strconv.Itoa(int(port))
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid address or prefix %q", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
