package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Limits that keep a hostile document from costing more than a policy can
// reasonably need.
const (
	// maxDocumentNodes bounds the YAML nodes visited per document, aliases
	// included, so that alias bombs fail fast.
	maxDocumentNodes = 1 << 20
	// maxPolicyFileSize bounds what ParseFiles reads from one file.
	maxPolicyFileSize = 64 << 20
)

// Parse reads policies from YAML or JSON: one or more documents separated
// by "---", each a CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or
// NetworkPolicy object, or a List of them (kind: List, or the kinds' own
// lists, or a top-level JSON array). source names the input in errors and
// in the policies' Source field.
//
// Parse validates as Cilium (and the Kubernetes API server, for
// NetworkPolicy) would and reports every invalid field of every document,
// each as a [*ValidationError] naming the document and the field path,
// joined with errors.Join. On error it returns no policies.
//
// Fields are decoded strictly: an unknown field is an error, not silently
// ignored, because a misspelt peer or port list would otherwise widen or
// narrow a policy without notice. Fields of the Cilium API that this
// package does not implement (toServices, toGroups and fromGroups, TLS
// contexts, serverNames, listeners, CIDR groups, HTTP header matches, the
// deprecated toRequires and fromRequires, toNodes and fromNodes) are
// rejected as unsupported. So are, as "not supported yet", the fields
// nothing enforces yet, because enforcing the rest of the rule would allow
// more than it says: Kafka and generic L7 rules (toPorts[].rules.kafka,
// .l7proto and .l7), authentication modes other than "disabled", and host
// policies (nodeSelector). HTTP rules, DNS rules and toFQDNs are enforced
// by an engine with the matching proxy: Parse accepts them, and
// [Engine.Parse] (or [Engine.AddPolicy]) refuses them for an engine
// without it.
func Parse(data []byte, source string) ([]Policy, error) {
	return parse(data, source, nil)
}

// parse is Parse validating for a repository configured with cfg (nil:
// statically; see validateFor).
func parse(data []byte, source string, cfg *Config) ([]Policy, error) {
	var (
		policies []Policy
		errs     []error
	)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for doc := 1; ; doc++ {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, &ValidationError{Source: source, Document: doc, Reason: "not valid YAML or JSON: " + yamlErrorText(err)})
			// The decoder cannot resynchronise after a syntax error.
			break
		}
		if root.Kind == 0 || root.Kind == yaml.DocumentNode && len(root.Content) == 0 {
			continue // empty document, e.g. a trailing "---"
		}
		d := &docDecoder{source: source, doc: doc, cfg: cfg}
		node := root.Content[0]
		if isNull(node) {
			continue // a document with nothing but comments
		}
		for _, obj := range d.objects(node) {
			if p, ok := d.object(obj); ok {
				policies = append(policies, p)
			}
		}
		errs = append(errs, d.errs...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return policies, nil
}

// ParseFiles reads policies from path: a file, or a directory whose
// *.yaml, *.yml and *.json files are read in lexical order (not
// recursively). It validates every file and returns the errors of all of
// them, so that one run reports every problem.
func ParseFiles(path string) ([]Policy, error) {
	return parseFiles(path, nil)
}

