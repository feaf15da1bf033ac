package main

import (
	"errors"
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
		{"  internalTrafficPolicy: Local\n", "spec.internalTrafficPolicy"},
		{"  sessionAffinity: Sticky\n", "spec.sessionAffinity"},
		{"  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 0\n", "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "svc.yaml"), []byte(serviceHead+tc.extra), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := loadManifests(dir)
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
		set, err := loadManifests(dir)
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
