package identity

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
)

// pod is the label set Cilium gives a pod "web" in namespace "prod" whose
// namespace carries team=a.
const pod = "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod," +
	"k8s:io.cilium.k8s.policy.cluster=default,k8s:io.cilium.k8s.policy.serviceaccount=web-sa," +
	"k8s:io.cilium.k8s.namespace.labels.team=a,k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod"

func TestSelectorMatches(t *testing.T) {
	for _, tc := range []struct {
		name     string
		selector string // JSON, as in a policy file
		labels   string
		want     bool
	}{
		{"empty selects all", `{}`, pod, true},
		{"empty selects empty set", `{}`, "", true},
		{"matchLabels without source is any", `{"matchLabels":{"app":"web"}}`, pod, true},
		{"matchLabels any from container", `{"matchLabels":{"app":"web"}}`, "container:app=web", true},
		{"matchLabels with source", `{"matchLabels":{"k8s:app":"web"}}`, pod, true},
		{"matchLabels other source", `{"matchLabels":{"container:app":"web"}}`, pod, false},
		{"matchLabels explicit any", `{"matchLabels":{"any:app":"web"}}`, pod, true},
		{"matchLabels unspec is any", `{"matchLabels":{"unspec:app":"web"}}`, pod, true},
		{"matchLabels wrong value", `{"matchLabels":{"app":"db"}}`, pod, false},
		{"matchLabels absent", `{"matchLabels":{"tier":"fe"}}`, pod, false},
		{"matchLabels empty value needs empty value", `{"matchLabels":{"app":""}}`, pod, false},
		{"namespace", `{"matchLabels":{"k8s:io.kubernetes.pod.namespace":"prod"}}`, pod, true},
		{"namespace label", `{"matchLabels":{"io.cilium.k8s.namespace.labels.team":"a"}}`, pod, true},
		{"namespace name label", `{"matchLabels":{"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name":"prod"}}`, pod, true},
		{"all requirements", `{"matchLabels":{"app":"web","k8s:io.kubernetes.pod.namespace":"dev"}}`, pod, false},
		{"reserved host", `{"matchLabels":{"reserved:host":""}}`, "reserved:host", true},
		{"reserved host via any", `{"matchLabels":{"host":""}}`, "reserved:host", true},
		{"reserved host not k8s", `{"matchLabels":{"reserved:host":""}}`, "k8s:host", false},
		{"remote-node selects kube-apiserver", `{"matchLabels":{"reserved:remote-node":""}}`, "reserved:kube-apiserver,reserved:remote-node", true},
		{"world is not world-ipv4", `{"matchLabels":{"reserved:world":""}}`, "reserved:world-ipv4", false},

		{"In", `{"matchExpressions":[{"key":"app","operator":"In","values":["db","web"]}]}`, pod, true},
		{"In miss", `{"matchExpressions":[{"key":"app","operator":"In","values":["db"]}]}`, pod, false},
		{"In absent", `{"matchExpressions":[{"key":"tier","operator":"In","values":["fe"]}]}`, pod, false},
		{"In source", `{"matchExpressions":[{"key":"container:app","operator":"In","values":["web"]}]}`, pod, false},
		{"NotIn", `{"matchExpressions":[{"key":"app","operator":"NotIn","values":["db"]}]}`, pod, true},
		{"NotIn hit", `{"matchExpressions":[{"key":"app","operator":"NotIn","values":["db","web"]}]}`, pod, false},
		{"NotIn absent holds", `{"matchExpressions":[{"key":"tier","operator":"NotIn","values":["fe"]}]}`, pod, true},
		{"NotIn other source is absent", `{"matchExpressions":[{"key":"container:app","operator":"NotIn","values":["web"]}]}`, pod, true},
		{"Exists", `{"matchExpressions":[{"key":"app","operator":"Exists"}]}`, pod, true},
		{"Exists absent", `{"matchExpressions":[{"key":"tier","operator":"Exists"}]}`, pod, false},
		{"Exists source", `{"matchExpressions":[{"key":"k8s:app","operator":"Exists"}]}`, pod, true},
		{"Exists wrong source", `{"matchExpressions":[{"key":"reserved:app","operator":"Exists"}]}`, pod, false},
		{"DoesNotExist absent", `{"matchExpressions":[{"key":"tier","operator":"DoesNotExist"}]}`, pod, true},
		{"DoesNotExist present", `{"matchExpressions":[{"key":"app","operator":"DoesNotExist"}]}`, pod, false},
		{"DoesNotExist other source", `{"matchExpressions":[{"key":"container:app","operator":"DoesNotExist"}]}`, pod, true},
		{"labels and expressions", `{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"k8s:io.kubernetes.pod.namespace","operator":"In","values":["prod","staging"]},{"key":"debug","operator":"DoesNotExist"}]}`, pod, true},
		{"labels and failing expression", `{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"app","operator":"NotIn","values":["web"]}]}`, pod, false},
		{"cidr key in selector", `{"matchLabels":{"cidr:10.0.0.0/8":""}}`, "cidr:10.1.0.0/16,reserved:world", true},
		{"cidr key outside", `{"matchLabels":{"cidr:10.0.0.0/8":""}}`, "cidr:11.0.0.0/16,reserved:world", false},
		{"cidr key that is no prefix", `{"matchExpressions":[{"key":"cidr:web","operator":"DoesNotExist"}]}`, "cidr:10.0.0.0/8", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var spec LabelSelector
			if err := json.Unmarshal([]byte(tc.selector), &spec); err != nil {
				t.Fatal(err)
			}
			sel, err := NewSelector(spec)
			if err != nil {
				t.Fatal(err)
			}
			ls, err := ParseLabelList(tc.labels)
			if err != nil {
				t.Fatal(err)
			}
			if got := sel.Matches(ls); got != tc.want {
				t.Errorf("%s.Matches(%s) = %v, want %v", sel, ls, got, tc.want)
			}
		})
	}
}

