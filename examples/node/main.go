// Command node is an example node agent built from the nodeplane SDK: it
// gives pods addresses (ipam), security identities (identity, in process or
// in etcd), veths with the datapath's programs (datapath), address →
// identity mappings (identity/ipcache), the policy of a directory of
// Kubernetes manifests (policy, lb), and flows (flow, flow/hubble,
// flow/metrics). The CNI plugin (examples/cni) reaches it over a unix socket
// (examples/internal/agentapi).
//
//	node -manifests /etc/nodeplane/manifests
//	node -kubeconfig /etc/nodeplane/kubeconfig   (or -k8s-in-cluster)
//
// Endpoints are pinned under -bpffs and described in -state-dir, so the
// agent restarts (SIGTERM or a crash) without disturbing them: the next
// agent adopts them, allocates the same identities from the same labels
// and rewrites their policy.
//
// -manifests is a directory of YAML or JSON files holding NetworkPolicy,
// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy objects, which the
// agent enforces, and Service and EndpointSlice objects, which become socket
// load balancer services (cluster IPs only). The agent reads it every
// -manifest-poll; an invalid file is logged with its file, document and
// field, and the policy in force stays as it was until the files are valid.
// At startup there is no policy in force to keep, so invalid manifests stop
// the agent (endpoints pinned by an earlier agent keep their last policy
// meanwhile).
//
// -kubeconfig (or -k8s-in-cluster) makes a Kubernetes API server the
// source instead: shared informers follow pods, namespaces, NetworkPolicies,
// CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies, Services and
// EndpointSlices. An ADD that names its pod (K8S_POD_NAMESPACE,
// K8S_POD_NAME and K8S_POD_UID, as kubelet passes them) gets the pod's
// labels and its namespace's from the API server, so the identity is right
// at ADD (a UID the informer does not hold yet is waited for, then the ADD
// asks the runtime to try again); label
// changes move the endpoint to its new identity, and a pod deleted from
// the API server loses its endpoint. Pods of other nodes become ipcache
// entries with their identities. Policies are parsed as manifests are; an
// invalid one is logged and reported as an event on the object, and the
// previous version stays in force. The Node object's spec.podCIDRs are
// the address pools.
//
// Pods' bandwidth limits (the CNI plugin's runtimeConfig.bandwidth) are
// enforced by package bandwidth: EDT where the kernel has sch_fq and
// -bandwidth-devices names the egress devices to put fq on, else a token
// bucket per pod (the CNI bandwidth plugin's mechanism); the log says
// which. An ADD asking for a limit the agent cannot enforce fails.
//
// -demo runs a self-contained scenario instead, with no cluster and
// nothing of the host's touched: three pods (web, api, db) in namespaces
// of their own, a service in front of api, a policy that allows web → api
// on 8080 and denies web → db; it prints the flows and a summary, removes
// everything it made and exits. -demo-follow keeps it running until Ctrl-C.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodeplane/nodeplane/bandwidth"
	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command: it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		node          = fs.String("node", "", "node name (default: the host name)")
		stateDir      = fs.String("state-dir", "/var/lib/nodeplane", "directory of the agent's state files")
		bpffs         = fs.String("bpffs", "/sys/fs/bpf/nodeplane", "directory on a bpffs for pinned endpoints and services (/sys/fs/bpf is mounted if needed)")
		nodeNetNS     = fs.String("node-netns", "", "network namespace of the host-side interfaces (default: the agent's own)")
		poolV4        = fs.String("pool-v4", "10.200.0.0/24", "IPv4 pod address pool (empty: none)")
		poolV6        = fs.String("pool-v6", "fd00:10:200::/112", "IPv6 pod address pool (empty: none)")
		etcd          = fs.String("etcd", "", "comma-separated etcd endpoints for cluster-wide identities (default: in process)")
		cgroup        = fs.String("cgroup", "auto", `cgroup2 directory whose sockets the service load balancer translates ("auto": the cgroup2 root; "": services off)`)
		manifests     = fs.String("manifests", "", "directory of Kubernetes manifests to enforce (policies, Service, EndpointSlice)")
		kubeconfig    = fs.String("kubeconfig", "", "kubeconfig of the Kubernetes API server to follow for pods, namespaces, policies and services (instead of -manifests)")
		inCluster     = fs.Bool("k8s-in-cluster", false, "follow the Kubernetes API server of the cluster the agent runs in (its service account)")
		manifestPoll  = fs.Duration("manifest-poll", 2*time.Second, "how often -manifests is read for changes")
		socket        = fs.String("socket", agentapi.DefaultSocket, "unix socket of the local API (mode 0600)")
		hubbleListen  = fs.String("hubble-listen", "127.0.0.1:4245", "Hubble Observer gRPC address (empty: off)")
		metricsListen = fs.String("metrics-listen", "127.0.0.1:9962", "Prometheus metrics address (empty: off)")
		bwDevices     = fs.String("bandwidth-devices", "", "comma-separated egress devices on which EDT bandwidth limits install fq (default none: the token-bucket fallback)")
		bwMechanism   = fs.String("bandwidth-mechanism", "auto", "how pods' egress rates are enforced: auto (EDT where the kernel has sch_fq and -bandwidth-devices are given, else tbf), edt (required), tbf")
		httpProxyPort = fs.Uint("http-proxy-port", 0, "run the HTTP proxy on this port so that policies with HTTP rules are enforced (0: none; such policies are refused)")
		dnsProxyPort  = fs.Uint("dns-proxy-port", 0, "run the DNS proxy on this port so that policies with DNS rules and toFQDNs are enforced (0: none; such policies are refused)")
		minTTL        = fs.Uint("tofqdns-min-ttl", 0, "the minimum `seconds` an address learnt from DNS stays selectable by toFQDNs (0: the answer's TTL)")
		logLevel      = fs.String("log-level", "info", "debug, info, warn or error")
		demo          = fs.Bool("demo", false, "run the self-contained demo and exit")
		demoFollow    = fs.Bool("demo-follow", false, "run the demo and keep it running, with traffic and flows, until Ctrl-C")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "-log-level: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *demo || *demoFollow {
		// The demo's log only says what went wrong; stdout is for flows.
		if *logLevel == "info" {
			level = slog.LevelWarn
		}
		log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
		follow := demoConfig{Follow: *demoFollow}
		if *demoFollow {
			follow.HubbleListen, follow.MetricsListen = *hubbleListen, *metricsListen
		}
		if err := runDemo(ctx, follow, stdout, log); err != nil {
			fmt.Fprintf(stderr, "demo: %v\n", err)
			return 1
		}
		return 0
	}

	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg := Config{Node: *node, StateDir: *stateDir, BPFFSDir: *bpffs, NodeNetNS: *nodeNetNS,
		Manifests: *manifests, ManifestPoll: *manifestPoll, Logger: log}
	for _, p := range []struct {
		flag, val string
		dst       *netip.Prefix
		v4        bool
	}{{"-pool-v4", *poolV4, &cfg.PoolV4, true}, {"-pool-v6", *poolV6, &cfg.PoolV6, false}} {
		if p.val == "" {
			continue
		}
		pfx, err := netip.ParsePrefix(p.val)
		if err != nil || pfx.Addr().Is4() != p.v4 {
			fmt.Fprintf(stderr, "%s: %q is not an IPv%s prefix\n", p.flag, p.val, map[bool]string{true: "4", false: "6"}[p.v4])
			return 2
		}
		*p.dst = pfx
	}
	switch {
	case *kubeconfig != "" && *inCluster:
		fmt.Fprintln(stderr, "-kubeconfig and -k8s-in-cluster exclude each other")
		return 2
	case *kubeconfig != "":
		rc, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
		if err != nil {
			fmt.Fprintf(stderr, "-kubeconfig: %v\n", err)
			return 2
		}
		cfg.Kube = rc
	case *inCluster:
		rc, err := rest.InClusterConfig()
		if err != nil {
			fmt.Fprintf(stderr, "-k8s-in-cluster: %v\n", err)
			return 1
		}
		cfg.Kube = rc
	}
	if *etcd != "" {
		cfg.Etcd = strings.Split(*etcd, ",")
	}
	if *bwDevices != "" {
		cfg.BandwidthDevices = strings.Split(*bwDevices, ",")
	}
	switch *bwMechanism {
	case "auto":
		cfg.BandwidthMechanism = bandwidth.MechanismAuto
	case "edt":
		cfg.BandwidthMechanism = bandwidth.MechanismEDT
	case "tbf":
		cfg.BandwidthMechanism = bandwidth.MechanismTBF
	default:
		fmt.Fprintf(stderr, "-bandwidth-mechanism: %q is not auto, edt or tbf\n", *bwMechanism)
		return 2
	}
	if *httpProxyPort > 65535 {
		fmt.Fprintf(stderr, "-http-proxy-port: %d is not a port\n", *httpProxyPort)
		return 2
	}
	cfg.HTTPProxyPort = uint16(*httpProxyPort)
	if *dnsProxyPort > 65535 || *dnsProxyPort != 0 && *dnsProxyPort == *httpProxyPort {
		fmt.Fprintf(stderr, "-dns-proxy-port: %d is not a port, or is the HTTP proxy's\n", *dnsProxyPort)
		return 2
	}
	cfg.DNSProxyPort = uint16(*dnsProxyPort)
	cfg.ToFQDNsMinTTL = time.Duration(*minTTL) * time.Second
	cfg.Cgroup = *cgroup
	if cfg.Cgroup == "auto" {
		root, err := cgroup2Root()
		if err != nil {
			fmt.Fprintf(stderr, "-cgroup auto: %v (give -cgroup \"\" to run without services)\n", err)
			return 1
		}
		cfg.Cgroup = root
	}
	if err := ensureBPFFS(cfg.BPFFSDir); err != nil {
		fmt.Fprintf(stderr, "-bpffs: %v\n", err)
		return 1
	}

	agent, err := New(ctx, cfg)
	if err != nil {
		log.Error("start", "err", err)
		return 1
	}
	log.Info("agent started", "node", cfg.Node, "endpoints", len(agent.eps), "state", cfg.StateDir, "bpffs", cfg.BPFFSDir)
	serr := agent.Serve(ctx, ServeConfig{Socket: *socket, HubbleListen: *hubbleListen, MetricsListen: *metricsListen})
	// Endpoints stay installed: the next agent adopts them.
	cerr := agent.Close()
	if err := errors.Join(serr, cerr); err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	log.Info("agent stopped; endpoints stay installed")
	return 0
}

// ensureBPFFS creates dir, which must be on a bpffs. Under /sys/fs/bpf,
// a missing bpffs mount is made, as Cilium does.
func ensureBPFFS(dir string) error {
	const root = "/sys/fs/bpf"
	if dir == root || strings.HasPrefix(filepath.Clean(dir), root+"/") {
		if !isBPFFS(root) {
			if err := os.MkdirAll(root, 0o700); err != nil {
				return err
			}
			if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
				return fmt.Errorf("mount bpffs on %s: %w", root, err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if !isBPFFS(dir) {
		return fmt.Errorf("%s is not on a bpffs (mount -t bpf bpf DIR)", dir)
	}
	return nil
}

func isBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// cgroup2Root returns the mount point of the cgroup2 hierarchy:
// /sys/fs/cgroup on unified systems, /sys/fs/cgroup/unified on hybrid ones.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 hierarchy mounted")
}

// ownCgroup returns this process's cgroup2 directory.
func ownCgroup() (string, error) {
	root, err := cgroup2Root()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, rest), nil
		}
	}
	return "", errors.New("no cgroup2 entry in /proc/self/cgroup")
}