func parseFiles(path string, cfg *Config) ([]Policy, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	files := []string{path}
	if info.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		files = files[:0]
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() {
					files = append(files, filepath.Join(path, e.Name()))
				}
			}
		}
		sort.Strings(files)
	}
	var (
		all  []Policy
		errs []error
	)
	for _, f := range files {
		data, err := readLimited(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ps, err := parse(data, f, cfg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		all = append(all, ps...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return all, nil
}

func readLimited(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPolicyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	if len(data) > maxPolicyFileSize {
		return nil, fmt.Errorf("read policies: %s is larger than %d bytes", name, maxPolicyFileSize)
	}
	return data, nil
}

func yamlErrorText(err error) string {
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// docDecoder decodes the objects of one document and collects its
// errors.
type docDecoder struct {
	source  string
	doc     int
	cfg     *Config // the repository validated for (validateFor); nil: static
	objName string  // "Kind ns/name" of the object being decoded
	errs    []error
	nodes   int
	lines   map[string]int
}

func (d *docDecoder) fail(n *yaml.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errs = append(d.errs, &ValidationError{
		Source: d.source, Document: d.doc, Line: line, Object: d.objName,
		Path: path, Reason: fmt.Sprintf(format, args...),
	})
}

// resolve follows aliases and counts nodes against the document budget.
func (d *docDecoder) resolve(n *yaml.Node) (*yaml.Node, bool) {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > 64 {
			return nil, false
		}
		n = n.Alias
	}
	d.nodes++
	if d.nodes > maxDocumentNodes {
		if d.nodes == maxDocumentNodes+1 {
			d.fail(n, "", "document too large or too deeply aliased (more than %d nodes)", maxDocumentNodes)
		}
		return nil, false
	}
	return n, n != nil
}

// objects returns the policy objects of a document: the node itself, the
// items of a List, or the elements of a top-level sequence.
func (d *docDecoder) objects(n *yaml.Node) []*yaml.Node {
	n, ok := d.resolve(n)
	if !ok {
		return nil
	}
	switch n.Kind {
	case yaml.SequenceNode:
		return n.Content
	case yaml.MappingNode:
		kind := scalarField(n, "kind")
		if kind == "List" || strings.HasSuffix(kind, "List") {
			items := fieldNode(n, "items")
			if items == nil {
				return nil
			}
			if items, ok = d.resolve(items); !ok || items.Kind != yaml.SequenceNode {
				d.fail(items, "items", "must be a list")
				return nil
			}
			return items.Content
		}
		return []*yaml.Node{n}
	}
	d.fail(n, "", "a policy document must be an object")
	return nil
}

// object decodes one policy object.
func (d *docDecoder) object(n *yaml.Node) (Policy, bool) {
	n, ok := d.resolve(n)
	if !ok {
		return Policy{}, false
	}
	d.objName = ""
	d.lines = map[string]int{}
	if n.Kind != yaml.MappingNode {
		d.fail(n, "", "a policy object must be a mapping")
		return Policy{}, false
	}
	errsBefore := len(d.errs)
	kind := Kind(scalarField(n, "kind"))
	apiVersion := scalarField(n, "apiVersion")
	var meta objectMeta
	if m := fieldNode(n, "metadata"); m != nil {
		meta = d.metadata(m)
	}
	p := Policy{Kind: kind, Namespace: meta.namespace, Name: meta.name, UID: meta.uid}
	if p.Kind == KindNetworkPolicy && p.Namespace == "" {
		// The API server puts a namespaced object without one in
		// "default"; Cilium's translation does the same.
		p.Namespace = "default"
	}
	if p.Kind == KindCiliumClusterwideNetworkPolicy && p.Namespace != "" {
		// A cluster-scoped object has no namespace; the API server
		// drops one that is given.
		p.Namespace = ""
	}
	d.objName = p.ID().String()
	p.Source = d.source
	p.file, p.doc = d.source, d.doc
	if d.doc > 0 {
		p.Source = fmt.Sprintf("%s, document %d", d.source, d.doc)
	}

	var wantAPI string
	switch kind {
	case KindCiliumNetworkPolicy, KindCiliumClusterwideNetworkPolicy:
		wantAPI = "cilium.io/v2"
	case KindNetworkPolicy:
		wantAPI = "networking.k8s.io/v1"
	case "":
		d.fail(n, "kind", "missing; want CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy")
		return Policy{}, false
	default:
		d.fail(fieldNode(n, "kind"), "kind", "unsupported kind %q; want CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy", kind)
		return Policy{}, false
	}
	switch {
	case apiVersion == "":
		d.fail(n, "apiVersion", "missing; want %q", wantAPI)
	case apiVersion != wantAPI:
		d.fail(fieldNode(n, "apiVersion"), "apiVersion", "%q cannot hold a %s; want %q", apiVersion, kind, wantAPI)
	}
	if meta.name == "" {
		d.fail(n, "metadata.name", "a %s must have a name", kind)
	}

	switch kind {
	case KindNetworkPolicy:
		d.fields(n, "", map[string]func(*yaml.Node, string){
			"apiVersion": ignore, "kind": ignore, "metadata": ignore, "status": ignore,
			"spec": func(v *yaml.Node, path string) {
				p.Rules = d.networkPolicySpec(v, path, p.Namespace)
				p.rulePaths = []string{"spec"}
			},
		})
		if fieldNode(n, "spec") == nil {
			d.fail(n, "spec", "missing")
		}
	default:
		var specSeen bool
		d.fields(n, "", map[string]func(*yaml.Node, string){
			"apiVersion": ignore, "kind": ignore, "metadata": ignore, "status": ignore,
			"spec": func(v *yaml.Node, path string) {
				if isNull(v) {
					return
				}
				specSeen = true
				r := d.rule(v, path)
				p.Rules = append([]Rule{r}, p.Rules...)
				p.rulePaths = append([]string{"spec"}, p.rulePaths...)
			},
			"specs": func(v *yaml.Node, path string) {
				if isNull(v) {
					return
				}
				specSeen = true
				d.list(v, path, func(item *yaml.Node, ipath string) {
					p.Rules = append(p.Rules, d.rule(item, ipath))
					p.rulePaths = append(p.rulePaths, ipath)
				})
			},
		})
		if !specSeen {
			d.fail(n, "spec", "a %s needs spec or specs", kind)
		}
	}
	decodeErrs := d.errs[errsBefore:]
	if len(decodeErrs) > 0 && (p.Kind == "" || len(p.Rules) == 0) {
		return Policy{}, false
	}
	p.lines = d.lines
	if err := p.validateFor(d.cfg); err != nil {
		// Report what validation finds too, except where a decoding error
		// already covers the field (a value that did not decode leaves a
		// zero behind, which validation would misreport).
		for _, ve := range ValidationErrors(err) {
			if !coveredBy(ve.Path, decodeErrs) {
				ve.Source, ve.Document = d.source, d.doc
				d.errs = append(d.errs, ve)
			}
		}
	}
	if len(d.errs) > errsBefore {
		return Policy{}, false
	}
	return p, true
}

// coveredBy reports whether path is, contains or lies within the path of
// one of errs.
func coveredBy(path string, errs []error) bool {
	for _, e := range errs {
		ve, ok := e.(*ValidationError)
		if !ok {
			continue
		}
		if related(path, ve.Path) || related(ve.Path, path) {
			return true
		}
	}
	return false
}

// related reports whether b is a or lies within a.
func related(a, b string) bool {
	return a == b || strings.HasPrefix(b, a) && (a == "" || b[len(a)] == '.' || b[len(a)] == '[')
}

type objectMeta struct {
	name, namespace, uid string
}

func (d *docDecoder) metadata(n *yaml.Node) objectMeta {
	var m objectMeta
	n, ok := d.resolve(n)
	if !ok || isNull(n) {
		return m
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, "metadata", "must be an object")
		return m
	}
	// Metadata carries much that policy does not use (labels,
	// annotations, managedFields...); only the identifying fields are read.
	if v := fieldNode(n, "name"); v != nil {
		m.name, _ = d.str(v, "metadata.name")
	}
	if v := fieldNode(n, "namespace"); v != nil {
		m.namespace, _ = d.str(v, "metadata.namespace")
	}
	if v := fieldNode(n, "uid"); v != nil {
		m.uid, _ = d.str(v, "metadata.uid")
	}
	return m
}

func ignore(*yaml.Node, string) {}

// fields decodes a mapping: each key must have a handler. Keys are
// processed in document order; duplicate keys are an error (yaml.v3
// already refuses them in YAML; JSON input goes through the same check).
func (d *docDecoder) fields(n *yaml.Node, path string, handlers map[string]func(*yaml.Node, string)) {
	n, ok := d.resolve(n)
	if !ok || isNull(n) {
		// null is an absent object, as Go's JSON decoder reads it.
		return
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "must be an object, not %s", describe(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		fpath := joinPath(path, key)
		if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
			d.fail(k, fpath, "unsupported key (merge keys and complex keys are not allowed)")
			continue
		}
		if seen[key] {
			d.fail(k, fpath, "field given twice")
			continue
		}
		seen[key] = true
		h, ok := handlers[key]
		if !ok {
			known := make([]string, 0, len(handlers))
			for name := range handlers {
				known = append(known, name)
			}
			slices.Sort(known)
			d.fail(k, fpath, "unknown field (known fields: %s)", strings.Join(known, ", "))
			continue
		}
		if d.lines != nil {
			d.lines[fpath] = k.Line
		}
		h(v, fpath)
	}
}

// list decodes a sequence, calling fn for each element.
func (d *docDecoder) list(n *yaml.Node, path string, fn func(*yaml.Node, string)) {
	n, ok := d.resolve(n)
	if !ok || isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "must be a list, not %s", describe(n))
		return
	}
	for i, item := range n.Content {
		ipath := fmt.Sprintf("%s[%d]", path, i)
		if d.lines != nil {
			d.lines[ipath] = item.Line
		}
		fn(item, ipath)
	}
}