func TestSelectorErrors(t *testing.T) {
	long := strings.Repeat("a", 64)
	for _, tc := range []struct {
		selector     string
		field, value string
		reason       string
	}{
		{`{"matchExpressions":[{"key":"app","operator":"Foo","values":["x"]}]}`, "matchExpressions[0].operator", "Foo", "not a valid selector operator"},
		{`{"matchExpressions":[{"key":"app","operator":"in","values":["x"]}]}`, "matchExpressions[0].operator", "in", "not a valid selector operator"},
		{`{"matchExpressions":[{"key":"app","operator":"In"}]}`, "matchExpressions[0].values", "", "must be specified"},
		{`{"matchExpressions":[{"key":"app","operator":"NotIn","values":[]}]}`, "matchExpressions[0].values", "", "must be specified"},
		{`{"matchExpressions":[{"key":"app","operator":"Exists","values":["x"]}]}`, "matchExpressions[0].values", "x", "may not be specified"},
		{`{"matchExpressions":[{"key":"app","operator":"DoesNotExist","values":["x"]}]}`, "matchExpressions[0].values", "x", "may not be specified"},
		{`{"matchExpressions":[{"key":"","operator":"Exists"}]}`, "matchExpressions[0].key", "", "name part must be non-empty"},
		{`{"matchExpressions":[{"key":"a:b:c","operator":"Exists"}]}`, "matchExpressions[0].key", "a:b:c", "only support ':'"},
		{`{"matchExpressions":[{"key":"app","operator":"In","values":["ok","not ok"]}]}`, "matchExpressions[0].values[1]", "not ok", "a valid label must be"},
		{`{"matchLabels":{"k-8s:app":"web"}}`, "matchLabels[k-8s:app]", "k-8s:app", "label source should be"},
		{`{"matchLabels":{":app":"web"}}`, "matchLabels[:app]", ":app", "label source should be"},
		{`{"matchLabels":{"$host":""}}`, "matchLabels[$host]", "$host", "name part must consist"},
		{`{"matchLabels":{"app":"bad value"}}`, "matchLabels[app]", "bad value", "a valid label must be"},
		{`{"matchLabels":{"app":"` + long + `"}}`, "matchLabels[app]", long, "no more than 63"},
		{`{"matchLabels":{"` + long + `":"x"}}`, "matchLabels[" + long + "]", long, "name part must be no more than 63"},
		{`{"matchLabels":{"Example.com/app":"x"}}`, "matchLabels[Example.com/app]", "Example.com/app", "prefix part a lowercase RFC 1123"},
		{`{"matchLabels":{"a/b/c":"x"}}`, "matchLabels[a/b/c]", "a/b/c", "a qualified name must"},
		{`{"matchLabels":{"/app":"x"}}`, "matchLabels[/app]", "/app", "prefix part must be non-empty"},
		{`{"matchLabels":{"-app":"x"}}`, "matchLabels[-app]", "-app", "name part must consist"},
	} {
		var spec LabelSelector
		if err := json.Unmarshal([]byte(tc.selector), &spec); err != nil {
			t.Fatal(err)
		}
		_, err := NewSelector(spec)
		var se *SelectorError
		if !errors.As(err, &se) || !errors.Is(err, ErrInvalidSelector) {
			t.Errorf("%s: error %v, want a *SelectorError", tc.selector, err)
			continue
		}
		if se.Field != tc.field || se.Value != tc.value || !strings.Contains(se.Reason, tc.reason) {
			t.Errorf("%s: got field %q value %q reason %q; want %q %q %q", tc.selector, se.Field, se.Value, se.Reason, tc.field, tc.value, tc.reason)
		}
		if !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: message %q does not name the field", tc.selector, err)
		}
	}
}

