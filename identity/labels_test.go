package identity

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
)

func TestParseLabel(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Label
	}{
		{"k8s:app=web", Label{"k8s", "app", "web"}},
		{"app=web", Label{"unspec", "app", "web"}},
		{"app", Label{"unspec", "app", ""}},
		{"k8s:app", Label{"k8s", "app", ""}},
		{"k8s:app=", Label{"k8s", "app", ""}},
		{"k8s:a=b=c", Label{"k8s", "a", "b=c"}},
		{"k8s:a:b=c", Label{"k8s", "a:b", "c"}},
		{"$host", Label{"reserved", "host", ""}},
		{"reserved:host", Label{"reserved", "host", ""}},
		{"reserved:=host", Label{"reserved", "host", ""}},
		{":foo", Label{"unspec", "foo", ""}},
		{"k8s:io.kubernetes.pod.namespace=prod", Label{"k8s", "io.kubernetes.pod.namespace", "prod"}},
		{"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod",
			Label{"k8s", "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name", "prod"}},
		{"cidr:10.0.0.0/8", Label{"cidr", "10.0.0.0/8", ""}},
		{"cidr:2001-db8--0/32", Label{"cidr", "2001-db8--0/32", ""}},
		{"fqdn:*.example.com", Label{"fqdn", "*.example.com", ""}},
		{"container:com.docker.compose.project=a b", Label{"container", "com.docker.compose.project", "a b"}},
	} {
		got, err := ParseLabel(tc.in)
		if err != nil {
			t.Errorf("ParseLabel(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseLabel(%q) = %#v, want %#v", tc.in, got, tc.want)
		}
	}
}

func TestParseLabelErrors(t *testing.T) {
	for _, tc := range []struct {
		in, reason string
	}{
		{"", "empty key"},
		{"k8s:", "empty key"},
		{"k8s:=web", "empty key"},
		{"$", "empty key"},
		{"any:app=web", `source "any" only selects`},
		{"k 8s:app", "source must consist"},
		{"k8s:a;b", "contains ';'"},
		{"k8s:a=b;", "contains ';'"},
		{"k8s:a\x00", "control character"},
		{"k8s:a=\xff", "not valid UTF-8"},
		{"cidr:10.0.0.0/8=x", "cidr label has no value"},
		{"cidr:10.0.0.0", "not a prefix"},
		{"cidr:web", "not a prefix"},
	} {
		_, err := ParseLabel(tc.in)
		var le *LabelError
		if !errors.As(err, &le) || !errors.Is(err, ErrInvalidLabel) {
			t.Errorf("ParseLabel(%q) error = %v, want a *LabelError wrapping ErrInvalidLabel", tc.in, err)
			continue
		}
		if le.Label != tc.in || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("ParseLabel(%q) error = %q (label %q), want it to name the input and say %q", tc.in, err, le.Label, tc.reason)
		}
	}
}

func TestParseSelectLabel(t *testing.T) {
	for in, want := range map[string]Label{
		"app=web":        {"any", "app", "web"},
		"unspec:app=web": {"any", "app", "web"},
		"any:app=web":    {"any", "app", "web"},
		"k8s:app=web":    {"k8s", "app", "web"},
		"$host":          {"reserved", "host", ""},
	} {
		got, err := parseSelectLabel(in)
		if err != nil || got != want {
			t.Errorf("parseSelectLabel(%q) = %#v, %v; want %#v", in, got, err, want)
		}
	}
}

func TestLabelsCanonical(t *testing.T) {
	a, err := ParseLabelList("k8s:io.kubernetes.pod.namespace=prod, k8s:app=web,reserved:host")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewLabels(
		Label{"reserved", "host", ""},
		Label{"k8s", "app", "web"},
		Label{"k8s", "io.kubernetes.pod.namespace", "prod"},
	)
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatalf("same labels in another order differ: %q vs %q", a.Key(), b.Key())
	}
	const wantKey = "k8s:app=web;reserved:host=;k8s:io.kubernetes.pod.namespace=prod;"
	if a.Key() != wantKey {
		t.Errorf("Key() = %q, want %q", a.Key(), wantKey)
	}
	const wantStr = "k8s:app=web,reserved:host,k8s:io.kubernetes.pod.namespace=prod"
	if a.String() != wantStr {
		t.Errorf("String() = %q, want %q", a.String(), wantStr)
	}
	if a.Len() != 3 {
		t.Errorf("Len() = %d", a.Len())
	}
	m := map[Labels]int{a: 1}
	if m[b] != 1 {
		t.Error("equal Labels are not the same map key")
	}

	back, err := LabelsFromKey(a.Key())
	if err != nil || back != a {
		t.Errorf("LabelsFromKey(Key()) = %v, %v", back, err)
	}
	if !slices.Equal(a.Slice(), []Label{{"k8s", "app", "web"}, {"reserved", "host", ""}, {"k8s", "io.kubernetes.pod.namespace", "prod"}}) {
		t.Errorf("Slice() = %v", a.Slice())
	}
}

