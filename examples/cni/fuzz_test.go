package main

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzParseConfig feeds the network configuration parser arbitrary bytes.
// It must never panic; it either fails with a CNI error object whose code
// is one of the configuration codes, or returns a configuration that holds
// the invariants the commands rely on. The seed corpus is in
// testdata/fuzz/FuzzParseConfig.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"np","type":"nodeplane"}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"np","type":"nodeplane","runtimeConfig":{"bandwidth":{"egressRate":1000000,"egressBurst":4294967295,"ingressBurst":7}}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"np","type":"nodeplane","agentSocket":"/run/a.sock","runtimeConfig":{"labels":{"app":"web"},"bandwidth":{"egressRate":1}},"args":{"cni":{"labels":[{"key":"tier","value":"fe"}]}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := parseConfig(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("error %v is not a CNI error object", err)
			}
			switch te.Code {
			case types.ErrDecodingFailure, types.ErrInvalidNetworkConfig, types.ErrIncompatibleCNIVersion:
			default:
				t.Fatalf("error code %d (%v)", te.Code, te)
			}
			if te.Msg == "" {
				t.Fatalf("error code %d without a message", te.Code)
			}
			return
		}
		if conf.Name == "" || conf.Type == "" || conf.CNIVersion == "" || !filepath.IsAbs(conf.AgentSocket) {
			t.Fatalf("accepted %+v", conf)
		}
		labels, err := conf.labels()
		if err != nil {
			t.Fatalf("accepted a configuration whose labels fail: %v", err)
		}
		for k, v := range labels {
			if checkLabel(k, v) != nil {
				t.Fatalf("accepted label %q=%q", k, v)
			}
		}
		// A burst is accepted only as "no bound", and only with its rate.
		if bw := conf.RuntimeConfig.Bandwidth; bw != nil {
			for _, rb := range [][2]uint64{{bw.IngressRate, bw.IngressBurst}, {bw.EgressRate, bw.EgressBurst}} {
				if rb[1] != 0 && (rb[0] == 0 || rb[1] < unboundedBurst) {
					t.Fatalf("accepted bandwidth %+v", *bw)
				}
			}
		}
	})
}
