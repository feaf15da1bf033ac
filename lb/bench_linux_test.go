package lb

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// BenchmarkConnect measures the latency of a TCP connect() (SYN out, SYN-ACK
// back, then a reset) from a client namespace to a backend namespace routed
// through a node namespace, for these variants:
//
//   - direct: to the backend address, no load balancer anywhere;
//   - socketlb/services=N/{first,last}: to a VIP translated by the socket
//     load balancer with N = 1, 1k and 10k services configured (an LB per
//     N, each on its own cgroup), to the first and the last service;
//   - socketlb-passthrough: to the backend address from inside the cgroup of
//     the 10k-service LB, the cost the hook adds to other traffic;
//   - iptables/services=N/{first,last}: to a VIP DNATed by kube-proxy-style
//     rules (KUBE-SERVICES jumping to a chain per service that picks a
//     backend with -m statistic, then DNAT) in a client namespace of its
//     own per N, first and last in KUBE-SERVICES.
//
// Every service has the same two backends. Each variant runs as a
// sub-benchmark of its own; the sub-benchmark "interleaved" then makes b.N
// connects per variant in rounds of 20 per variant, one variant after the
// other, and reports each variant's median, so that on a shared machine
// every variant sees the same load. Its ns/op covers all variants and means
// nothing.
func BenchmarkConnect(b *testing.B) {
	testutils.RequirePrivileged(b)
	testutils.SkipIfNotSupported(b, HaveSocketLB())
	counts := []int{1, 1000, 10000}
	top := newTopology(b, 1+len(counts), 2)
	serveAcceptClose(b, top)
	backends := []Backend{
		{Addr: top.backends[0].addr(false, backendPort)},
		{Addr: top.backends[1].addr(false, backendPort)},
	}
	vip := func(base byte, i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, base, byte(i >> 8), byte(i)}), 80)
	}

	variants := []connectVariant{{name: "direct", client: top.clients[0], dst: backends[0].Addr}}
	var lbCgroup *testutils.Cgroup
	for _, n := range counts {
		cg := testutils.NewCgroup(b)
		lb, err := New(Config{Cgroup: cg.Path})
		if err != nil {
			b.Fatal(err)
		}
		defer lb.Close()
		for i := range n {
			if _, err := lb.Upsert(Service{Frontend: Frontend{Addr: vip(96, i), Protocol: nodeplane.ProtoTCP}}, backends); err != nil {
				b.Fatal(err)
			}
		}
		for _, pos := range positions(n) {
			variants = append(variants, connectVariant{
				name:   fmt.Sprintf("socketlb/services=%d/%s", n, pos.name),
				client: top.clients[0], cgroup: cg, dst: vip(96, pos.index(n)),
			})
		}
		lbCgroup = cg
	}
	variants = append(variants, connectVariant{
		name:   fmt.Sprintf("socketlb-passthrough/services=%d", counts[len(counts)-1]),
		client: top.clients[0], cgroup: lbCgroup, dst: backends[0].Addr,
	})

	if _, err := exec.LookPath("iptables-restore"); err != nil {
		b.Logf("iptables baseline skipped: %v", err)
	} else {
		for k, n := range counts {
			client := top.clients[1+k]
			start := time.Now()
			if err := kubeProxyRules(client, "OUTPUT", n, func(i int) netip.AddrPort { return vip(97, i) }, backends); err != nil {
				b.Fatalf("iptables-restore of %d services: %v", n, err)
			}
			b.Logf("iptables-restore of %d services took %s", n, time.Since(start).Round(time.Millisecond))
			for _, pos := range positions(n) {
				variants = append(variants, connectVariant{
					name:   fmt.Sprintf("iptables/services=%d/%s", n, pos.name),
					client: client, dst: vip(97, pos.index(n)),
				})
			}
		}
	}

	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			defer v.enter(b)()
			lat := make([]time.Duration, b.N)
			inNetNS(b, v.client.ns, func() {
				// One connection outside the timer: neighbour entries.
				v.connect(b)
				b.ResetTimer()
				for i := range b.N {
					lat[i] = v.connect(b)
				}
				b.StopTimer()
			})
			reportLatency(b, lat, "")
		})
	}

	b.Run("interleaved", func(b *testing.B) {
		// b.N connects per variant, in rounds of 20.
		const perRound = 20
		lat := make([][]time.Duration, len(variants))
		for done := 0; done < b.N; done += perRound {
			for i, v := range variants {
				leave := v.enter(b)
				inNetNS(b, v.client.ns, func() {
					for range min(perRound, b.N-done) {
						lat[i] = append(lat[i], v.connect(b))
					}
				})
				leave()
			}
		}
		for i, v := range variants {
			reportLatency(b, lat[i], strings.ReplaceAll(v.name, "/", ":")+"-")
		}
	})
}

// connectVariant is one way of reaching a backend.
type connectVariant struct {
	name   string
	client *endpointNS
	// cgroup, if set, is the cgroup of the load balancer the connect goes
	// through.
	cgroup *testutils.Cgroup
	dst    netip.AddrPort
}

// enter moves the process into the variant's cgroup and returns how to
// leave it again.
func (v connectVariant) enter(b *testing.B) func() {
	if v.cgroup == nil {
		return func() {}
	}
	return enterCgroup(b, v.cgroup)
}

// connect runs one connect and returns how long it took. It must run in the
// variant's client namespace.
func (v connectVariant) connect(b *testing.B) time.Duration {
	sa := &unix.SockaddrInet4{Port: int(v.dst.Port()), Addr: v.dst.Addr().As4()}
	start := time.Now()
	if err := connectOnce(sa); err != nil {
		b.Fatalf("%s: connect %s: %v", v.name, v.dst, err)
	}
	return time.Since(start)
}