// isList reports whether n is a list, for fields whose nil and empty
// values differ; null counts as absent.
func (d *docDecoder) present(n *yaml.Node) bool {
	n, ok := d.resolve(n)
	return ok && !isNull(n)
}

// str decodes a string scalar.
func (d *docDecoder) str(n *yaml.Node, path string) (string, bool) {
	n, ok := d.resolve(n)
	if !ok {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" || yaml11Bool(n) != nil {
		d.fail(n, path, "must be a string, not %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// yaml11Bool returns the boolean an unquoted scalar means in YAML 1.1,
// which Kubernetes' YAML reader (and so kubectl and Cilium) follows: yes,
// no, on, off, y and n are booleans there, not strings. Nil for anything
// else.
func yaml11Bool(n *yaml.Node) *bool {
	if n.Kind != yaml.ScalarNode || n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return nil
	}
	t, f := true, false
	switch n.Value {
	case "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE":
		return &t
	case "n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE":
		return &f
	}
	return nil
}

// strOrNumber decodes a scalar that may be written as a string or a
// number (ports: the CRD says string, users write numbers).
func (d *docDecoder) strOrNumber(n *yaml.Node, path string) (string, bool) {
	n, ok := d.resolve(n)
	if !ok {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int") || yaml11Bool(n) != nil {
		d.fail(n, path, "must be a string or a number, not %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// integer decodes an integer scalar within [min, max].
func (d *docDecoder) integer(n *yaml.Node, path string, min, max int64) (int64, bool) {
	n, ok := d.resolve(n)
	if !ok {
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		d.fail(n, path, "must be an integer, not %s", describe(n))
		return 0, false
	}
	v, err := strconv.ParseInt(n.Value, 0, 64)
	if err != nil || v < min || v > max {
		d.fail(n, path, "%s is out of range [%d, %d]", n.Value, min, max)
		return 0, false
	}
	return v, true
}

func (d *docDecoder) boolean(n *yaml.Node, path string) (*bool, bool) {
	n, ok := d.resolve(n)
	if !ok {
		return nil, false
	}
	if isNull(n) {
		return nil, true
	}
	if v := yaml11Bool(n); v != nil {
		return v, true
	}
	d.fail(n, path, "must be true or false, not %s", describe(n))
	return nil, false
}

// stringMap decodes a mapping of strings to strings.
func (d *docDecoder) stringMap(n *yaml.Node, path string) map[string]string {
	n, ok := d.resolve(n)
	if !ok || isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "must be an object of strings, not %s", describe(n))
		return nil
	}
	m := make(map[string]string, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		kpath := fmt.Sprintf("%s[%s]", path, k.Value)
		if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
			d.fail(k, kpath, "unsupported key")
			continue
		}
		if _, dup := m[k.Value]; dup {
			d.fail(k, kpath, "key given twice")
			continue
		}
		v, ok := d.str(n.Content[i+1], kpath)
		if !ok {
			continue
		}
		m[k.Value] = v
	}
	return m
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "an object"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "null"
		case "!!bool":
			return "a boolean"
		case "!!str":
			if yaml11Bool(n) != nil {
				return "a YAML 1.1 boolean (" + n.Value + "); quote it to make it a string"
			}
			return strconv.Quote(n.Value)
		case "!!int", "!!float":
			return "a number (" + n.Value + ")"
		}
		return n.Tag + " " + strconv.Quote(n.Value)
	}
	return "an unsupported node"
}

func joinPath(base, key string) string {
	if base == "" {
		return key
	}
	return base + "." + key
}

// fieldNode returns the value of key in a mapping node, or nil.
func fieldNode(n *yaml.Node, key string) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func scalarField(n *yaml.Node, key string) string {
	v := fieldNode(n, key)
	for v != nil && v.Kind == yaml.AliasNode {
		v = v.Alias
	}
	if v == nil || v.Kind != yaml.ScalarNode || v.Tag != "!!str" {
		return ""
	}
	return v.Value
}
