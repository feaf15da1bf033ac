package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		code       uint   // 0: valid
		msg        string // part of the error's details
	}{
		{"minimal", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane"}`, 0, ""},
		{"socket", `{"cniVersion":"1.0.0","name":"n","type":"nodeplane","agentSocket":"/tmp/a.sock"}`, 0, ""},
		{"labels both ways", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"labels":{"app":"web"}},"args":{"cni":{"labels":[{"key":"app","value":"web"},{"key":"tier","value":"fe"}]}}}`, 0, ""},
		{"not json", `{"cniVersion":`, types.ErrDecodingFailure, "unexpected end"},
		{"wrong shape", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"labels":["app"]}}`, types.ErrDecodingFailure, "cannot unmarshal"},
		{"negative rate", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"bandwidth":{"egressRate":-1}}}`, types.ErrDecodingFailure, "cannot unmarshal"},
		{"no name", `{"cniVersion":"1.1.0","type":"nodeplane"}`, types.ErrInvalidNetworkConfig, "missing network name"},
		{"renamed", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane-cni"}`, 0, ""},
		{"no type", `{"cniVersion":"1.1.0","name":"n"}`, types.ErrInvalidNetworkConfig, `missing "type"`},
		{"no version", `{"name":"n","type":"nodeplane"}`, types.ErrInvalidNetworkConfig, "cniVersion"},
		{"bad version", `{"cniVersion":"one","name":"n","type":"nodeplane"}`, types.ErrIncompatibleCNIVersion, "one"},
		{"relative socket", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","agentSocket":"agent.sock"}`, types.ErrInvalidNetworkConfig, "not an absolute path"},
		{"ipam", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, "remove \"ipam\""},
		{"label conflict", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"labels":{"app":"web"}},"args":{"cni":{"labels":[{"key":"app","value":"db"}]}}}`, types.ErrInvalidNetworkConfig, `label "app" is "web"`},
		{"empty label key", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"labels":{"":"web"}}}`, types.ErrInvalidNetworkConfig, "empty label key"},
		{"label separator", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"labels":{"a,b":"web"}}}`, types.ErrInvalidNetworkConfig, "contains one of"},
		{"long value", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"labels":{"a":"` + strings.Repeat("x", 64) + `"}}}`, types.ErrInvalidNetworkConfig, "at most 63"},
		{"containerd's burst", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"bandwidth":{"egressRate":1000000,"egressBurst":4294967295,"ingressRate":1000000,"ingressBurst":4294967295}}}`, 0, ""},
		{"kubelet's burst", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"bandwidth":{"egressRate":1000000,"egressBurst":2147483647}}}`, 0, ""},
		{"CRI-O's burst", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"bandwidth":{"ingressRate":1000000,"ingressBurst":34359738359}}}`, 0, ""},
		{"rate without burst", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"bandwidth":{"egressRate":1000000}}}`, 0, ""},
		{"small burst", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"bandwidth":{"egressRate":1000000,"egressBurst":1000000}}}`, types.ErrInvalidNetworkConfig, "egressBurst 1000000 bits cannot be enforced"},
		{"burst just below unbounded", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"bandwidth":{"ingressRate":1000000,"ingressBurst":2147483646}}}`, types.ErrInvalidNetworkConfig, "ingressBurst 2147483646"},
		{"burst without rate", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","runtimeConfig":{"bandwidth":{"egressBurst":4294967295}}}`, types.ErrInvalidNetworkConfig, "without an egressRate"},
		{"bad prevResult", `{"cniVersion":"1.1.0","name":"n","type":"nodeplane","prevResult":{"ips":[{"address":"nope"}]}}`, types.ErrDecodingFailure, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := parseConfig([]byte(tc.conf))
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("parseConfig: %v", err)
				}
				return
			}
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("parseConfig = %+v, %v; want a *types.Error with code %d", conf, err, tc.code)
			}
			if te.Code != tc.code || !strings.Contains(te.Msg+": "+te.Details, tc.msg) {
				t.Fatalf("error %d %q %q; want code %d mentioning %q", te.Code, te.Msg, te.Details, tc.code, tc.msg)
			}
		})
	}
}

func TestParseConfigDefaults(t *testing.T) {
	conf, err := parseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","type":"nodeplane",
		"runtimeConfig":{"labels":{"app":"web"},"bandwidth":{"egressRate":1000000,"egressBurst":4294967295,"ingressRate":2000000}},
		"args":{"cni":{"labels":[{"key":"tier","value":"fe"}]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.AgentSocket != agentapi.DefaultSocket {
		t.Errorf("AgentSocket = %q, want the default %q", conf.AgentSocket, agentapi.DefaultSocket)
	}
	labels, err := conf.labels()
	if err != nil || len(labels) != 2 || labels["app"] != "web" || labels["tier"] != "fe" {
		t.Errorf("labels = %v, %v", labels, err)
	}
	if bw := conf.RuntimeConfig.Bandwidth; bw == nil || bw.EgressRate != 1000000 || bw.IngressRate != 2000000 {
		t.Errorf("bandwidth = %+v", bw)
	}
}

func TestParseArgs(t *testing.T) {
	a, err := parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;K8S_POD_UID=u;FOO=bar")
	if err != nil || a.K8S_POD_NAMESPACE != "prod" || a.K8S_POD_NAME != "web-0" {
		t.Fatalf("parseArgs = %+v, %v", a, err)
	}
	if _, err := parseArgs("K8S_POD_NAMESPACE=prod;FOO=bar"); err == nil || err.(*types.Error).Code != types.ErrInvalidEnvironmentVariables {
		t.Fatalf("unknown key without IgnoreUnknown: %v", err)
	}
	if _, err := parseArgs("K8S_POD_NAMESPACE"); err == nil {
		t.Fatal("a pair without '=' parsed")
	}
}