func TestLabelsDuplicateKeyLastWins(t *testing.T) {
	// Cilium keys a label set by the label key alone; the last label given
	// for a key replaces the earlier ones.
	ls, err := ParseLabelList("k8s:app=a,container:app=b,k8s:x=1")
	if err != nil {
		t.Fatal(err)
	}
	if got := ls.String(); got != "container:app=b,k8s:x=1" {
		t.Errorf("String() = %q", got)
	}
}

func TestLabelsFromMap(t *testing.T) {
	ls, err := labelsFromMap(map[string]string{"app": "web", "k8s:tier": "db"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := ls.String(); got != "unspec:app=web,k8s:tier=db" {
		t.Errorf("no source: %q", got)
	}
	ls, err = labelsFromMap(map[string]string{"app": "web", "container:tier": "db"}, SourceK8s)
	if err != nil {
		t.Fatal(err)
	}
	if got := ls.String(); got != "k8s:app=web,k8s:tier=db" {
		t.Errorf("source override: %q", got)
	}
	if _, err := labelsFromMap(map[string]string{"k8s:app": "a", "container:app": "b"}, ""); !errors.Is(err, ErrInvalidLabel) ||
		!strings.Contains(err.Error(), `key "app" appears twice`) {
		t.Errorf("conflicting keys: %v", err)
	}
	if _, err := labelsFromMap(map[string]string{"": "x"}, SourceK8s); !errors.Is(err, ErrInvalidLabel) {
		t.Errorf("empty key: %v", err)
	}
}

func TestParseLabelListErrors(t *testing.T) {
	for _, in := range []string{"k8s:a=b,,k8s:c", "k8s:a=b,", "k8s:a,any:b", "k8s:a,cidr:x"} {
		if _, err := ParseLabelList(in); !errors.Is(err, ErrInvalidLabel) {
			t.Errorf("ParseLabelList(%q) = %v, want ErrInvalidLabel", in, err)
		}
	}
	ls, err := ParseLabelList("  ")
	if err != nil || !ls.IsEmpty() {
		t.Errorf("blank list = %v, %v", ls, err)
	}
}

func TestLabelsFromKeyRejectsNonCanonical(t *testing.T) {
	for _, in := range []string{
		"k8s:b=1;k8s:a=2;",          // unsorted
		"k8s:a=1;k8s:a=2;",          // duplicate key
		"k8s:a=1",                   // no terminator
		"k8s:a;",                    // no '='
		"a=b:c;",                    // '=' before ':'
		"any:a=1;",                  // selector-only source
		"cidr:nope=;",               // bad cidr
		"k8s:a=1;;",                 // empty item
		"k8s:=1;",                   // empty key
		"k8s:a=1;reserved:host=;x;", // garbage
	} {
		if _, err := LabelsFromKey(in); !errors.Is(err, ErrInvalidLabel) {
			t.Errorf("LabelsFromKey(%q) = %v, want ErrInvalidLabel", in, err)
		}
	}
}

func TestLabelsHas(t *testing.T) {
	ls := mustLabels(t, "k8s:app=web", "cidr:10.1.0.0/16", "reserved:world")
	for l, want := range map[Label]bool{
		{"k8s", "app", "web"}:            true,
		{"any", "app", "web"}:            true,
		{"unspec", "app", "web"}:         true,
		{"container", "app", "web"}:      false,
		{"k8s", "app", "db"}:             false,
		{"cidr", "10.0.0.0/8", ""}:       true,
		{"cidr", "10.1.0.0/16", ""}:      true,
		{"cidr", "10.1.2.0/24", ""}:      false,
		{"cidr", "11.0.0.0/8", ""}:       false,
		{"reserved", "world", ""}:        true,
		{"reserved", "world-ipv4", ""}:   false,
		{"cidr", "not-a-prefix/99", ""}:  false,
		{"any", "10.1.0.0/16", ""}:       true,
		{"k8s", "io.kubernetes.pod", ""}: false,
	} {
		if got := ls.Has(l); got != want {
			t.Errorf("Has(%v) = %v, want %v", l, got, want)
		}
	}
}

func TestLabelsMergeAndJSON(t *testing.T) {
	a := mustLabels(t, "k8s:app=web", "k8s:tier=fe")
	b := mustLabels(t, "container:app=other", "reserved:host")
	m := a.Merge(b)
	if got := m.String(); got != "container:app=other,reserved:host,k8s:tier=fe" {
		t.Errorf("Merge = %q", got)
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != `["container:app=other","reserved:host","k8s:tier=fe"]` {
		t.Errorf("JSON = %s", data)
	}
	var back Labels
	if err := json.Unmarshal(data, &back); err != nil || back != m {
		t.Errorf("JSON round trip = %v, %v", back, err)
	}
	if err := json.Unmarshal([]byte(`["any:x"]`), &back); !errors.Is(err, ErrInvalidLabel) || back != m {
		t.Errorf("bad JSON label: %v, labels now %v", err, back)
	}
}

func TestCIDRLabels(t *testing.T) {
	for _, tc := range []struct {
		prefix    string
		dualStack bool
		want      string
	}{
		{"10.0.0.0/8", false, "cidr:10.0.0.0/8=;reserved:world=;"},
		{"10.1.2.3/8", false, "cidr:10.0.0.0/8=;reserved:world=;"},
		{"10.0.0.1/32", true, "cidr:10.0.0.1/32=;reserved:world-ipv4=;"},
		{"2001:db8::/32", true, "cidr:2001-db8--0/32=;reserved:world-ipv6=;"},
		{"::1/128", false, "cidr:0--1/128=;reserved:world=;"},
		{"::/1", false, "cidr:0--0/1=;reserved:world=;"},
		{"0.0.0.0/0", false, "reserved:world=;"},
		{"0.0.0.0/0", true, "reserved:world-ipv4=;"},
		{"::/0", true, "reserved:world-ipv6=;"},
	} {
		ls, err := CIDRLabels(netip.MustParsePrefix(tc.prefix), stackMode(tc.dualStack))
		if err != nil {
			t.Errorf("CIDRLabels(%s): %v", tc.prefix, err)
			continue
		}
		if ls.Key() != tc.want {
			t.Errorf("CIDRLabels(%s, dual=%v) = %q, want %q", tc.prefix, tc.dualStack, ls.Key(), tc.want)
		}
		if ls.Scope() != ScopeLocal {
			t.Errorf("%v.Scope() = %v", ls, ls.Scope())
		}
	}
	ls, _ := CIDRLabels(netip.MustParsePrefix("2001:db8::/32"), nodeplane.DualStack)
	if got := ls.String(); got != "cidr:2001:db8::/32,reserved:world-ipv6" {
		t.Errorf("String() = %q", got)
	}
	if _, err := CIDRLabels(netip.Prefix{}, nodeplane.SingleStack); !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("invalid prefix: %v", err)
	}
	if _, err := CIDRLabel(netip.MustParsePrefix("0.0.0.0/0")); !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("CIDRLabel(/0): %v", err)
	}
}

func TestLookupReserved(t *testing.T) {
	for list, want := range map[string]ID{
		"reserved:host":                                  ReservedHost,
		"reserved:host,k8s:node-role=worker":             ReservedHost,
		"reserved:host,reserved:kube-apiserver":          ReservedHost,
		"reserved:remote-node":                           ReservedRemoteNode,
		"reserved:remote-node,reserved:kube-apiserver":   ReservedKubeAPIServer,
		"reserved:world":                                 ReservedWorld,
		"reserved:world-ipv4":                            ReservedWorldIPv4,
		"reserved:world-ipv6":                            ReservedWorldIPv6,
		"reserved:health":                                ReservedHealth,
		"reserved:init":                                  ReservedInit,
		"reserved:unmanaged":                             ReservedUnmanaged,
		"reserved:ingress":                               ReservedIngress,
		"reserved:kube-apiserver":                        ReservedKubeAPIServer,
		"reserved:world,k8s:app=evil":                    Unknown,
		"reserved:world,cidr:10.0.0.0/8":                 Unknown,
		"reserved:bogus":                                 Unknown,
		"k8s:app=web":                                    Unknown,
		"k8s:host":                                       Unknown,
		"reserved:health,reserved:ingress":               Unknown,
		"reserved:kube-apiserver,reserved:remote-node,k": ReservedKubeAPIServer,
	} {
		ls, err := ParseLabelList(list)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := LookupReserved(ls)
		if got != want || ok != (want != Unknown) {
			t.Errorf("LookupReserved(%s) = %v, %v; want %v", list, got, ok, want)
		}
	}
	for _, id := range ReservedIdentities() {
		got, ok := LookupReserved(id.Labels)
		if !ok || got != id.ID {
			t.Errorf("reserved identity %v does not resolve to itself: %v", id, got)
		}
	}
	kube, _ := ReservedKubeAPIServer.ReservedLabels()
	if kube.String() != "reserved:kube-apiserver,reserved:remote-node" {
		t.Errorf("kube-apiserver labels = %v", kube)
	}
}

func TestLabelsScope(t *testing.T) {
	for list, want := range map[string]Scope{
		"k8s:app=web":                      ScopeCluster,
		"cidr:10.0.0.0/8,reserved:world":   ScopeLocal,
		"fqdn:*.example.com":               ScopeLocal,
		"cidr:10.0.0.0/8,k8s:app=web":      ScopeCluster,
		"reserved:health,reserved:ingress": ScopeLocal,
		"":                                 ScopeInvalid,
	} {
		ls, err := ParseLabelList(list)
		if err != nil {
			t.Fatal(err)
		}
		if got := ls.Scope(); got != want {
			t.Errorf("%q.Scope() = %v, want %v", list, got, want)
		}
	}
}

func mustLabels(t testing.TB, labels ...string) Labels {
	t.Helper()
	ls, err := ParseLabels(labels...)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// stackMode turns a table's dual-stack flag into the mode.
func stackMode(dual bool) nodeplane.StackMode {
	if dual {
		return nodeplane.DualStack
	}
	return nodeplane.SingleStack
}
