package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane/policy"
)

// TestGolden runs the cases of testdata/golden/cases.txt through the
// command and checks the exit code of each.
func TestGolden(t *testing.T) {
	f, err := os.Open("testdata/golden/cases.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	n := 0
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if fields[0] == "let" {
			if len(fields) != 3 {
				t.Fatalf("line %d: want let NAME LABELS", line)
			}
			vars[fields[1]] = fields[2]
			continue
		}
		if len(fields) < 2 {
			t.Fatalf("line %d: want SCENARIO EXPECTATION FLAGS...", line)
		}
		scenario, want := fields[0], fields[1]
		args := []string{"-policies", filepath.Join("testdata/golden", scenario)}
		for _, a := range fields[2:] {
			if v, ok := strings.CutPrefix(a, "$"); ok {
				if vars[v] == "" {
					t.Fatalf("line %d: undefined $%s", line, v)
				}
				a = vars[v]
			}
			args = append(args, a)
		}
		wantCode := map[string]int{"allowed": exitAllowed, "denied": exitDenied, "invalid": exitBadInput}[want]
		if want != "allowed" && wantCode == 0 {
			t.Fatalf("line %d: unknown expectation %q", line, want)
		}
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != wantCode {
			t.Errorf("line %d: %s\nexit %d, want %d (%s)\n%s%s", line, text, code, wantCode, want, stdout.String(), stderr.String())
		}
		if wantCode == exitBadInput && stderr.Len() == 0 {
			t.Errorf("line %d: exit 2 without a message", line)
		}
		n++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d golden cases", n)
}

// Invalid policy files are reported with document and field path, every
// file before any verdict.
func TestInvalidReport(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{
		"a.yaml": "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [galaxy]\n",
		"b.yaml": "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 0}]\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"-policies", dir, "-from", "k8s:app=a", "-to", "k8s:app=b", "-dport", "80"}, &stdout, &stderr)
	if code != exitBadInput || stdout.Len() != 0 {
		t.Fatalf("exit %d, stdout %q", code, stdout.String())
	}
	for _, want := range []string{
		"a.yaml: document 1 (CiliumNetworkPolicy x/a), line 7: spec.ingress[0].fromEntities[0]: unsupported entity: galaxy",
		"b.yaml: document 1 (NetworkPolicy default/b), line 8: spec.ingress[0].ports[0].port: must be between 1 and 65535",
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// What nodeplane cannot enforce yet is refused with exit 2, a message per
// field naming file, document and path, and no verdict.
func TestUnsupportedReport(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"-policies", "testdata/golden/unsupported", "-from", "k8s:app=web", "-to", "k8s:app=db", "-dport", "80"}, &stdout, &stderr)
	if code != exitBadInput || stdout.Len() != 0 {
		t.Fatalf("exit %d, stdout %q", code, stdout.String())
	}
	for _, want := range []string{
		"l7.yaml: document 1 (CiliumNetworkPolicy prod/dns-only), line 14: spec.egress[0].toPorts[0].rules.dns: DNS rules are not supported yet",
		"other.yaml: document 1 (CiliumNetworkPolicy prod/fqdn), line 10: spec.egress[0].toFQDNs: toFQDNs is not supported yet",
		"other.yaml: document 2 (CiliumNetworkPolicy prod/mutual-auth), line 24: spec.ingress[0].authentication.mode: mutual authentication (mode \"required\") is not supported yet",
		"other.yaml: document 3 (CiliumClusterwideNetworkPolicy host), line 31: spec.nodeSelector: host policies (nodeSelector) are not supported yet",
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

func TestExplanation(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"-policies", "testdata/golden/deny",
		"-from", "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default",
		"-to", "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default",
		"-dport", "22/TCP"}, &stdout, &stderr)
	if code != exitDenied {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{
		"Egress of the source",
		"selects: CiliumClusterwideNetworkPolicy no-metadata spec.egressDeny[0]",
		"default deny: no",
		"Ingress of the destination",
		"default deny: yes, because of CiliumNetworkPolicy prod/db spec.ingress[0]",
		"DENIED by CiliumNetworkPolicy prod/db spec.ingressDeny[0] (peer any:app=web,",
		"allowed by CiliumNetworkPolicy prod/db spec.ingress[0]",
		"but deny takes precedence",
		"datapath: denied (181) by entry {ingress identity",
		"Final verdict: DENIED",
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("explanation lacks %q:\n%s", want, stdout.String())
		}
	}
}

// A denial for want of an allow explains each allow item's near miss: here
// the peer's cluster (a requirement Cilium adds to peer selectors) and the
// port. The first line and the verdict line keep their form.
func TestNearMissExplanation(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"-policies", "testdata/golden/namespaces",
		"-from", "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=far",
		"-to", "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default",
		"-dport", "5433/TCP"}, &stdout, &stderr)
	if code != exitDenied {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	if !strings.HasPrefix(out, "Tracing 5433/TCP from identity ") || !strings.HasSuffix(out, "\nFinal verdict: DENIED\n") {
		t.Errorf("first or last line changed:\n%s", out)
	}
	for _, want := range []string{
		"  no rule allows it: denied by default deny\n" +
			"  near misses (allow items that select the endpoint, and what failed):\n" +
			"    CiliumNetworkPolicy prod/db-from-web spec.ingress[0]\n" +
			"      peer: any:app=web,k8s:io.cilium.k8s.policy.cluster=default,k8s:io.kubernetes.pod.namespace=prod: " +
			"requires k8s:io.cilium.k8s.policy.cluster=default (Cilium adds the local cluster to peer selectors that name no cluster); " +
			"the peer has k8s:io.cilium.k8s.policy.cluster=far\n" +
			"      port: 5433/TCP is not among 5432/TCP\n" +
			"  datapath: denied (133): no entry matches",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explanation lacks\n%s\nin\n%s", want, out)
		}
	}
}

