package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/lb"
	"github.com/nodeplane/nodeplane/policy"
)

// manifestSet is what a directory of manifests says: the policies and the
// services with their backends.
type manifestSet struct {
	policies map[policy.PolicyID]policy.Policy
	services map[lb.Frontend]service
	digest   [sha256.Size]byte
}

// service is one frontend of a Kubernetes Service and the ready addresses
// of its EndpointSlices.
type service struct {
	namespace, name string
	svc             lb.Service
	backends        []lb.Backend
}

// ManifestError is one invalid field of a Service or EndpointSlice
// document. Policy documents are reported as policy.ValidationError.
type ManifestError struct {
	File     string
	Document int
	Line     int
	Object   string // "Service demo/api"
	Field    string // "spec.ports[0].port"
	Reason   string
}

func (e *ManifestError) Error() string {
	// The same shape as policy.ValidationError's.
	return fmt.Sprintf("%s: document %d (%s), line %d: %s: %s", e.File, e.Document, e.Object, e.Line, e.Field, e.Reason)
}

// docSeparator is a YAML document separator line.
var docSeparator = regexp.MustCompile(`^---(\s.*)?$`)

// readManifestDir returns the manifest files of dir (*.yaml, *.yml,
// *.json, not recursively) in lexical order, and a digest of their names
// and contents.
func readManifestDir(dir string) (names []string, data [][]byte, digest [sha256.Size]byte, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, digest, err
	}
	h := sha256.New()
	for _, e := range entries {
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".yaml", ".yml", ".json":
		default:
			continue
		}
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, nil, digest, err
		}
		names, data = append(names, e.Name()), append(data, b)
		fmt.Fprintf(h, "%s\x00%d\x00", e.Name(), len(b))
		h.Write(b)
	}
	copy(digest[:], h.Sum(nil))
	return names, data, digest, nil
}

// loadManifests reads and validates every manifest of dir. Any invalid
// document fails the whole load, with every error of every file, each
// naming its file, document and field.
func loadManifests(dir, node string) (manifestSet, error) {
	names, data, digest, err := readManifestDir(dir)
	if err != nil {
		return manifestSet{}, err
	}
	set := manifestSet{policies: map[policy.PolicyID]policy.Policy{}, services: map[lb.Frontend]service{}, digest: digest}
	var (
		errs     []error
		svcs     []k8sService
		slices   []k8sEndpointSlice
		fileOfID = map[policy.PolicyID]string{}
	)
	for i, name := range names {
		path := filepath.Join(dir, name)
		rest, fileSvcs, fileSlices, ferrs := splitServices(path, data[i])
		errs = append(errs, ferrs...)
		svcs, slices = append(svcs, fileSvcs...), append(slices, fileSlices...)
		pols, err := policy.Parse(rest, path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range pols {
			if prev, dup := fileOfID[p.ID()]; dup {
				errs = append(errs, fmt.Errorf("%s: %v is also defined in %s", path, p.ID(), prev))
				continue
			}
			fileOfID[p.ID()] = path
			set.policies[p.ID()] = p
		}
	}
	if err := buildServices(set.services, svcs, slices, node); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return manifestSet{}, errors.Join(errs...)
	}
	return set, nil
}

// splitServices takes the Service and EndpointSlice documents out of a
// file and returns the rest for policy.Parse, with each taken document
// replaced by comment lines so that policy errors keep their document
// numbers and lines.
func splitServices(path string, data []byte) (rest []byte, svcs []k8sService, eps []k8sEndpointSlice, errs []error) {
	lines := strings.SplitAfter(string(data), "\n")
	var out strings.Builder
	doc, start := 1, 0
	flush := func(end int) {
		chunk := strings.Join(lines[start:end], "")
		var root yaml.Node
		kind := ""
		if err := yaml.Unmarshal([]byte(chunk), &root); err == nil && len(root.Content) == 1 && root.Content[0].Kind == yaml.MappingNode {
			for i := 0; i+1 < len(root.Content[0].Content); i += 2 {
				if root.Content[0].Content[i].Value == "kind" {
					kind = root.Content[0].Content[i+1].Value
				}
			}
		}
		taken := true
		switch kind {
		case "Service":
			s, err := decodeService(path, doc, start+1, root.Content[0])
			if err != nil {
				errs = append(errs, err)
			} else if s != nil {
				svcs = append(svcs, *s)
			}
		case "EndpointSlice":
			s, err := decodeEndpointSlice(path, doc, start+1, root.Content[0])
			if err != nil {
				errs = append(errs, err)
			} else {
				eps = append(eps, *s)
			}
		default:
			taken = false
		}
		for _, l := range lines[start:end] {
			if taken && !docSeparator.MatchString(strings.TrimRight(l, "\r\n")) {
				l = "#\n"
			}
			out.WriteString(l)
		}
	}
	for i, l := range lines {
		if i > start && docSeparator.MatchString(strings.TrimRight(l, "\r\n")) {
			flush(i)
			doc, start = doc+1, i
		}
	}
	flush(len(lines))
	return []byte(out.String()), svcs, eps, errs
}

