package main

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const serviceHead = `apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: demo
spec:
  clusterIP: 10.96.0.10
  ports:
  - port: 8080
    protocol: TCP
`

// TestServiceFieldsNotEnforcedAreRefused: a Service field the agent cannot
// enforce is an error naming the field, not a cluster IP that quietly
// ignores it.
func TestServiceFieldsNotEnforcedAreRefused(t *testing.T) {
	for _, tc := range []struct{ extra, field string }{
		{"  type: NodePort\n", "spec.type"},
		{"  type: LoadBalancer\n", "spec.type"},
		{"  internalTrafficPolicy: Nearby\n", "spec.internalTrafficPolicy"},
		{"  sessionAffinity: Sticky\n", "spec.sessionAffinity"},
		{"  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 0\n", "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "svc.yaml"), []byte(serviceHead+tc.extra), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := loadManifests(dir, "node-a")
		me, ok := errors.AsType[*ManifestError](err)
		if !ok || me.Field != tc.field {
			t.Errorf("%q: %v, want an error at %s", strings.TrimSpace(tc.extra), err, tc.field)
		}
	}
}

func TestServiceSessionAffinityTimeout(t *testing.T) {
	for _, tc := range []struct {
		extra string
		want  time.Duration
	}{
		{"", 0},
		{"  sessionAffinity: ClientIP\n", 3 * time.Hour},
		{"  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 60\n", time.Minute},
		{"  type: ClusterIP\n  internalTrafficPolicy: Cluster\n", 0},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "svc.yaml"), []byte(serviceHead+tc.extra), 0o600); err != nil {
			t.Fatal(err)
		}
		set, err := loadManifests(dir, "node-a")
		if err != nil || len(set.services) != 1 {
			t.Fatalf("%q: %v, %d services", tc.extra, err, len(set.services))
		}
		for _, s := range set.services {
			if s.svc.SessionAffinity != tc.want {
				t.Errorf("%q: session affinity %v, want %v", tc.extra, s.svc.SessionAffinity, tc.want)
			}
		}
	}
}

// TestServiceInternalTrafficPolicyLocal: internalTrafficPolicy Local is
// enforced through lb (InternalTrafficLocal); the endpoints whose nodeName
// is the agent's node are the local backends.
func TestServiceInternalTrafficPolicyLocal(t *testing.T) {
	const slice = `---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: demo
  labels:
    kubernetes.io/service-name: api
addressType: IPv4
endpoints:
- addresses: [10.0.1.5]
  nodeName: node-a
- addresses: [10.0.2.5]
  nodeName: node-b
- addresses: [10.0.3.5]
ports:
- port: 8080
  protocol: TCP
`
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "svc.yaml"), []byte(serviceHead+"  internalTrafficPolicy: Local\n"+slice), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := loadManifests(dir, "node-a")
	if err != nil || len(set.services) != 1 {
		t.Fatalf("%v, %d services", err, len(set.services))
	}
	for _, s := range set.services {
		if !s.svc.InternalTrafficLocal {
			t.Errorf("internalTrafficPolicy Local not passed to lb")
		}
		local := map[string]bool{}
		for _, b := range s.backends {
			local[b.Addr.Addr().String()] = b.Local
		}
		if want := map[string]bool{"10.0.1.5": true, "10.0.2.5": false, "10.0.3.5": false}; !maps.Equal(local, want) {
			t.Errorf("local backends %v, want %v", local, want)
		}
	}
}
