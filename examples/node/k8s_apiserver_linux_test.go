package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// k8sBinsEnv names the directory holding kube-apiserver and etcd, as
// `.ci/k8s-bins` prints it.
const k8sBinsEnv = "NODEPLANE_K8S_BINS"

// k8sBins returns the directory of the real kube-apiserver and etcd. Without
// it the test skips, or fails when NODEPLANE_REQUIRE_PRIV=1: CI builds
// them, so there a missing binary is a broken CI, not a missing kernel
// feature.
func k8sBins(t testing.TB) string {
	t.Helper()
	dir := os.Getenv(k8sBinsEnv)
	if dir == "" {
		msg := "a real kube-apiserver and etcd are needed: run `export " + k8sBinsEnv + "=$(.ci/k8s-bins)`"
		if os.Getenv(testutils.RequirePrivEnv) == "1" {
			t.Fatalf("%s; %s=1 forbids skipping", msg, testutils.RequirePrivEnv)
		}
		t.Skip(msg)
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := exec.LookPath(filepath.Join(dir, b)); err != nil {
			t.Fatalf("%s=%s: %v", k8sBinsEnv, dir, err)
		}
	}
	return dir
}

// apiServer is a real etcd and kube-apiserver running in a network
// namespace of their own (loopback only), reached from the test and the
// agent through a dialer that makes its sockets in that namespace.
type apiServer struct {
	t       testing.TB
	bins    string
	dir     string
	ns      *testutils.NetNS
	token   string
	mu      sync.Mutex
	apiCmd  *exec.Cmd
	apiDone chan struct{}

	rest   *rest.Config
	client kubernetes.Interface
	dyn    dynamic.Interface
}

const (
	etcdURL       = "http://127.0.0.1:2379"
	apiServerAddr = "127.0.0.1:6443"
)

// startAPIServer starts etcd and kube-apiserver and waits until the API
// server is ready and the cilium.io/v2 policy CRDs are established.
func startAPIServer(t testing.TB) *apiServer {
	t.Helper()
	s := &apiServer{t: t, bins: k8sBins(t), dir: t.TempDir(), ns: testutils.NewNetNS(t)}
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	s.token = hex.EncodeToString(tok)
	if err := os.WriteFile(filepath.Join(s.dir, "tokens.csv"), []byte(s.token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}

	etcd := exec.Command(filepath.Join(s.bins, "etcd"), "--data-dir", filepath.Join(s.dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level", "error")
	etcd.Stdout, etcd.Stderr = prefixWriter{t, "etcd: "}, prefixWriter{t, "etcd: "}
	if err := s.ns.Start(etcd); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	etcdDone := make(chan struct{})
	go func() { _ = etcd.Wait(); close(etcdDone) }()
	t.Cleanup(func() {
		_ = etcd.Process.Kill()
		<-etcdDone
	})

	s.rest = &rest.Config{
		Host: "https://" + apiServerAddr, BearerToken: s.token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial:            s.dial, QPS: 500, Burst: 1000, Timeout: 30 * time.Second,
	}
	if s.client, err = kubernetes.NewForConfig(s.rest); err != nil {
		t.Fatal(err)
	}
	if s.dyn, err = dynamic.NewForConfig(s.rest); err != nil {
		t.Fatal(err)
	}
	s.startKubeAPIServer()
	t.Cleanup(s.stopKubeAPIServer)
	s.installCRDs()
	return s
}

// dial connects from inside the API server's namespace.
func (s *apiServer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := s.ns.Do(func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// startKubeAPIServer starts kube-apiserver on the running etcd and waits
// until /readyz answers ok.
func (s *apiServer) startKubeAPIServer() {
	t := s.t
	t.Helper()
	cmd := exec.Command(filepath.Join(s.bins, "kube-apiserver"),
		"--etcd-servers", etcdURL,
		"--cert-dir", filepath.Join(s.dir, "certs"),
		"--secure-port", "6443", "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		// Loopback only: the endpoint reconciler refuses 127.0.0.1.
		"--endpoint-reconciler-type", "none",
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(s.dir, "sa.key"),
		"--service-account-signing-key-file", filepath.Join(s.dir, "sa.key"),
		"--token-auth-file", filepath.Join(s.dir, "tokens.csv"),
		"--authorization-mode", "AlwaysAllow",
		// No controller manager makes default service accounts.
		"--disable-admission-plugins", "ServiceAccount",
		"-v", "0")
	// Its log (klog, on stderr) is long; it is shown when it fails.
	logPath := filepath.Join(s.dir, fmt.Sprintf("kube-apiserver-%d.log", time.Now().UnixNano()))
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := s.ns.Start(cmd); err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.apiCmd, s.apiDone = cmd, done
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	for {
		body, err := s.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			break
		}
		select {
		case <-done:
			t.Fatalf("kube-apiserver exited before it was ready (last: %v)\n%s", err, tail(logPath))
		case <-ctx.Done():
			t.Fatalf("kube-apiserver not ready: %v %s\n%s", err, body, tail(logPath))
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Logf("kube-apiserver ready in %v", time.Since(start).Round(time.Millisecond))
}

// stopKubeAPIServer stops kube-apiserver (etcd keeps running).
func (s *apiServer) stopKubeAPIServer() {
	s.mu.Lock()
	cmd, done := s.apiCmd, s.apiDone
	s.apiCmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// crdGVR is the CRD resource itself.
var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs installs CiliumNetworkPolicy and
// CiliumClusterwideNetworkPolicy with an open schema: the agent, not the
// API server, validates them (as it must for what a schema cannot check).
func (s *apiServer) installCRDs() {
	t := s.t
	t.Helper()
	ctx := context.Background()
	for _, c := range []struct{ kind, plural, scope, short string }{
		{"CiliumNetworkPolicy", "ciliumnetworkpolicies", "Namespaced", "cnp"},
		{"CiliumClusterwideNetworkPolicy", "ciliumclusterwidenetworkpolicies", "Cluster", "ccnp"},
	} {
		crd := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
			"metadata": map[string]any{"name": c.plural + ".cilium.io"},
			"spec": map[string]any{
				"group": "cilium.io", "scope": c.scope,
				"names": map[string]any{"kind": c.kind, "plural": c.plural, "singular": strings.ToLower(c.kind),
					"listKind": c.kind + "List", "shortNames": []any{c.short}},
				"versions": []any{map[string]any{
					"name": "v2", "served": true, "storage": true,
					"subresources": map[string]any{"status": map[string]any{}},
					"schema": map[string]any{"openAPIV3Schema": map[string]any{
						"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
				}},
			},
		}}
		if _, err := s.dyn.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create CRD %s: %v", c.plural, err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for _, gvr := range []schema.GroupVersionResource{cnpResource, ccnpResource} {
		for {
			_, err := s.dyn.Resource(gvr).List(ctx, metav1.ListOptions{})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not served: %v", gvr.Resource, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// prefixWriter sends a process's output to the test log.
type prefixWriter struct {
	t      testing.TB
	prefix string
}

func (w prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		w.t.Log(w.prefix + l)
	}
	return len(b), nil
}

// tail returns the last lines of a log file.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}
