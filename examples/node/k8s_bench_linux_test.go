package main

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// benchPolicy lets app=web reach app=db on one port.
const benchPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
`

// hasIngressPort reports whether the kernel policy map of ep allows
// ingress on port.
func hasIngressPort(tb testing.TB, ep *datapath.Endpoint, port uint16) bool {
	st, err := ep.Policy().Dump()
	if err != nil {
		tb.Fatal(err)
	}
	for k := range st {
		if k.Direction == mapstate.Ingress && k.Port == port {
			return true
		}
	}
	return false
}

// BenchmarkKubernetesPolicyToMap measures the time from a
// CiliumNetworkPolicy update sent to the API server to the kernel policy
// map of the endpoint it selects holding the new port, over 100 changes
// (p50, p99). Baseline: the same change given to the agent's engine
// directly (ReplacePolicy), with no API server, watch or parser between.
func BenchmarkKubernetesPolicyToMap(b *testing.B) {
	e := newK8sEnv(b)
	e.startAgent(false)
	e.pod("prod", "web", k8sNode, map[string]string{"app": "web"}, false)
	db := e.pod("prod", "db", k8sNode, map[string]string{"app": "db"}, false)
	dpEP, ok := e.a.dp.Endpoint(datapath.EndpointID(db.resp.EndpointID))
	if !ok {
		b.Fatal("db has no datapath endpoint")
	}
	const changes = 100
	measure := func(base uint16, apply func(port uint16)) (p50, p99 time.Duration) {
		var lat []time.Duration
		for i := range changes {
			port := base + uint16(i)
			start := time.Now()
			apply(port)
			for !hasIngressPort(b, dpEP, port) {
				if time.Since(start) > 30*time.Second {
					b.Fatalf("port %d not in the map after 30s", port)
				}
				time.Sleep(200 * time.Microsecond)
			}
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		b.Logf("port base %d: fastest %v, slowest %v", base, lat[:3], lat[len(lat)-3:])
		return lat[len(lat)/2], lat[len(lat)*99/100]
	}
	for b.Loop() {
		apiP50, apiP99 := measure(20000, func(port uint16) { e.applyCNP(fmt.Sprintf(benchPolicy, "bench", port)) })
		directP50, directP99 := measure(21000, func(port uint16) {
			pols, err := policy.Parse(fmt.Appendf(nil, benchPolicy, "direct", port), "bench")
			if err != nil {
				b.Fatal(err)
			}
			if _, err := e.a.engine.ReplacePolicy(pols[0]); err != nil {
				b.Fatal(err)
			}
		})
		b.ReportMetric(float64(apiP50.Microseconds()), "api-p50-µs")
		b.ReportMetric(float64(apiP99.Microseconds()), "api-p99-µs")
		b.ReportMetric(float64(directP50.Microseconds()), "engine-p50-µs")
		b.ReportMetric(float64(directP99.Microseconds()), "engine-p99-µs")
	}
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// BenchmarkKubernetesAgentMemory measures the agent's live heap when the
// API server holds 1000 pods (of another node, each with an address: an
// identity reference and an ipcache entry each, 50 distinct label sets)
// and 100 CiliumNetworkPolicies, against the baseline of the same agent on
// an API server holding neither. The agent runs in the test process, so
// the heap is the process's after a collection, with the agent closed for
// the baseline's zero.
func BenchmarkKubernetesAgentMemory(b *testing.B) {
	e := newK8sEnv(b)
	const pods, policies = 1000, 100
	for b.Loop() {
		before := heapInUse()
		e.startAgent(false)
		empty := heapInUse()
		for i := range policies {
			e.applyCNP(fmt.Sprintf(benchPolicy, fmt.Sprintf("p%03d", i), 30000+i))
		}
		for i := range pods {
			name := fmt.Sprintf("remote-%04d", i)
			e.create(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name,
				Labels: map[string]string{"app": fmt.Sprintf("app-%02d", i%50), "tier": "bench"}},
				Spec: corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}}})
			e.setPodIP("prod", name, netip.AddrFrom4([4]byte{10, 210, byte(i >> 8), byte(i)}))
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			e.a.mu.Lock()
			n, np := len(e.a.kube.remote), len(e.a.manifests.policies)
			e.a.mu.Unlock()
			if n == pods && np == policies {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("agent has %d remote pods and %d policies", n, np)
			}
			time.Sleep(100 * time.Millisecond)
		}
		full := heapInUse()
		b.ReportMetric(float64(empty-before)/(1<<20), "empty-MiB")
		b.ReportMetric(float64(full-before)/(1<<20), "1kpods-100cnp-MiB")
	}
}