func TestSelectorErrorsAllReported(t *testing.T) {
	_, err := NewSelector(LabelSelector{
		MatchLabels: map[string]string{"b:x:y": "1", "a": "bad value"},
		MatchExpressions: []SelectorRequirement{
			{Key: "ok", Operator: "Has"},
		},
	})
	msg := err.Error()
	for _, want := range []string{"matchLabels[a]", "matchLabels[b:x:y]", "matchExpressions[0].operator", `"Has"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %s", msg, want)
		}
	}
	// Fields are reported in a fixed order: matchLabels by key, then
	// expressions in order.
	if strings.Index(msg, "matchLabels[a]") > strings.Index(msg, "matchLabels[b:x:y]") {
		t.Errorf("errors out of order: %q", msg)
	}
}

func TestSelectorString(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want string
	}{
		{`{}`, `{"matchLabels":{}}`, "<all>"},
		{
			`{"matchLabels":{"app":"web","k8s:tier":"fe"}}`,
			`{"matchExpressions":[{"key":"k8s:tier","operator":"In","values":["fe"]},{"key":"any:app","operator":"In","values":["web","web"]}]}`,
			"any:app=web,k8s:tier=fe",
		},
		{
			`{"matchExpressions":[{"key":"env","operator":"In","values":["prod","dev","prod"]},{"key":"debug","operator":"DoesNotExist"},{"key":"tier","operator":"NotIn","values":["db"]},{"key":"k8s:app","operator":"Exists"}]}`,
			`{"matchExpressions":[{"key":"k8s:app","operator":"Exists"},{"key":"tier","operator":"NotIn","values":["db"]},{"key":"unspec:debug","operator":"DoesNotExist"},{"key":"env","operator":"In","values":["dev","prod"]},{"key":"env","operator":"In","values":["prod","dev"]}]}`,
			"!any:debug,any:env in (dev,prod),any:tier notin (db),k8s:app",
		},
	} {
		sa, sb := mustSelector(t, tc.a), mustSelector(t, tc.b)
		if sa.String() != tc.want || sb.String() != tc.want {
			t.Errorf("String() = %q and %q, want %q", sa, sb, tc.want)
		}
	}
	var zero Selector
	if zero.String() != "<all>" || !zero.IsWildcard() || !zero.Matches(mustLabels(t, "k8s:a=b")) {
		t.Error("the zero Selector must select everything")
	}
}

func TestSelectorFromLabels(t *testing.T) {
	sel, err := SelectorFromLabels(Label{SourceReserved, LabelHost, ""})
	if err != nil {
		t.Fatal(err)
	}
	if sel.String() != "reserved:host=" {
		t.Errorf("String() = %q", sel)
	}
	if !sel.Matches(mustLabels(t, "reserved:host", "k8s:node=a")) || sel.Matches(mustLabels(t, "reserved:world")) {
		t.Error("reserved:host selector selects wrongly")
	}
	anySel, err := SelectorFromLabels(Label{SourceUnspec, "app", "web"})
	if err != nil || anySel.String() != "any:app=web" {
		t.Errorf("unspec source: %v %v", anySel, err)
	}
	if _, err := SelectorFromLabels(Label{SourceK8s, "", "x"}); !errors.Is(err, ErrInvalidLabel) {
		t.Errorf("empty key: %v", err)
	}
	// Selector keys with quotes in their canonical string.
	odd, err := SelectorFromLabels(Label{SourceContainer, "a b", "c,d"})
	if err != nil || odd.String() != `container:"a b"="c,d"` {
		t.Errorf("odd label selector: %q %v", odd, err)
	}
}

func TestCIDRSelector(t *testing.T) {
	type match struct {
		labels string
		want   bool
	}
	for _, tc := range []struct {
		prefix    string
		dualStack bool
		str       string
		matches   []match
	}{
		{"10.0.0.0/8", false, "cidr:10.0.0.0/8=", []match{
			{"10.0.0.0/8", true}, {"10.1.0.0/16", true}, {"10.255.255.255/32", true},
			{"11.0.0.0/8", false}, {"10.0.0.0/7", false}, {"0.0.0.0/0", false}, {"::/0", false},
		}},
		{"10.1.2.3/32", true, "cidr:10.1.2.3/32=", []match{{"10.1.2.3/32", true}, {"10.1.2.0/24", false}}},
		{"2001:db8::/32", true, "cidr:2001-db8--0/32=", []match{
			{"2001:db8::/32", true}, {"2001:db8:1::/48", true}, {"2001:db8::1/128", true},
			{"2001:db9::/32", false}, {"10.0.0.0/8", false},
		}},
		{"::/0", true, "reserved:world-ipv6=", []match{{"2001:db8::/32", true}, {"::/0", true}, {"10.0.0.0/8", false}}},
		{"0.0.0.0/0", true, "reserved:world-ipv4=", []match{{"10.0.0.0/8", true}, {"::1/128", false}}},
		{"0.0.0.0/0", false, "reserved:world=", []match{{"10.0.0.0/8", true}, {"::1/128", true}}},
	} {
		sel, err := CIDRSelector(netip.MustParsePrefix(tc.prefix), stackMode(tc.dualStack))
		if err != nil {
			t.Fatal(err)
		}
		if sel.String() != tc.str {
			t.Errorf("CIDRSelector(%s) = %q, want %q", tc.prefix, sel, tc.str)
		}
		for _, m := range tc.matches {
			ls, err := CIDRLabels(netip.MustParsePrefix(m.labels), stackMode(tc.dualStack))
			if err != nil {
				t.Fatal(err)
			}
			if got := sel.Matches(ls); got != m.want {
				t.Errorf("CIDRSelector(%s).Matches(%s) = %v, want %v", tc.prefix, ls, got, m.want)
			}
		}
		if sel.Matches(mustLabels(t, "k8s:app=web")) {
			t.Errorf("CIDRSelector(%s) selects a pod", tc.prefix)
		}
	}
	if _, err := CIDRSelector(netip.Prefix{}, nodeplane.SingleStack); !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("invalid prefix: %v", err)
	}
}

func mustSelector(t testing.TB, js string) Selector {
	t.Helper()
	var spec LabelSelector
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		t.Fatal(err)
	}
	sel, err := NewSelector(spec)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

// TestSelectorKeysInsideKeysAndValues checks that a selector key never
// matches text inside another label's key or value.
func TestSelectorKeysInsideKeysAndValues(t *testing.T) {
	ls, err := NewLabels(
		Label{"k8s", "x:app", "1"},
		Label{"k8s", "foo", "a:app=b"},
		Label{"container", "b:c", "d=e:f=g"},
		Label{"k8s", "c", "v"},
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		l    Label
		want bool
	}{
		{Label{"any", "app", "1"}, false},
		{Label{"any", "app", "b"}, false},
		{Label{"k8s", "app", "b"}, false},
		{Label{"any", "x:app", "1"}, true},
		{Label{"k8s", "x:app", "1"}, true},
		{Label{"container", "x:app", "1"}, false},
		{Label{"any", "foo", "a:app=b"}, true},
		{Label{"any", "b:c", "d=e:f=g"}, true},
		{Label{"any", "c", "v"}, true},
		{Label{"any", "f", "g"}, false},
		{Label{"any", "e:f", "g"}, false},
	} {
		sel, err := SelectorFromLabels(tc.l)
		if err != nil {
			t.Fatalf("%v: %v", tc.l, err)
		}
		if got := sel.Matches(ls); got != tc.want {
			t.Errorf("%s.Matches = %v, want %v", sel, got, tc.want)
		}
		if got := ls.Has(tc.l); got != tc.want {
			t.Errorf("Has(%v) = %v, want %v", tc.l, got, tc.want)
		}
	}
}