// An inconsistency between the compiled map and the rules is a bug, not a
// verdict: exit 2 with the reason on stderr and no verdict line. No
// correct repository disagrees with itself, so a tracer stands in for one
// that does.
func TestInconsistencyIsAnError(t *testing.T) {
	for _, allowed := range []bool{true, false} {
		inconsistent := func(repo *policy.Repository, req policy.TraceRequest) (*policy.TraceResult, error) {
			res, err := repo.Trace(req)
			if err != nil {
				t.Fatalf("trace: %v", err)
			}
			res.Allowed = allowed
			return res, fmt.Errorf("trace egress of %d: map says allowed, rules say denied (133): %w", req.From.ID, policy.ErrInconsistent)
		}
		var stdout, stderr bytes.Buffer
		code := runWith([]string{"-policies", "testdata/golden/deny",
			"-from", "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default",
			"-to", "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default",
			"-dport", "22/TCP"}, &stdout, &stderr, inconsistent)
		if code != exitError {
			t.Errorf("allowed=%v: exit %d, want %d", allowed, code, exitError)
		}
		if strings.Contains(strings.ToLower(stdout.String()), "verdict") {
			t.Errorf("allowed=%v: a verdict was printed:\n%s", allowed, stdout.String())
		}
		if !strings.Contains(stderr.String(), "map says allowed, rules say denied") ||
			!strings.Contains(stderr.String(), "internal error") {
			t.Errorf("allowed=%v: stderr does not explain the inconsistency:\n%s", allowed, stderr.String())
		}
	}
}

// TestHTTPExplanation checks that a denied HTTP request names every rule
// and the field that failed, and an allowed one the rule that allowed it.
func TestHTTPExplanation(t *testing.T) {
	const web = "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default"
	const db = "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default"
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"-http-method", "GET", "-http-path", "/public/x"}, exitDenied, []string{
			"redirected to the HTTP proxy (port 15001)",
			`HTTP rule CiliumNetworkPolicy prod/http-get spec.ingress[0].toPorts[0].rules.http[0]: method "GET", path "/public/.*", header "X-Token: 12345"`,
			"request DENIED (403 Access denied): no HTTP rule matches",
			"spec.ingress[0].toPorts[0].rules.http[0]: headers[0] failed: header X-Token missing",
			`spec.ingress[0].toPorts[0].rules.http[1]: method failed: method "GET" does not match "POST"`,
			"ingress verdict: DENIED",
		}},
		{[]string{"-http-method", "GET", "-http-path", "/public/x", "-http-header", "x-token: 12345"}, exitAllowed, []string{
			"request ALLOWED by HTTP rule CiliumNetworkPolicy prod/http-get spec.ingress[0].toPorts[0].rules.http[0]",
			"Final verdict: ALLOWED",
		}},
		{nil, exitAllowed, []string{"(no request traced: requests are decided by these rules, any one allowing)"}},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"-policies", "testdata/golden/l7", "-from", web, "-to", db, "-dport", "80/TCP"}, tc.args...)
		if code := run(args, &stdout, &stderr); code != tc.code {
			t.Fatalf("%v: exit %d, want %d: %s%s", tc.args, code, tc.code, stdout.String(), stderr.String())
		}
		for _, w := range tc.want {
			if !strings.Contains(stdout.String(), w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, stdout.String())
			}
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-policies", "testdata/golden/l7", "-from", web, "-to", db, "-dport", "80", "-http-header", "novalue"}, &stdout, &stderr); code != exitBadInput {
		t.Errorf("-http-header without a colon: exit %d", code)
	}
}
