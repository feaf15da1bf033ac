package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/lb"
)

const goodConfig = `
interface: eth1
mode: dnat
maglev:
  tableSize: 251
  seed: q1w2e3r4t5y6u7i8
services:
  - frontend: 10.99.0.1:80/TCP
    backends:
      - address: 10.2.0.2:8080
      - address: 10.2.1.2:8080
        weight: 300
      - address: 10.2.2.2:8080
        state: terminating
  - frontend: "[fd99::1]:53/udp"
    algorithm: random
    externalTrafficPolicy: Local
    backends:
      - address: "[fd00:2::2]:5353"
`

func TestParseConfig(t *testing.T) {
	cfg, err := parseConfig(strings.NewReader(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Interface != "eth1" || cfg.NS.MaglevTableSize != 251 || cfg.NS.MaglevHashSeed != "q1w2e3r4t5y6u7i8" {
		t.Errorf("config %+v", cfg)
	}
	tcp := lb.Frontend{Addr: netip.MustParseAddrPort("10.99.0.1:80"), Protocol: nodeplane.ProtoTCP}
	udp := lb.Frontend{Addr: netip.MustParseAddrPort("[fd99::1]:53"), Protocol: nodeplane.ProtoUDP}
	want := map[lb.Frontend]serviceConfig{
		tcp: {lb.Service{Frontend: tcp, Type: lb.LoadBalancer, Algorithm: lb.AlgorithmMaglev}, []lb.Backend{
			{Addr: netip.MustParseAddrPort("10.2.0.2:8080"), Weight: 100},
			{Addr: netip.MustParseAddrPort("10.2.1.2:8080"), Weight: 300},
			{Addr: netip.MustParseAddrPort("10.2.2.2:8080"), Weight: 100, State: lb.BackendTerminating},
		}},
		udp: {lb.Service{Frontend: udp, Type: lb.LoadBalancer, Algorithm: lb.AlgorithmRandom, ExternalTrafficLocal: true}, []lb.Backend{
			{Addr: netip.MustParseAddrPort("[fd00:2::2]:5353"), Weight: 100},
		}},
	}
	if len(cfg.Services) != len(want) {
		t.Fatalf("%d services", len(cfg.Services))
	}
	for fe, w := range want {
		if got := cfg.Services[fe]; !got.equal(w) {
			t.Errorf("%s: %+v, want %+v", fe, got, w)
		}
	}

	// Defaults: Cilium's table size and seed.
	cfg, err = parseConfig(strings.NewReader("interface: eth0\n"))
	if err != nil || cfg.NS.MaglevTableSize != 16381 || cfg.NS.MaglevHashSeed != "JLfvgnHc2kaSUFaI" {
		t.Errorf("defaults: %+v, %v", cfg, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	svc := func(s string) string { return "interface: eth0\nservices:\n" + s }
	for _, tc := range []struct{ name, yaml, msg string }{
		{"empty", "", "empty config"},
		{"no interface", "services: []\n", "interface: required"},
		{"unknown field", "interface: eth0\nvips: []\n", "field vips not found"},
		{"bad table size", "interface: eth0\nmaglev: {tableSize: 250}\n", "maglev.tableSize"},
		{"bad seed", "interface: eth0\nmaglev: {seed: abc}\n", "maglev.seed"},
		{"frontend protocol", svc("  - frontend: 10.99.0.1:80/SCTP\n"), "TCP or UDP"},
		{"frontend weight", svc("  - frontend: 10.99.0.1:80/TCP@3\n"), "no weight"},
		{"frontend address", svc("  - frontend: 10.99.0.300:80/TCP\n"), "services[0].frontend"},
		{"frontend twice", svc("  - frontend: 10.99.0.1:80/TCP\n  - frontend: 10.99.0.1:80/tcp\n"), "listed twice"},
		{"traffic policy", svc("  - frontend: 10.99.0.1:80/TCP\n    externalTrafficPolicy: nearby\n"), "want cluster or local"},
		{"algorithm", svc("  - frontend: 10.99.0.1:80/TCP\n    algorithm: roundrobin\n"), "want maglev or random"},
		{"per-service mode", svc("  - frontend: 10.99.0.1:80/TCP\n    mode: snat\n"), "field mode not found"},
		{"mode", "interface: eth0\nmode: nat64\n", "want dnat, snat or dsr"},
		{"dsr with addresses", "interface: eth0\nmode: dsr\nsnatAddresses: [10.1.0.1]\n", "only with mode snat"},
		{"snat without addresses", "interface: eth0\nmode: snat\n", "snatAddresses required"},
		{"snat bad address", "interface: eth0\nmode: snat\nsnatAddresses: [10.1.0]\n", "snatAddresses[0]"},
		{"addresses without snat", "interface: eth0\nsnatAddresses: [10.1.0.1]\n", "only with mode snat"},
		{"backend address", svc("  - frontend: 10.99.0.1:80/TCP\n    backends: [{address: 10.2.0.2}]\n"), "backends[0].address"},
		{"backend weight 0", svc("  - frontend: 10.99.0.1:80/TCP\n    backends: [{address: 10.2.0.2:80, weight: 0}]\n"), "0 is not a weight"},
		{"backend weight big", svc("  - frontend: 10.99.0.1:80/TCP\n    backends: [{address: 10.2.0.2:80, weight: 70000}]\n"), "cannot unmarshal"},
		{"backend state", svc("  - frontend: 10.99.0.1:80/TCP\n    backends: [{address: 10.2.0.2:80, state: draining}]\n"), "want active or terminating"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(strings.NewReader(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %v, want one saying %q", err, tc.msg)
			}
		})
	}
}

// fakeLB records what apply does.
type fakeLB struct{ calls []string }

func (f *fakeLB) Upsert(s lb.Service, b []lb.Backend) error {
	f.calls = append(f.calls, fmt.Sprintf("upsert %s %d", s.Frontend, len(b)))
	return nil
}

func (f *fakeLB) Delete(fe lb.Frontend) error {
	f.calls = append(f.calls, "delete "+fe.String())
	return nil
}

// TestApplyReload: a reload touches only the services that changed.
func TestApplyReload(t *testing.T) {
	mustParse := func(s string) *config {
		cfg, err := parseConfig(strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	first := mustParse(goodConfig)
	f := &fakeLB{}
	if err := apply(f, nil, first); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, "; "); got != "upsert 10.99.0.1:80/TCP 3; upsert [fd99::1]:53/UDP 1" {
		t.Errorf("initial apply: %s", got)
	}

	// Same file: nothing to do.
	f.calls = nil
	if err := apply(f, first, mustParse(goodConfig)); err != nil || len(f.calls) != 0 {
		t.Errorf("reload of the same file: %v, %v", f.calls, err)
	}

	// One backend's weight changes, the UDP service goes, a new one comes.
	next := strings.Replace(goodConfig, "weight: 300", "weight: 200", 1)
	next = next[:strings.Index(next, `  - frontend: "[fd99::1]`)] + "  - frontend: 10.99.0.2:443/TCP\n    backends: [{address: 10.2.0.2:8443}]\n"
	f.calls = nil
	if err := apply(f, first, mustParse(next)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, "; "); got != "upsert 10.99.0.1:80/TCP 3; upsert 10.99.0.2:443/TCP 1; delete [fd99::1]:53/UDP" {
		t.Errorf("reload: %s", got)
	}

	// The interface and Maglev settings need a restart.
	f.calls = nil
	err := apply(f, first, mustParse(strings.Replace(goodConfig, "tableSize: 251", "tableSize: 509", 1)))
	if err == nil || len(f.calls) != 0 {
		t.Errorf("changed table size: %v, %v", f.calls, err)
	}
}

func TestRunCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte(goodConfig), 0o600)
	os.WriteFile(bad, []byte(strings.Replace(goodConfig, "mode: dnat", "mode: ipip", 1)), 0o600)
	snat := filepath.Join(dir, "snat.yaml")
	os.WriteFile(snat, []byte(strings.Replace(goodConfig, "mode: dnat", "mode: snat\nsnatAddresses: [10.1.0.1, fd00:1::1]", 1)), 0o600)
	if code, stdout, stderr := runCmd("run", "-config", snat, "-check"); code != 0 {
		t.Errorf("snat: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	dsr := filepath.Join(dir, "dsr.yaml")
	os.WriteFile(dsr, []byte(strings.Replace(goodConfig, "mode: dnat", "mode: dsr", 1)), 0o600)
	if code, stdout, stderr := runCmd("run", "-config", dsr, "-check"); code != 0 {
		t.Errorf("dsr: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	code, stdout, stderr := runCmd("run", "-config", good, "-check")
	if code != 0 || !strings.Contains(stdout, "2 services on eth1") {
		t.Errorf("good: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, stderr = runCmd("run", "-config", bad, "-check")
	if code != exitBadInput || stdout != "" || !strings.Contains(stderr, "want dnat, snat or dsr") {
		t.Errorf("bad: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, _ = runCmd("run", "-config", filepath.Join(dir, "missing.yaml"))
	if code != exitBadInput || stdout != "" {
		t.Errorf("missing file: exit %d, stdout %q", code, stdout)
	}
	code, _, _ = runCmd("run")
	if code != exitBadInput {
		t.Errorf("no -config: exit %d", code)
	}
}