type k8sMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type k8sService struct {
	file string
	doc  int
	line int
	Meta k8sMeta `yaml:"metadata"`
	Spec struct {
		Type                  string   `yaml:"type"`
		ClusterIP             string   `yaml:"clusterIP"`
		ClusterIPs            []string `yaml:"clusterIPs"`
		SessionAffinity       string   `yaml:"sessionAffinity"`
		SessionAffinityConfig struct {
			ClientIP struct {
				TimeoutSeconds *int `yaml:"timeoutSeconds"`
			} `yaml:"clientIP"`
		} `yaml:"sessionAffinityConfig"`
		InternalTrafficPolicy string `yaml:"internalTrafficPolicy"`
		Ports                 []struct {
			Name     string `yaml:"name"`
			Port     int    `yaml:"port"`
			Protocol string `yaml:"protocol"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type k8sEndpointSlice struct {
	file        string
	doc         int
	line        int
	Meta        k8sMeta `yaml:"metadata"`
	AddressType string  `yaml:"addressType"`
	Endpoints   []struct {
		Addresses  []string `yaml:"addresses"`
		NodeName   string   `yaml:"nodeName"`
		Conditions struct {
			Ready       *bool `yaml:"ready"`
			Terminating *bool `yaml:"terminating"`
		} `yaml:"conditions"`
	} `yaml:"endpoints"`
	Ports []struct {
		Name     string `yaml:"name"`
		Port     int    `yaml:"port"`
		Protocol string `yaml:"protocol"`
	} `yaml:"ports"`
}

// decodeService decodes and checks a Service; a headless one (no cluster
// IP) is nil.
func decodeService(file string, doc, line int, n *yaml.Node) (*k8sService, error) {
	s := &k8sService{file: file, doc: doc, line: line}
	fail := func(field, format string, args ...any) error {
		return &ManifestError{File: file, Document: doc, Line: line, Object: "Service " + s.Meta.Namespace + "/" + s.Meta.Name,
			Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if err := n.Decode(s); err != nil {
		return nil, fail("", "%v", err)
	}
	if s.Meta.Name == "" {
		return nil, fail("metadata.name", "required")
	}
	if s.Meta.Namespace == "" {
		s.Meta.Namespace = "default"
	}
	// What the agent cannot enforce is refused, not half applied.
	switch s.Spec.Type {
	case "", "ClusterIP":
	case "ExternalName":
		return nil, nil // a DNS name: nothing for the dataplane to do
	default:
		return nil, fail("spec.type", "%q is not supported by this agent: it balances cluster IPs at the socket layer only (NodePort and LoadBalancer need lb.NorthSouth, which it does not run yet)", s.Spec.Type)
	}
	switch s.Spec.SessionAffinity {
	case "", "None", "ClientIP":
	default:
		return nil, fail("spec.sessionAffinity", "must be None or ClientIP, not %q", s.Spec.SessionAffinity)
	}
	if t := s.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds; t != nil && (*t < 1 || *t > 86400) {
		return nil, fail("spec.sessionAffinityConfig.clientIP.timeoutSeconds", "must be 1-86400, not %d", *t)
	}
	switch s.Spec.InternalTrafficPolicy {
	case "", "Cluster", "Local":
	default:
		return nil, fail("spec.internalTrafficPolicy", "must be Cluster or Local, not %q", s.Spec.InternalTrafficPolicy)
	}
	if len(s.Spec.ClusterIPs) == 0 && s.Spec.ClusterIP != "" {
		s.Spec.ClusterIPs = []string{s.Spec.ClusterIP}
	}
	for i, ip := range s.Spec.ClusterIPs {
		if ip == "None" {
			return nil, nil
		}
		if _, err := netip.ParseAddr(ip); err != nil {
			return nil, fail(fmt.Sprintf("spec.clusterIPs[%d]", i), "not an IP address: %q", ip)
		}
	}
	for i, p := range s.Spec.Ports {
		if p.Port < 1 || p.Port > 65535 {
			return nil, fail(fmt.Sprintf("spec.ports[%d].port", i), "must be 1-65535, not %d", p.Port)
		}
		if _, err := k8sProtocol(p.Protocol); err != nil {
			return nil, fail(fmt.Sprintf("spec.ports[%d].protocol", i), "%v", err)
		}
	}
	if len(s.Spec.ClusterIPs) == 0 {
		return nil, nil
	}
	return s, nil
}

func decodeEndpointSlice(file string, doc, line int, n *yaml.Node) (*k8sEndpointSlice, error) {
	s := &k8sEndpointSlice{file: file, doc: doc, line: line}
	fail := func(field, format string, args ...any) error {
		return &ManifestError{File: file, Document: doc, Line: line, Object: "EndpointSlice " + s.Meta.Namespace + "/" + s.Meta.Name,
			Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if err := n.Decode(s); err != nil {
		return nil, fail("", "%v", err)
	}
	if s.Meta.Namespace == "" {
		s.Meta.Namespace = "default"
	}
	if s.Meta.Labels["kubernetes.io/service-name"] == "" {
		return nil, fail("metadata.labels", "kubernetes.io/service-name is required")
	}
	if s.AddressType != "IPv4" && s.AddressType != "IPv6" {
		return nil, fail("addressType", "must be IPv4 or IPv6, not %q", s.AddressType)
	}
	for i, ep := range s.Endpoints {
		for j, a := range ep.Addresses {
			addr, err := netip.ParseAddr(a)
			if err != nil || addr.Is4() != (s.AddressType == "IPv4") {
				return nil, fail(fmt.Sprintf("endpoints[%d].addresses[%d]", i, j), "not an %s address: %q", s.AddressType, a)
			}
		}
	}
	for i, p := range s.Ports {
		if p.Port < 1 || p.Port > 65535 {
			return nil, fail(fmt.Sprintf("ports[%d].port", i), "must be 1-65535, not %d", p.Port)
		}
		if _, err := k8sProtocol(p.Protocol); err != nil {
			return nil, fail(fmt.Sprintf("ports[%d].protocol", i), "%v", err)
		}
	}
	return s, nil
}

// k8sProtocol maps a Kubernetes port protocol to the load balancer's; the
// socket layer translates TCP and UDP.
func k8sProtocol(p string) (nodeplane.Protocol, error) {
	switch p {
	case "", "TCP":
		return nodeplane.ProtoTCP, nil
	case "UDP":
		return nodeplane.ProtoUDP, nil
	}
	return 0, fmt.Errorf("must be TCP or UDP, not %q", p)
}

// buildServices joins Services and EndpointSlices into frontends with
// backends: for each cluster IP and port of a service, the ready addresses
// of the service's slices of that family, at the slice port of the same
// name and protocol. An endpoint whose nodeName is node is a local
// backend, the only kind a service with internalTrafficPolicy Local sends
// new connections to (lb.Service.InternalTrafficLocal).
func buildServices(out map[lb.Frontend]service, svcs []k8sService, eps []k8sEndpointSlice, node string) error {
	var errs []error
	for _, s := range svcs {
		for _, ipStr := range s.Spec.ClusterIPs {
			ip := netip.MustParseAddr(ipStr)
			for _, p := range s.Spec.Ports {
				proto, _ := k8sProtocol(p.Protocol)
				fe := lb.Frontend{Addr: netip.AddrPortFrom(ip, uint16(p.Port)), Protocol: proto}
				if prev, dup := out[fe]; dup {
					errs = append(errs, &ManifestError{File: s.file, Document: s.doc, Line: s.line, Object: "Service " + s.Meta.Namespace + "/" + s.Meta.Name,
						Field: "spec.ports", Reason: fmt.Sprintf("frontend %v is also Service %s/%s's", fe, prev.namespace, prev.name)})
					continue
				}
				svc := service{namespace: s.Meta.Namespace, name: s.Meta.Name, svc: lb.Service{Frontend: fe, InternalTrafficLocal: s.Spec.InternalTrafficPolicy == "Local"}}
				if s.Spec.SessionAffinity == "ClientIP" {
					svc.svc.SessionAffinity = 3 * time.Hour // Kubernetes' default timeout
					if t := s.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds; t != nil {
						svc.svc.SessionAffinity = time.Duration(*t) * time.Second
					}
				}
				for _, sl := range eps {
					if sl.Meta.Namespace != s.Meta.Namespace || sl.Meta.Labels["kubernetes.io/service-name"] != s.Meta.Name ||
						(sl.AddressType == "IPv4") != ip.Is4() {
						continue
					}
					for _, sp := range sl.Ports {
						if sproto, _ := k8sProtocol(sp.Protocol); sp.Name != p.Name || sproto != proto {
							continue
						}
						for _, ep := range sl.Endpoints {
							state := lb.BackendActive
							if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
								state = lb.BackendTerminating
							} else if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
								continue
							}
							for _, a := range ep.Addresses {
								svc.backends = append(svc.backends, lb.Backend{Addr: netip.AddrPortFrom(netip.MustParseAddr(a), uint16(sp.Port)), State: state,
									Local: ep.NodeName != "" && ep.NodeName == node})
							}
						}
					}
				}
				out[fe] = svc
			}
		}
	}
	return errors.Join(errs...)
}

// applyManifests makes set the policy and services in force: changed and
// new policies are replaced (the engine rewrites only the difference of
// each endpoint's map), missing ones deleted, and likewise services. The
// manifest directory and the Kubernetes API server both come here: each
// builds the whole set it wants, and only what differs from the set in
// force reaches the engine and the load balancer.
func (a *Agent) applyManifests(set manifestSet) error {
	n, err := a.applySet(set)
	if err != nil {
		return err
	}
	a.log.Info("manifests applied", "policies", len(set.policies), "services", len(set.services), "changes", n)
	return nil
}

// applySet is applyManifests without the log line; it returns how many
// policies and services it changed.
func (a *Agent) applySet(set manifestSet) (changes int, err error) {
	for _, id := range slices.SortedFunc(maps.Keys(set.policies), func(x, y policy.PolicyID) int { return strings.Compare(x.String(), y.String()) }) {
		p := set.policies[id]
		if old, ok := a.manifests.policies[id]; ok && samePolicy(old, p) {
			continue
		}
		if _, err := a.engine.ReplacePolicy(p); err != nil {
			return changes, fmt.Errorf("apply %v: %w", id, err)
		}
		a.manifests.policies = cloneMapWith(a.manifests.policies, id, &p)
		changes++
	}
	for id := range a.manifests.policies {
		if _, keep := set.policies[id]; !keep {
			if _, err := a.engine.DeletePolicy(id); err != nil && !errors.Is(err, policy.ErrPolicyNotFound) {
				return changes, fmt.Errorf("delete %v: %w", id, err)
			}
			a.manifests.policies = cloneMapWith(a.manifests.policies, id, nil)
			changes++
		}
	}
	if a.lb == nil && len(set.services) > 0 {
		a.log.Warn("services ignored: the socket load balancer is off (-cgroup)", "services", len(set.services))
	}
	if a.lb != nil {
		for fe, s := range set.services {
			if old, ok := a.manifests.services[fe]; ok && reflect.DeepEqual(old, s) {
				continue
			}
			if _, err := a.lb.Upsert(s.svc, s.backends); err != nil {
				return changes, fmt.Errorf("service %s/%s %v: %w", s.namespace, s.name, fe, err)
			}
			a.catalog.SetService(flow.Frontend{Addr: fe.Addr.Addr(), Port: fe.Addr.Port(), Proto: fe.Protocol},
				flow.Service{Name: s.name, Namespace: s.namespace})
			changes++
		}
		for _, fe := range a.lb.Services() {
			if _, keep := set.services[fe]; !keep {
				if err := a.lb.Delete(fe); err != nil {
					return changes, fmt.Errorf("delete service %v: %w", fe, err)
				}
				a.catalog.DeleteService(flow.Frontend{Addr: fe.Addr.Addr(), Port: fe.Addr.Port(), Proto: fe.Protocol})
				changes++
			}
		}
	}
	a.manifests = set
	return changes, nil
}

// samePolicy reports whether two versions of a policy enforce the same:
// where they were read from does not matter.
func samePolicy(x, y policy.Policy) bool {
	return x.UID == y.UID && reflect.DeepEqual(x.Rules, y.Rules)
}

// cloneMapWith returns a copy of m with k set to *v, or deleted for nil,
// so that a set handed to applySet is never changed under its owner.
func cloneMapWith[K comparable, V any](m map[K]V, k K, v *V) map[K]V {
	out := maps.Clone(m)
	if out == nil {
		out = map[K]V{}
	}
	if v == nil {
		delete(out, k)
	} else {
		out[k] = *v
	}
	return out
}

// Reload reads the manifest directory and applies it if it changed. An
// invalid manifest is logged, with its file and field, and leaves the
// policy and services in force as they were; the error is returned and
// Status reports it until a valid set is read.
func (a *Agent) Reload() error {
	if a.cfg.Manifests == "" {
		return nil
	}
	_, _, digest, err := readManifestDir(a.cfg.Manifests)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil && digest == a.seenDigest {
		return nil
	}
	a.seenDigest = digest
	set, err := loadManifests(a.cfg.Manifests, a.cfg.Node)
	if err == nil {
		err = a.applyManifests(set)
	}
	if err != nil {
		if a.manErr == nil || a.manErr.Error() != err.Error() {
			for _, line := range strings.Split(err.Error(), "\n") {
				a.log.Error("invalid manifest; previous policy stays in force", "error", line)
			}
		}
		a.manErr = err
		return err
	}
	a.manErr = nil
	return nil
}

// watchManifests polls the manifest directory until ctx is done.
func (a *Agent) watchManifests(ctx context.Context) error {
	t := time.NewTicker(a.cfg.ManifestPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			_ = a.Reload()
		}
	}
}