// reportLatency reports the median and 99th percentile of lat. On a shared
// machine the mean is at the mercy of a few connects that waited for a CPU;
// the median is what a connect costs.
func reportLatency(b *testing.B, lat []time.Duration, prefix string) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), prefix+"p50-ns/connect")
	if prefix == "" {
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns/connect")
	}
}

type position struct {
	name  string
	index func(n int) int
}

// positions are the first and the last service, or just the first of one.
func positions(n int) []position {
	first := position{"first", func(int) int { return 0 }}
	if n == 1 {
		return []position{first}
	}
	return []position{first, {"last", func(n int) int { return n - 1 }}}
}

func connectOnce(sa unix.Sockaddr) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sa); err != nil {
		return err
	}
	// Close with a reset: no TIME_WAIT, no FIN handshake in the loop.
	return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// inNetNS runs fn on the calling goroutine inside ns. A thread that cannot
// be switched back stays locked, so the runtime retires it.
func inNetNS(b *testing.B, ns *testutils.NetNS, fn func()) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		b.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(ns.Handle()); err != nil {
		runtime.UnlockOSThread()
		b.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	fn()
}

// enterCgroup moves this process into cg, so that the sockets it creates
// are load balanced, and returns the function that moves it back.
func enterCgroup(b *testing.B, cg *testutils.Cgroup) func() {
	root, err := testutils.Cgroup2Root()
	if err != nil {
		b.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		b.Fatal(err)
	}
	var orig string
	for _, line := range strings.Split(string(self), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			orig = filepath.Join(root, rest)
		}
	}
	if orig == "" {
		b.Fatal("no cgroup2 membership in /proc/self/cgroup")
	}
	if err := cg.AddProcess(os.Getpid()); err != nil {
		b.Fatal(err)
	}
	return func() {
		if err := os.WriteFile(filepath.Join(orig, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0); err != nil {
			b.Errorf("move back to %s: %v", orig, err)
		}
	}
}

// serveAcceptClose accepts and closes connections on every backend.
func serveAcceptClose(b *testing.B, top *topology) {
	for _, be := range top.backends {
		var ln net.Listener
		if err := be.ns.Do(func() (err error) {
			ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", backendPort))
			return err
		}); err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		b.Cleanup(func() {
			ln.Close()
			<-done
		})
	}
}

// kubeProxyRules loads n services into the nat table of ep's namespace the
// way kube-proxy's iptables mode does: hook (OUTPUT for local clients, PREROUTING
// for traffic a node forwards) jumps to KUBE-SERVICES, which
// has one rule per service (in order) jumping to KUBE-SVC-<i>, which picks
// an endpoint chain with -m statistic --mode random, which DNATs.
func kubeProxyRules(ep *endpointNS, hook string, n int, vip func(int) netip.AddrPort, backends []Backend) error {
	var rules bytes.Buffer
	w := bufio.NewWriter(&rules)
	fmt.Fprintln(w, "*nat")
	fmt.Fprintf(w, ":%s ACCEPT [0:0]\n", hook)
	fmt.Fprintln(w, ":KUBE-SERVICES - [0:0]")
	for i := range n {
		fmt.Fprintf(w, ":KUBE-SVC-%d - [0:0]\n", i)
		for j := range backends {
			fmt.Fprintf(w, ":KUBE-SEP-%d-%d - [0:0]\n", i, j)
		}
	}
	fmt.Fprintf(w, "-A %s -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n", hook)
	for i := range n {
		v := vip(i)
		fmt.Fprintf(w, "-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment \"svc %d\" -m tcp --dport %d -j KUBE-SVC-%d\n", v.Addr(), i, v.Port(), i)
	}
	for i := range n {
		for j, be := range backends {
			if rest := len(backends) - j; rest > 1 {
				fmt.Fprintf(w, "-A KUBE-SVC-%d -m statistic --mode random --probability %.11f -j KUBE-SEP-%d-%d\n", i, 1/float64(rest), i, j)
			} else {
				fmt.Fprintf(w, "-A KUBE-SVC-%d -j KUBE-SEP-%d-%d\n", i, i, j)
			}
			fmt.Fprintf(w, "-A KUBE-SEP-%d-%d -p tcp -m tcp -j DNAT --to-destination %s\n", i, j, be.Addr)
		}
	}
	fmt.Fprintln(w, "COMMIT")
	if err := w.Flush(); err != nil {
		return err
	}
	cmd := exec.Command("iptables-restore")
	cmd.Stdin = &rules
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := ep.ns.Run(cmd); err != nil {
		return fmt.Errorf("%w: %s", err, out.String())
	}
	return nil
}

// BenchmarkUpsert measures the control plane: replacing the two backends of
// one of 1000 services, which writes the new backends and slots, swaps the
// service entry and deletes the old ones. The model's Upsert, the same
// bookkeeping without the maps, is the baseline.
func BenchmarkUpsert(b *testing.B) {
	svcs := make([]Service, 1000)
	for i := range svcs {
		svcs[i] = Service{Frontend: Frontend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), 80), Protocol: nodeplane.ProtoTCP}}
	}
	sets := [][]Backend{backendsOf("10.0.0.1:80", "10.0.0.2:80"), backendsOf("10.0.0.3:80", "10.0.0.4:80")}
	run := func(b *testing.B, upsert func(Service, []Backend) (ServiceID, error)) {
		for _, s := range svcs {
			if _, err := upsert(s, sets[0]); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if _, err := upsert(svcs[i%len(svcs)], sets[(i/len(svcs)+1)%2]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("model", func(b *testing.B) {
		var m Model
		run(b, m.Upsert)
	})
	b.Run("kernel", func(b *testing.B) {
		lb := newTestLB(b, Config{})
		run(b, lb.Upsert)
	})
}
